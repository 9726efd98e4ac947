"""The math of federated plasticity: global head importance, consensus votes, which heads to prune or regrow.

Pure functions and one small value class over ``[num_layers, num_heads]``
arrays; no messages, no ledger, no model (``server.plasticity`` wires them into
the round loop).

- A node's **score** of a head combines its two reports (``models.importance``):
  gradient importance ``g`` (Michel et al., ℓ2-normalised per layer, so in
  [0, 1]) and focus ``1 − e`` where ``e`` is the normalised attention entropy
  (1 = uniform attention, the averaging heads pruning hurts least):
  ``s = (1 − w)·g + w·(1 − e)`` with ``w = ENTROPY_WEIGHT``. A node that sent
  no normalised entropy is scored by ``g`` alone.
- The **round's importance** is the mean of the accepted nodes' scores weighted
  by ``examples × reputation`` (reputation 1 for a node the validators have not
  scored). Only accepted updates speak: a rejected node's report is not trusted.
- The **global importance** is an exponential moving average of the rounds'
  importance, ``G ← d·G + (1 − d)·R`` (the first report sets ``G``). An EMA,
  not a running mean, because a head's role changes as the adapter trains: the
  recent rounds describe the model being pruned. Pruned heads keep the value
  they had when pruned (their reports measure a gated head, not the head).
- A node **votes** to prune the heads in the lowest ``rank_share`` of its own
  ranking of the unpruned heads. A node's vote on a head counts only if the
  head's consent contract lets that node ``prune`` it (``may``); a head is a
  candidate when at least ``vote_share`` of those nodes (its electorate) vote
  for it. A head nobody may prune has an empty electorate and is never a candidate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sentinel.models.head_selection import lowest_heads_mask
from sentinel.protos.vocabulary import head_id
from sentinel.server.outcome import RoundOutcome

ENTROPY_WEIGHT = 0.5
"""Weight of attention focus (1 − normalised entropy) against gradient importance in a node's head score."""

MayFn = Callable[[str, str, str], bool]
"""(node key id, operation, component id) → whether the consent contracts allow it (``Governor.may``)."""

Head = tuple[int, int]
"""(layer, head) in the model's original head ids."""


@dataclass(frozen=True)
class NodeReport:
    """One accepted node's head scores and the weight its report carries."""

    node: str
    """The node's key id."""
    scores: np.ndarray
    weight: float


def node_head_scores(gradient: np.ndarray, normalised_entropy: np.ndarray | None) -> np.ndarray:
    """A node's score per head in [0, 1]: ``(1 − w)·g + w·(1 − e)`` (``g`` alone without entropy); higher = keep."""
    g = np.clip(np.nan_to_num(np.asarray(gradient, dtype=np.float64), nan=0.0), 0.0, 1.0)
    if normalised_entropy is None:
        return g
    e = np.asarray(normalised_entropy, dtype=np.float64)
    focus = np.clip(1.0 - np.nan_to_num(e, nan=1.0), 0.0, 1.0)
    return (1.0 - ENTROPY_WEIGHT) * g + ENTROPY_WEIGHT * focus


def accepted_reports(outcome: RoundOutcome, shape: tuple[int, int]) -> list[NodeReport]:
    """The round's accepted updates that reported gradient importance of the model's shape, with their weights.

    Weight = examples × reputation (1 when the validators have not scored the node);
    a report of the wrong shape or a non-positive weight is left out.
    """
    reports: list[NodeReport] = []
    for r in outcome.accepted:
        if r.gradient_importance is None or np.shape(r.gradient_importance) != shape:
            continue
        entropy = r.normalised_entropy if r.normalised_entropy is not None and np.shape(r.normalised_entropy) == shape else None
        reputation = float(outcome.reputation.get(r.node.key_id, 1.0))
        weight = max(0, int(r.num_examples)) * max(0.0, reputation) if math.isfinite(reputation) else 0.0
        if weight > 0:
            reports.append(NodeReport(r.node.key_id, node_head_scores(r.gradient_importance, entropy), weight))
    return reports


def round_importance(reports: Sequence[NodeReport]) -> np.ndarray | None:
    """The weighted mean of the reports' scores (None without reports)."""
    if not reports:
        return None
    weights = np.array([r.weight for r in reports], dtype=np.float64)
    stacked = np.stack([r.scores for r in reports])
    return np.tensordot(weights / weights.sum(), stacked, axes=1)


