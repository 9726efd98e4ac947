"""Contribution scores: how much each node's update is worth to the global model.

Pure functions over a *utility*: ``U(S)`` is the quality (e.g. held-out accuracy
or negative loss) of the global model aggregated from the updates of the nodes
in ``S`` (``U(frozenset())``: the model without any of this round's updates).
The coordinator builds the utility; nothing here knows about models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from sentinel.ledger.kinds import ContributionMethod

__all__ = ["ContributionMethod", "Utility", "leave_one_out", "monte_carlo_shapley"]

Utility = Callable[[frozenset[str]], float]


def _check_nodes(nodes: Sequence[str]) -> list[str]:
    ordered = sorted(str(n) for n in nodes)
    if not ordered:
        raise ValueError("`nodes` is empty: there is nobody to score")
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"`nodes` contains duplicates: {ordered}")
    return ordered


class _CachedUtility:
    """``utility`` evaluated at most once per subset, with a check that it returns a finite number."""

    def __init__(self, utility: Utility) -> None:
        self._utility = utility
        self._cache: dict[frozenset[str], float] = {}

    def __call__(self, subset: frozenset[str]) -> float:
        value = self._cache.get(subset)
        if value is None:
            value = float(self._utility(subset))
            if not math.isfinite(value):
                raise ValueError(f"`utility` returned {value!r} for {sorted(subset)}; it must be finite")
            self._cache[subset] = value
        return value

    @property
    def evaluations(self) -> int:
        return len(self._cache)


def leave_one_out(utility: Utility, nodes: Sequence[str]) -> dict[str, float]:
    """Each node's leave-one-out gain: ``U(all) - U(all minus that node)``.

    Cheap (n + 1 evaluations) and the default; it under-credits nodes whose
    updates are redundant with another's, which Shapley values do not.
    """
    ordered = _check_nodes(nodes)
    cached = _CachedUtility(utility)
    everyone = frozenset(ordered)
    full = cached(everyone)
    return {node: full - cached(everyone - {node}) for node in ordered}


def monte_carlo_shapley(
    utility: Utility,
    nodes: Sequence[str],
    permutations: int = 20,
    truncation_tolerance: float = 0.0,
    seed: int = 0,
) -> dict[str, float]:
    """Truncated Monte-Carlo Shapley values (Ghorbani & Zou, "Data Shapley", 2019).

    Averages each node's marginal gain over ``permutations`` random orders of the
    nodes. Within one order, once the prefix's utility is within
    ``truncation_tolerance`` of ``U(all)`` the remaining nodes' marginals are taken
    as zero, saving evaluations (0 disables truncation). Utilities of subsets are
    cached across permutations. Deterministic for a given ``seed`` and node set
    (the order of ``nodes`` does not matter). Without truncation the values of
    every sample sum to ``U(all) - U(empty)`` exactly (efficiency).
    """
    ordered = _check_nodes(nodes)
    if permutations < 1:
        raise ValueError(f"`permutations` must be >= 1, got {permutations}")
    if truncation_tolerance < 0 or not math.isfinite(truncation_tolerance):
        raise ValueError(f"`truncation_tolerance` must be a finite number >= 0, got {truncation_tolerance}")
    cached = _CachedUtility(utility)
    full = cached(frozenset(ordered))
    empty = cached(frozenset())
    rng = random.Random(seed)
    totals = dict.fromkeys(ordered, 0.0)
    for _ in range(permutations):
        order = ordered[:]
        rng.shuffle(order)
        prefix: frozenset[str] = frozenset()
        previous = empty
        for node in order:
            if abs(full - previous) < truncation_tolerance:
                break  # the rest of this order adds (almost) nothing
            prefix = prefix | {node}
            current = cached(prefix)
            totals[node] += current - previous
            previous = current
    return {node: total / permutations for node, total in totals.items()}
