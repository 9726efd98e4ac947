"""Small files written whole or not at all: keys and the published trust anchor.

Readers of these files are other processes (a second coordinator, the API
services, an auditor), so a file is never visible half-written: the bytes go to
a uniquely named temporary file in the same folder, are flushed to disk, and
only then appear under their name, either replacing what was there
(:func:`write_atomically`) or only if nothing was (:func:`create_exclusively`,
for values that must never change once chosen, such as a key).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")


def _write_new_file(path: Path, data: bytes, mode: int) -> Path:
    """A complete, fsynced new file beside ``path`` under a unique temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _sync_directory(directory: Path) -> None:
    """Flush a folder's entries to disk (where the platform allows it), so a new name survives a crash."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomically(path: str | Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` in one step: readers see the old file or the new one, never a mix."""
    path = Path(path)
    tmp = _write_new_file(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)
    return path


def create_exclusively(path: str | Path, data: bytes, *, mode: int = 0o644) -> bool:
    """Create ``path`` holding ``data`` unless it exists; True if this call created it.

    The complete file is hard-linked into place, which fails if the name exists,
    so of several processes racing exactly one creates the file and the others
    find it complete. Where hard links are not supported it falls back to
    ``O_CREAT | O_EXCL`` (a reader may then briefly see the file still being
    written: see :func:`read_when_complete`).
    """
    path = Path(path)
    tmp = _write_new_file(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:  # no hard links on this filesystem
        return _create_with_o_excl(path, data, mode)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_directory(path.parent)
    return True


def _create_with_o_excl(path: Path, data: bytes, mode: int) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def read_when_complete(read: Callable[[], _T], *, wait_s: float = 10.0) -> _T:
    """``read()``, retried for up to ``wait_s`` seconds while it raises ``ValueError`` (a file still being written)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return read()
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