@dataclass(frozen=True)
class GlobalImportance:
    """The federation's importance per head: an EMA of the rounds' importance (see the module docstring)."""

    values: np.ndarray | None = None
    rounds: int = 0
    """Rounds whose reports went into ``values``."""

    def updated(self, observed: np.ndarray | None, mask: np.ndarray, decay: float) -> GlobalImportance:
        """The importance after one round's ``observed`` importance; heads at 0 in ``mask`` keep their value."""
        if observed is None:
            return self
        if self.values is None:
            return GlobalImportance(np.asarray(observed, dtype=np.float64).copy(), 1)
        blended = decay * self.values + (1.0 - decay) * observed
        return GlobalImportance(np.where(mask > 0, blended, self.values), self.rounds + 1)

    def to_meta(self) -> dict[str, Any]:
        """JSON-ready form (checkpoint metadata)."""
        return {"values": None if self.values is None else self.values.tolist(), "rounds": self.rounds}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any] | None, shape: tuple[int, int]) -> GlobalImportance:
        """The importance :meth:`to_meta` saved (empty when absent or of another model's shape)."""
        if not meta or meta.get("values") is None:
            return cls()
        values = np.asarray(meta["values"], dtype=np.float64)
        if values.shape != shape or not np.isfinite(values).all():
            return cls()
        return cls(values, int(meta.get("rounds", 0)))


@dataclass(frozen=True)
class Votes:
    """Per head: votes to prune it, and how many nodes may prune it (its electorate)."""

    votes: np.ndarray
    electorate: np.ndarray

    def share(self) -> np.ndarray:
        """Votes ÷ electorate per head (0 where nobody may prune it)."""
        return np.divide(self.votes, self.electorate, out=np.zeros_like(self.votes, dtype=np.float64), where=self.electorate > 0)


def lowest_share_heads(scores: np.ndarray, mask: np.ndarray, rank_share: float) -> set[Head]:
    """The unpruned heads in the lowest ``rank_share`` of ``scores`` (at least one when any head is unpruned)."""
    live = [(float(scores[layer, h]), layer, h) for layer, h in zip(*np.nonzero(mask > 0), strict=True)]
    if not live:
        return set()
    count = max(1, int(round(rank_share * len(live))))
    return {(int(layer), int(h)) for _, layer, h in sorted(live)[:count]}


def consensus_votes(reports: Sequence[NodeReport], mask: np.ndarray, rank_share: float, may: MayFn) -> Votes:
    """Each node's votes on the heads it ranks lowest, counted only where consent lets it ``prune`` the head."""
    votes = np.zeros(mask.shape, dtype=np.int64)
    electorate = np.zeros(mask.shape, dtype=np.int64)
    for report in reports:
        low = lowest_share_heads(report.scores, mask, rank_share)
        for layer, h in zip(*np.nonzero(mask > 0), strict=True):
            if may(report.node, "prune", head_id(int(layer), int(h))):
                electorate[layer, h] += 1
                votes[layer, h] += (int(layer), int(h)) in low
    return Votes(votes, electorate)


def heads_to_prune(
    importance: np.ndarray, votes: Votes, mask: np.ndarray, vote_share: float, step: float, target_sparsity: float
) -> list[Head]:
    """The heads one cycle prunes: candidates by vote, least important first, ``step`` of all heads at most.

    Stops at ``target_sparsity`` of all heads pruned; every layer keeps at least
    one head (``models.head_selection.lowest_heads_mask``).
    """
    total = mask.size
    pruned = int((mask == 0).sum())
    room = int(math.floor(target_sparsity * total + 1e-9)) - pruned
    count = min(max(1, int(round(step * total))), room)
    if count <= 0:
        return []
    candidates = (mask > 0) & (votes.electorate > 0) & (votes.share() >= vote_share - 1e-12)
    new = lowest_heads_mask(importance, (pruned + count) / total, prunable=candidates, current=mask)
    return [(int(layer), int(h)) for layer, h in zip(*np.nonzero((mask > 0) & (new == 0)), strict=True)]


def heads_to_regrow(cycles: Sequence[Sequence[Head]], mask: np.ndarray, may_grow: Callable[[Head], bool]) -> list[Head]:
    """The most recent cycle's still-pruned heads that consent lets grow (an earlier cycle when none may)."""
    for cycle in reversed(cycles):
        heads = [(layer, h) for layer, h in cycle if mask[layer, h] == 0 and may_grow((layer, h))]
        if heads:
            return sorted(heads)
    return []


__all__ = [
    "ENTROPY_WEIGHT",
    "GlobalImportance",
    "Head",
    "MayFn",
    "NodeReport",
    "Votes",
    "accepted_reports",
    "consensus_votes",
    "heads_to_prune",
    "heads_to_regrow",
    "lowest_share_heads",
    "node_head_scores",
    "round_importance",
]
