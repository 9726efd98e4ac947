"""Calibration of the entropy gate: which attention-entropy shifts are outliers among a round's.

A candidate's entropy shift (``‖entropy(candidate) − entropy(global)‖₂`` over
heads, ``models.validation``) is mostly a property of the *update*: how far its
author's training moved attention. Honest updates differ in that by a factor
(rank, steps, data, how far local training wandered this round), so shifts are
compared as ratios, on a log scale, by a robust z-score against the median and
MAD of the round's shifts.

Two things make the calibration honest about non-IID federations:

- **per author**: each update is measured by k validators; a validator's data
  sets its own scale (longer sentences, other vocabulary: other attention
  statistics), so each validator's log-shifts are centred on its own median over
  the candidates it judged (when it judged at least
  :data:`~sentinel.models.round_calibration.MIN_VALIDATOR_CANDIDATES`), and an author's shift is the median of its
  validators' centred values. The z-score is over authors, not measurements, so
  one author measured three times does not count as three samples of the spread.
- **a floor on the spread**: with a handful of authors the MAD can be tiny; an
  outlier must also be at least ``min_ratio`` times the round's median shift at
  ``z = z_threshold`` (the scale is floored at ``log(min_ratio) / z_threshold``).
  Measured on the robustness benchmark (MiniLM, UCI by domain, 10 nodes), honest
  authors' shifts reach 2.8× the round's median; a ×10 scaled update shifts ~10×.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from sentinel.models.round_calibration import author_scores

V = TypeVar("V", bound=Hashable)
A = TypeVar("A", bound=Hashable)

DEFAULT_MIN_RATIO = 4.0
"""Default ``min_ratio``: an outlying entropy shift is at least 4× the round's median one."""
MIN_CALIBRATION_SAMPLES = 4
"""Fewest non-zero shifts (authors) from which a gate calibrates itself; below that it does not judge."""


def log_shift_z(shifts: Sequence[float], z_threshold: float, min_ratio: float = DEFAULT_MIN_RATIO) -> np.ndarray:
    """Robust z-scores of shifts on a log scale, the scale floored at ``log(min_ratio) / z_threshold``.

    A zero shift (an update that leaves attention alone) gets ``-inf``; with fewer
    than :data:`MIN_CALIBRATION_SAMPLES` non-zero shifts every z is 0 (no judgement).
    """
    if z_threshold <= 0 or min_ratio <= 1:
        raise ValueError(f"`z_threshold` must be > 0 and `min_ratio` > 1, got {z_threshold}, {min_ratio}")
    v = np.asarray(shifts, dtype=np.float64)
    z = np.where(v > 0, 0.0, -np.inf)
    positive = v > 0
    if positive.sum() < MIN_CALIBRATION_SAMPLES:
        return z
    logs = np.log(v[positive])
    median = float(np.median(logs))
    scale = max(1.4826 * float(np.median(np.abs(logs - median))), float(np.log(min_ratio)) / z_threshold)
    z[positive] = (logs - median) / scale
    return z


def author_shift_z(
    shifts: Mapping[tuple[V, A], float], z_threshold: float, min_ratio: float = DEFAULT_MIN_RATIO
) -> dict[A, float]:
    """Author → robust z-score of its entropy shift among the round's authors (see the module docstring).

    ``shifts`` maps (validator, author) to the measured shift norm. An author whose
    every measured shift is 0 gets ``-inf``.
    """
    positive = {k: float(s) for k, s in shifts.items() if s > 0 and np.isfinite(s)}
    authors = sorted({a for _, a in shifts}, key=repr)
    if not positive:
        return {a: -np.inf for a in authors}
    scores = author_scores({k: float(np.log(s)) for k, s in positive.items()})
    judged = sorted(scores, key=repr)
    values = [float(np.exp(scores[a])) for a in judged]
    z = dict(zip(judged, log_shift_z(values, z_threshold, min_ratio).tolist(), strict=True))
    return {a: z.get(a, -np.inf) for a in authors}
