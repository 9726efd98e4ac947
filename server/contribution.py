"""Contribution scores of accepted updates: what each node's update added to the global model.

The utility of a set S of accepted updates is the negative cross-entropy, on a
slice of the coordinator's held-out set, of the previous global model plus the
aggregate of S (aggregated exactly as the round did). Leave-one-out compares
U(all) with U(all minus i); Monte-Carlo Shapley averages marginal gains over
random orders (``ledger.contribution``). Loss rather than accuracy: on a few
hundred examples accuracy moves in coarse steps and scores would mostly tie.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sentinel.ledger.contribution import leave_one_out, monte_carlo_shapley
from sentinel.server.frame_aggregation import FrameBasis
from sentinel.server.outcome import NodeResult
from sentinel.server.state import GlobalState
from sentinel.server.strategy import aggregate_updates

Evaluate = Callable[[GlobalState], tuple[float, float]]


def contribution_scores(
    accepted: Sequence[NodeResult],
    previous: GlobalState,
    aggregation: str,
    evaluate: Evaluate,
    method: str = "loo",
    permutations: int = 20,
    seed: int = 0,
    frames: Mapping[str, FrameBasis] | None = None,
) -> dict[str, float]:
    """Score each accepted node's update in this round (keys: the nodes' key ids).

    ``frames`` is the round's shared frame when the round aggregated reach-weighted (``RoundOutcome.frames``).
    """
    by_node = {r.node.key_id: r for r in accepted}

    def utility(subset: frozenset[str]) -> float:
        if not subset:
            state = previous
        else:
            chosen = [by_node[n] for n in sorted(subset)]
            deltas, head = aggregate_updates(chosen, aggregation, previous.deltas, previous.head, frames)
            state = GlobalState(deltas=deltas, head=head, head_mask=previous.head_mask)
        _, loss = evaluate(state)
        return -loss

    nodes = sorted(by_node)
    if not nodes:
        return {}
    if method == "loo":
        return leave_one_out(utility, nodes)
    if method == "shapley":
        return monte_carlo_shapley(utility, nodes, permutations=permutations, seed=seed)
    raise ValueError(f"`method` must be 'loo' or 'shapley', got {method!r}")
