"""What the round's gates share: each validator's measurements centred on its own, then one score per author.

Validators judge different candidates on different data, so a raw measurement
mixes the candidate's effect with the validator's: a validator whose domain
every update hurts, or whose data shifts every attention profile, would make
its candidates look worse than others'. Centring each validator's values on
its own median (when it judged enough candidates to have one) and taking the
median over an author's validators gives one comparable score per author,
which ``models.entropy_calibration`` and ``models.loss_calibration`` then
judge against the round.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

import numpy as np

V = TypeVar("V", bound=Hashable)
A = TypeVar("A", bound=Hashable)

MIN_VALIDATOR_CANDIDATES = 3
"""A validator's values are centred on its own median only when it judged at least this many candidates."""


def author_scores(values: Mapping[tuple[V, A], float]) -> dict[A, float]:
    """Author → the median of its validators' values, each centred on its validator's median (plus the round's).

    ``values`` maps (validator, author) to a finite measurement. A validator that
    judged fewer than :data:`MIN_VALIDATOR_CANDIDATES` candidates is centred on
    the round's median instead (no own median to speak of).
    """
    if not values:
        return {}
    overall = float(np.median(list(values.values())))
    by_validator: dict[V, list[float]] = {}
    for (v, _), x in values.items():
        by_validator.setdefault(v, []).append(x)
    centre = {v: float(np.median(xs)) if len(xs) >= MIN_VALIDATOR_CANDIDATES else overall for v, xs in by_validator.items()}
    per_author: dict[A, list[float]] = {}
    for (v, a), x in values.items():
        per_author.setdefault(a, []).append(x - centre[v] + overall)
    return {a: float(np.median(xs)) for a, xs in per_author.items()}


__all__ = ["MIN_VALIDATOR_CANDIDATES", "author_scores"]
