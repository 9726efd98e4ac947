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

from models.fileio import write_dir_atomically

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

    def apply_update(self, delta: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray]) -> None:
        """Add an aggregated ΔW and replace the head with the aggregated one."""
        for module, d in delta.items():
            if module not in self.deltas:
                raise KeyError(f"aggregated update adapts unknown module `{module}`")
            if d.shape != self.deltas[module].shape:
                raise ValueError(f"module `{module}`: update shape {d.shape} != state shape {self.deltas[module].shape}")
            self.deltas[module] = (self.deltas[module].astype(np.float64) + d).astype(np.float32)
        for name, value in head.items():
            self.head[name] = np.asarray(value, dtype=np.float32)

    def copy(self) -> GlobalState:
        """A deep copy (arrays included)."""
        return GlobalState(
            deltas={k: v.copy() for k, v in self.deltas.items()},
            head={k: v.copy() for k, v in self.head.items()},
            head_mask=None if self.head_mask is None else self.head_mask.copy(),
            round=self.round,
            meta=json.loads(json.dumps(self.meta)),
        )


def save_state(state: GlobalState, directory: str | Path) -> Path:
    """Save the state to ``directory`` atomically (a crash never leaves a half checkpoint)."""

    def write(tmp: Path) -> None:
        tensors = {f"delta/{k}": np.ascontiguousarray(v) for k, v in state.deltas.items()}
        tensors.update({f"head/{k}": np.ascontiguousarray(v) for k, v in state.head.items()})
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
    return GlobalState(
        deltas={k[len("delta/"):]: v for k, v in tensors.items() if k.startswith("delta/")},
        head={k[len("head/"):]: v for k, v in tensors.items() if k.startswith("head/")},
        head_mask=tensors.get("head_mask"),
        round=int(meta["round"]),
        meta=meta.get("meta", {}),
    )


__all__ = ["GlobalState", "load_state", "save_state"]
