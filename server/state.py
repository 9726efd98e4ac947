"""The coordinator's global model state and its one key scheme (checkpoints live in ``server.checkpoints``).

The global state is the dense ΔW of every adapted module (the exact running sum
of aggregated client updates), the classification head, the global head mask and
the round. Dense storage keeps aggregation exact; nodes receive it as rank-r
factors (``server.aggregation.factorise_all``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GlobalState:
    """Dense global ΔW per module, head parameters, head mask and round number."""

    deltas: dict[str, np.ndarray]
    head: dict[str, np.ndarray]
    head_mask: np.ndarray | None = None
    round: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    """Run bookkeeping saved with the state (history, early-stopping counters, ...)."""


STATE_DELTA = "delta/"
STATE_HEAD = "head/"


def flatten_state(deltas: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One flat mapping of the global state: ``delta/<module>`` and ``head/<param>`` keys.

    The one key scheme used by checkpoints and ledger hashes.
    """
    arrays = {STATE_DELTA + k: v for k, v in deltas.items()}
    arrays.update({STATE_HEAD + k: v for k, v in head.items()})
    return arrays


def unflatten_state(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of :func:`flatten_state`: (deltas, head); other keys are ignored."""
    deltas = {k[len(STATE_DELTA):]: v for k, v in arrays.items() if k.startswith(STATE_DELTA)}
    head = {k[len(STATE_HEAD):]: v for k, v in arrays.items() if k.startswith(STATE_HEAD)}
    return deltas, head


__all__ = ["GlobalState", "flatten_state", "unflatten_state"]
