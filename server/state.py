"""The coordinator's global model state and its one key scheme (checkpoints live in ``server.checkpoints``).

The global state is the dense ΔW of every adapted module (the exact running sum
of aggregated client updates), the classification head, the global head mask and
the round. Dense storage keeps aggregation exact; nodes receive it as rank-r
factors (``server.aggregation.factorise_all``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sentinel.protos.records import dense_state_arrays, parse_dense_state


@dataclass
class GlobalState:
    """Dense global ΔW per module, head parameters, head mask and round number."""

    deltas: dict[str, np.ndarray]
    head: dict[str, np.ndarray]
    head_mask: np.ndarray | None = None
    round: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    """Run bookkeeping saved with the state (history, early-stopping counters, ...)."""


flatten_state = dense_state_arrays
"""The global state's one key scheme (``delta/<module>``, ``head/<param>``), defined with the wire format."""
unflatten_state = parse_dense_state


__all__ = ["GlobalState", "flatten_state", "unflatten_state"]
