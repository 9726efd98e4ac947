"""The coordinator's global model state and its on-disk checkpoints.

The global state is the dense ΔW of every adapted module (the exact running sum
of aggregated client updates), the classification head, the global head mask and
the round. Dense storage keeps aggregation exact; nodes receive it as rank-r
factors (``server.aggregation.factorise_all``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from sentinel.models.fileio import write_dir_atomically

STATE_FILE = "global_state.safetensors"
META_FILE = "state.json"


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

    The one key scheme used by checkpoints, the strategy's ArrayRecords and ledger hashes.
    """
    arrays = {STATE_DELTA + k: v for k, v in deltas.items()}
    arrays.update({STATE_HEAD + k: v for k, v in head.items()})
    return arrays


def unflatten_state(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of :func:`flatten_state`: (deltas, head); other keys are ignored."""
    deltas = {k[len(STATE_DELTA):]: v for k, v in arrays.items() if k.startswith(STATE_DELTA)}
    head = {k[len(STATE_HEAD):]: v for k, v in arrays.items() if k.startswith(STATE_HEAD)}
    return deltas, head


def save_state(state: GlobalState, directory: str | Path) -> Path:
    """Save the state to ``directory`` atomically (a crash never leaves a half checkpoint)."""

    def write(tmp: Path) -> None:
        tensors = {k: np.ascontiguousarray(v) for k, v in flatten_state(state.deltas, state.head).items()}
        if state.head_mask is not None:
            tensors["head_mask"] = np.ascontiguousarray(state.head_mask.astype(np.float32))
        save_file(tensors, str(tmp / STATE_FILE))
        (tmp / META_FILE).write_text(json.dumps({"round": state.round, "meta": state.meta}, indent=2, sort_keys=True))

    return write_dir_atomically(directory, write)


def load_state(directory: str | Path) -> GlobalState:
    """Load a state written by :func:`save_state`; errors name the missing file."""
    directory = Path(directory)
    for name in (STATE_FILE, META_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory} is not a Sentinel checkpoint: `{name}` is missing")
    tensors = load_file(str(directory / STATE_FILE))
    meta = json.loads((directory / META_FILE).read_text())
    deltas, head = unflatten_state(tensors)
    return GlobalState(
        deltas=deltas,
        head=head,
        head_mask=tensors.get("head_mask"),
        round=int(meta["round"]),
        meta=meta.get("meta", {}),
    )


__all__ = ["GlobalState", "flatten_state", "load_state", "save_state", "unflatten_state"]
