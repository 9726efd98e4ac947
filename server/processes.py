"""Child processes of ``sentinel server`` / ``sentinel node``: started, watched and stopped by their PID.

Each child runs in its own process group, so stopping it also stops what it
spawned (the SuperLink's and SuperNode's ``flower-superexec`` and app
processes). On Linux each child also gets ``PR_SET_PDEATHSIG``: if the
supervisor dies without cleaning up (SIGKILL), the kernel sends the child
SIGTERM, and no orphaned SuperLink keeps the port.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger("sentinel.server")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    os.setsid()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


class Child:
    """One supervised process: its command, log file and exit status."""

    def __init__(self, name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None) -> None:
        self.name, self.argv, self.log_file = name, list(argv), Path(log_file)
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        """Start the process, appending its output to the log file."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_file.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, preexec_fn=_die_with_parent
            )
        finally:
            out.close()
        log.info("%s started (pid %d), log: %s", self.name, self.proc.pid, self.log_file)
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exit_code(self) -> int | None:
        """None while running, else the exit status."""
        return self.proc.poll() if self.proc else None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, wait up to ``timeout`` s, then SIGKILL it; the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        _signal_group(self.proc.pid, signal.SIGKILL)  # what it spawned, if still there
        return self.proc.returncode

    def tail(self, lines: int = 8) -> str:
        """The last lines of its log (for error messages)."""
        try:
            text = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the child called setsid(): its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(check, timeout: float, interval: float = 0.2, child: Child | None = None) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``check()`` until it is true (True) or ``timeout`` passes or ``child`` exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if child is not None and child.exit_code() is not None:
            return False
        time.sleep(interval)
    return bool(check())


def flower_env(home: Path) -> dict[str, str]:
    """Environment for Flower's processes: their own FLWR_HOME, no telemetry or update checks."""
    return {"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def flower_bin(name: str) -> str:
    """The path of a Flower executable next to this Python (the venv's), else its bare name."""
    import shutil

    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


__all__ = ["Child", "flower_bin", "flower_env", "wait_until"]
