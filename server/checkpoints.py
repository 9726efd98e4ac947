"""Checkpoints of a run: the exact global state on disk, written atomically.

A run directory's ``checkpoint/`` holds ``last/`` (what ``--resume`` continues
from), ``best_state/`` (the best round's exact state) and ``best/`` (the best
round's adapter in PEFT format, written by the coordinator's exporter). A
round's checkpoint is first staged as ``pending/``; the round's records are
committed; then it is put in force (:func:`recover_state` settles a crash in
between, so a resumed run records every round exactly once).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from sentinel.models.fileio import replace_dir, write_dir_atomically
from sentinel.server.exceptions import CheckpointError
from sentinel.server.state import GlobalState, flatten_state, unflatten_state

STATE_FILE = "global_state.safetensors"
META_FILE = "state.json"
HEAD_MASK_KEY = "head_mask"

LAST = "last"
PENDING = "pending"  # the last round's checkpoint, staged until the round's records are committed
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


def stage_state(state: GlobalState, checkpoint_dir: Path) -> Path:
    """Write the round's checkpoint beside the one in force (``pending/``), not yet in force."""
    return save_state(state, Path(checkpoint_dir) / PENDING)


def promote_state(checkpoint_dir: Path) -> None:
    """Put the staged checkpoint in force: ``pending/`` becomes ``last/``."""
    checkpoint_dir = Path(checkpoint_dir)
    replace_dir(checkpoint_dir / PENDING, checkpoint_dir / LAST)


def _restore_retired_last(checkpoint_dir: Path) -> None:
    """Undo a crash inside :func:`replace_dir`: ``last/`` renamed away and its successor not yet in place."""
    retired = sorted(checkpoint_dir.glob(f".{LAST}.old-*"))
    if not (checkpoint_dir / LAST).exists() and retired:
        os.rename(retired[-1], checkpoint_dir / LAST)


def recover_state(checkpoint_dir: Path, committed_round: int | None) -> GlobalState:
    """The checkpoint a resumed run continues from, settling a crash between a round's records and its checkpoint.

    ``committed_round`` is the last round whose records are durable (the
    ledger's last ``checkpoint`` entry), or None when the run keeps no records.
    A staged checkpoint of a committed round is put in force (the crash came
    after the records); one of an uncommitted round is discarded (the round
    never happened and will run again). So every round is recorded once.
    """
    checkpoint_dir = Path(checkpoint_dir)
    _restore_retired_last(checkpoint_dir)
    pending = checkpoint_dir / PENDING
    if pending.is_dir():
        try:
            staged = load_state(pending)
        except CheckpointError:
            staged = None
        if staged is not None and (committed_round is None or staged.round <= committed_round):
            promote_state(checkpoint_dir)
            return staged
        shutil.rmtree(pending, ignore_errors=True)
    return load_state(checkpoint_dir / LAST)


def resume_state(checkpoint_dir: Path) -> GlobalState:
    """The last checkpoint of a stopped run (what ``--resume`` continues from), with no records to settle against."""
    return recover_state(checkpoint_dir, None)


__all__ = ["BEST", "BEST_STATE", "LAST", "PENDING", "load_state", "promote_state", "recover_state", "resume_state", "save_state", "stage_state"]
