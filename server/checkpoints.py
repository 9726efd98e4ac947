"""Checkpoints of a run: the exact global state on disk, written atomically.

A run directory's ``checkpoint/`` holds ``last/`` (what ``--resume`` continues
from), ``best_state/`` (the best round's exact state) and ``best/`` (the best
round's adapter in PEFT format, written by the coordinator's exporter).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sentinel.models.fileio import write_dir_atomically
from sentinel.server.exceptions import CheckpointError
from sentinel.server.state import GlobalState, flatten_state, unflatten_state

STATE_FILE = "global_state.safetensors"
META_FILE = "state.json"
HEAD_MASK_KEY = "head_mask"

LAST = "last"
BEST = "best"  # the best round's adapter, in PEFT format
BEST_STATE = "best_state"  # the best round's exact (dense) global state


def save_state(state: GlobalState, directory: str | Path) -> Path:
    """Save the state to ``directory`` atomically (a crash never leaves a half checkpoint)."""

    def write(tmp: Path) -> None:
        tensors = {k: np.ascontiguousarray(v) for k, v in flatten_state(state.deltas, state.head).items()}
        if state.head_mask is not None:
            tensors[HEAD_MASK_KEY] = np.ascontiguousarray(state.head_mask.astype(np.float32))
        save_file(tensors, str(tmp / STATE_FILE))
        (tmp / META_FILE).write_text(json.dumps({"round": state.round, "meta": state.meta}, indent=2, sort_keys=True))

    return write_dir_atomically(directory, write)


def load_state(directory: str | Path) -> GlobalState:
    """Load a state written by :func:`save_state`; :class:`CheckpointError` names the missing file."""
    directory = Path(directory)
    for name in (STATE_FILE, META_FILE):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory} is not a Sentinel checkpoint: `{name}` is missing")
    tensors = load_file(str(directory / STATE_FILE))
    meta = json.loads((directory / META_FILE).read_text())
    deltas, head = unflatten_state(tensors)
    return GlobalState(
        deltas=deltas,
        head=head,
        head_mask=tensors.get(HEAD_MASK_KEY),
        round=int(meta["round"]),
        meta=meta.get("meta", {}),
    )


def resume_state(checkpoint_dir: Path) -> GlobalState:
    """The last checkpoint of a stopped run (what ``--resume`` continues from)."""
    return load_state(Path(checkpoint_dir) / LAST)


__all__ = ["BEST", "BEST_STATE", "LAST", "load_state", "resume_state", "save_state"]
