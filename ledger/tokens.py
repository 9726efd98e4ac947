"""Token distribution: a round's integer budget split in proportion to positive contribution."""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction


def node_order_key(node: str) -> tuple[int, int, str]:
    """Sort key for node ids: numeric ids (Flower's) by value, then any other ids as text."""
    return (0, int(node), "") if node.isdecimal() else (1, 0, node)


def distribute_tokens(scores: Mapping[str, float], budget: int) -> dict[str, int]:
    """Split ``budget`` tokens among nodes in proportion to their positive scores.

    Largest-remainder method with exact (rational) arithmetic: each node gets the
    floor of its quota and the leftover tokens go, one each, to the largest
    remainders, ties to the smaller node id; the amounts sum exactly to
    ``budget``. Nodes scoring <= 0 get nothing; if nobody scores > 0, nothing is
    distributed (``{}``). Only nodes receiving at least one token are listed.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise ValueError(f"`budget` must be an int >= 0, got {budget!r}")
    positive: dict[str, Fraction] = {}
    for node, score in scores.items():
        if not math.isfinite(float(score)):
            raise ValueError(f"`scores[{node!r}]` is {score!r}; scores must be finite")
        if score > 0:
            positive[str(node)] = Fraction(score)
    total = sum(positive.values(), Fraction(0))
    if budget == 0 or total == 0:
        return {}
    quotas = {node: budget * score / total for node, score in positive.items()}
    amounts = {node: math.floor(quota) for node, quota in quotas.items()}
    leftover = budget - sum(amounts.values())
    by_remainder = sorted(quotas, key=lambda n: (-(quotas[n] - amounts[n]), node_order_key(n)))
    for node in by_remainder[:leftover]:
        amounts[node] += 1
    return {node: amounts[node] for node in sorted(amounts, key=node_order_key) if amounts[node] > 0}
