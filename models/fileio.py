"""Atomic writes of files and directories: a reader sees the old version or the new, never half.

Used for everything that must survive a crash intact: PEFT adapters, ONNX
exports, head masks, and the coordinator's checkpoints.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["replace_dir", "write_dir_atomically", "write_text_atomically"]


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def replace_dir(staging: Path, target: Path) -> None:
    """Move a fully written ``staging`` directory to ``target``, replacing any existing one."""
    if target.exists():
        retired = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)


def write_dir_atomically(target: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Let ``write`` fill a temporary sibling directory, flush it to disk, then rename it to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(staging)
        _fsync_tree(staging)
        os.chmod(staging, 0o755)  # mkdtemp makes it owner-only; artefacts are meant to be shared
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_text_atomically(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file through a flushed temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
