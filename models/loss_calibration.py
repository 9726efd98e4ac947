"""Calibration of the loss gate to the round: how much worse one update may make a validator's loss.

A validator judges each candidate on its own data, and in a non-IID federation
an honest update from another domain can raise that validator's loss while the
round's updates together still lower it. The absolute gate (reject when the
loss rises by more than the tolerance plus two standard errors,
``models.validation.loss_gate_fails``) calls such an update harmful. The
round-relative allowance lets an update cost a validator up to a share of what
the validator's *typical* candidate this round gains it:

    max(tolerance, share × (−median of the loss changes it measured this round))

(over the candidates it judged, when there are at least
:data:`MIN_ROUND_CANDIDATES`). The governance tolerance is the floor, so in a
round where most candidates make the loss worse (median ≥ 0) the gate is the
absolute one. Attackers cannot widen the allowance by making things worse —
that raises the median and shrinks it.

Loss alone cannot tell an honest cross-domain cost from a sign flip: a flipped
update costs about what it would have gained, and a small update's flip costs
less than the round's median gain (measured: an honest cross-domain update on
the robustness benchmark cost 0.52–0.64 × the validator's median gain; the
sign-flipping node of the tiny-bert federation test cost 0.45–0.65 ×). So the
coordinator applies the allowance only to updates whose *direction* the round's
majority confirms (the check phase's cosine to the coordinate-wise median of
the others is positive, ``server.update_checks.direction_cosines``); any other
update keeps the absolute gate.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
from sentinel.models.round_calibration import author_scores

V = TypeVar("V", bound=Hashable)
A = TypeVar("A", bound=Hashable)

DEFAULT_ALLOWANCE_SHARE = 0.75
"""Default share of the round's median gain a direction-confirmed update may cost a validator."""
MIN_ROUND_CANDIDATES = 3
"""Fewest candidates one validator judged from which the allowance is calibrated (else: the tolerance)."""
DEFAULT_LOSS_Z = 3.5
"""Default threshold of the author loss z-score: a cost above it is not typical of the round."""
MIN_ROUND_AUTHORS = 4
"""Fewest authors from which the round's typical cost is calibrated (else every author is atypical: the absolute gate)."""


def loss_allowance(loss_changes: Sequence[float], tolerance: float, share: float = DEFAULT_ALLOWANCE_SHARE) -> float:
    """The most an update may raise this validator's loss (nats) this round, given all the changes it measured."""
    if tolerance < 0 or share < 0:
        raise ValueError(f"`tolerance` and `share` must be >= 0, got {tolerance}, {share}")
    finite = [float(x) for x in loss_changes if np.isfinite(x)]
    if len(finite) < MIN_ROUND_CANDIDATES:
        return float(tolerance)
    return float(max(tolerance, -share * float(np.median(finite))))


def typical_update_costs(changes: Mapping[tuple[V, A], float]) -> bool:
    """Whether the round's typical update costs its validators: the authors' median centred loss change is above 0.

    ``changes`` maps (validator, author) to the loss change the validator
    measured (non-finite ones are left out). Fewer than
    :data:`MIN_ROUND_AUTHORS` authors: False (too few to say what is typical).
    Near a non-IID optimum this turns true: every node's update costs the other
    domains' validators something.
    """
    finite = {k: float(x) for k, x in changes.items() if np.isfinite(x)}
    if len({a for _, a in finite}) < MIN_ROUND_AUTHORS:
        return False
    return float(np.median(list(author_scores(finite).values()))) > 0


def author_loss_z(changes: Mapping[tuple[V, A], float]) -> dict[A, float]:
    """Author → robust z-score of its loss cost among the round's authors (``inf``: not calibrated, or no cost is typical).

    ``changes`` maps (validator, author) to the loss change the validator
    measured. Each validator's changes are centred on its own median (when it
    judged at least :data:`~sentinel.models.round_calibration.MIN_VALIDATOR_CANDIDATES`; else on the round's), so a
    validator whose domain every update hurts does not make its candidates look
    worse than others'; an author's score is the median of its centred changes,
    and its z-score is against the median and MAD of the authors' scores.

    Near a non-IID federation's optimum every node's update costs the other
    domains' validators something (their gradients sum to about zero), so the
    absolute gate rejects honest updates round after round; what sets an
    attacker apart is a cost far above the round's typical one. In a round
    whose typical update *gains* (the authors' median score ≤ 0) no cost is
    typical, however widely the gains spread: every z is ``inf``, and
    :func:`loss_allowance` is what judges such a round (measured: in round 1 a
    label-flipper's +0.25 nats had z 2.7 against honest gains of −0.01 to −0.36).
    """
    finite = {k: float(x) for k, x in changes.items() if np.isfinite(x)}
    authors = sorted({a for _, a in changes}, key=repr)
    judged = sorted({a for _, a in finite}, key=repr)
    if len(judged) < MIN_ROUND_AUTHORS:
        return {a: float("inf") for a in authors}
    if not typical_update_costs(finite):  # the round's typical update gains: a cost is not typical (the allowance judges it)
        return {a: float("inf") for a in authors}
    by_author = author_scores(finite)
    scores = np.array([by_author[a] for a in judged])
    median = float(np.median(scores))
    scale = max(1.4826 * float(np.median(np.abs(scores - median))), 1e-9)
    z = dict(zip(judged, ((scores - median) / scale).tolist(), strict=True))
    return {a: z.get(a, float("inf")) for a in authors}
