"""A run on the deployment engine: both sides of ``sentinel run``.

**Coordinator side** (inside the ServerApp, :mod:`sentinel.server.app`): wait
for the run's nodes with a named deadline, saying how many have connected;
log one line per round; at the end log the report as one marked line, so it
reaches ``sentinel run`` through Flower's run log wherever that runs.

**Submitting side** (``sentinel run``): write a minimal Flower app (its
``pyproject.toml`` names the installed ServerApp/ClientApp and declares every
run-config key), submit it with ``flwr run`` against the SuperLink, stream its
log, and write the same report (``report.json``, plots) into ``--out``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sentinel.server.control import Link
from sentinel.server.observer import RoundObserver

REPORT_MARK = "SENTINEL-REPORT "
"""Prefix of the run-log line that carries the report as JSON."""
RESULT_MARK = "SENTINEL-RESULT "
"""Prefix of the run-log line that says how the run ended (``ok`` or the error)."""

log = logging.getLogger("sentinel.server")


# ---------------------------------------------------------------------- coordinator side
def wait_for_nodes(
    count: Callable[[], int], needed: int, timeout_s: float, say: Callable[[str], None], poll_s: float = 0.5, every_s: float = 5.0
) -> int:
    """Wait until ``count()`` reaches ``needed``; say how many have connected (on change and every ``every_s``).

    Raises ``NodesUnavailableError`` naming the deadline when it passes.
    """
    from sentinel.server.exceptions import NodesUnavailableError

    deadline = time.monotonic() + timeout_s
    wall = (datetime.now() + timedelta(seconds=timeout_s)).strftime("%H:%M:%S")
    last, last_said = -1, 0.0
    while True:
        have = count()
        if have >= needed:
            say(f"{have} of {needed} nodes connected")
            return have
        now = time.monotonic()
        if have != last or now - last_said >= every_s:
            say(f"waiting for nodes: {have} of {needed} connected; giving up at {wall} ({max(0.0, deadline - now):.0f} s left)")
            last, last_said = have, now
        if now > deadline:
            raise NodesUnavailableError(f"only {have} of {needed} nodes connected by the deadline {wall} (node-wait-s = {timeout_s:g})")
        time.sleep(poll_s)


class LogProgress(RoundObserver):
    """Round observer for a deployed run: one log line per round (what ``sentinel run`` shows).

    It inherits the protocol's no-op defaults for everything but the three calls it logs.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    def on_nodes(self, nodes: Sequence[Any]) -> None:
        self.say("nodes admitted: " + ", ".join(f"{n.partition_id}:{n.role}" for n in nodes))

    def on_round_start(self, server_round: int) -> None:
        self.say(f"round {server_round} started")

    def on_round(self, outcome: Any, row: Mapping[str, Any], state: Any, previous: Any) -> dict[str, Any]:
        missing = row.get("nodes", 0) - row.get("accepted", 0)
        self.say(
            f"round {row['round']} done: acc {row['accuracy']:.4f} loss {row['loss']:.4f} "
            f"accepted {row.get('accepted')}/{row.get('nodes')} ({missing} rejected or missing) {row.get('duration_s', 0):.1f}s"
        )
        return {}


def resolve_out(out: str, default_name: str = "run") -> Path:
    """The run directory on the coordinator's host: ``out`` if absolute, else under ``$SENTINEL_DATA_DIR``."""
    from sentinel.server.deploy_server import DATA_DIR_ENV

    root = os.environ.get(DATA_DIR_ENV)
    if out and Path(out).is_absolute():
        return Path(out)
    if root:
        return Path(root) / (out or default_name)
    return Path(out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))


def database_urls(run: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(ledger URL, governance URL) of a run: its run config's ``ledger-db``/``governance-db``, else the coordinator
    server's (``SENTINEL_LEDGER_URL``/``SENTINEL_GOVERNANCE_URL``), else None (SQLite files in the run directory)."""
    from sentinel.server.deploy_server import GOVERNANCE_URL_ENV, LEDGER_URL_ENV

    ledger = str(run.get("ledger-db") or "") or os.environ.get(LEDGER_URL_ENV) or None
    governance = str(run.get("governance-db") or "") or os.environ.get(GOVERNANCE_URL_ENV) or None
    return ledger, governance


def report_line(report: Mapping[str, Any]) -> str:
    """The report as one marked log line."""
    return REPORT_MARK + json.dumps(report, default=str, separators=(",", ":"))


# ---------------------------------------------------------------------- submitting side
APP_PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "sentinel-run"
version = "1.0.0"
description = "A Sentinel Federation run (the apps are the installed sentinel-fed package)."
dependencies = []

[tool.flwr.app]
publisher = "sentinel"

[tool.flwr.app.components]
serverapp = "sentinel.server.app:app"
clientapp = "sentinel.client.app:app"

"""


def write_app_dir(directory: Path) -> Path:
    """A minimal Flower app: the installed ServerApp/ClientApp and every declared run-config key."""
    from sentinel.server.run_config import declared_block

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(APP_PYPROJECT + declared_block(), encoding="utf-8")
    return directory


def write_connection(flwr_home: Path, link: Link, name: str = "sentinel") -> str:
    """A ``config.toml`` in ``flwr_home`` with one SuperLink connection; its name."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{link.address}"']
    lines.append("insecure = true" if link.ca is None else f'root-certificates = "{Path(link.ca).resolve()}"')
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


def write_run_config(path: Path, run_config: Mapping[str, Any]) -> Path:
    """The run config as a flat TOML file (what ``flwr run --run-config FILE`` reads)."""
    from sentinel.server.run_config import toml_value

    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in run_config.items()), encoding="utf-8")
    return path


def stream_run(argv: Sequence[str], env: Mapping[str, str], on_line: Callable[[str], None]) -> int:
    """Run ``flwr run ... --stream``, handing each output line to ``on_line``; its exit status."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env), text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        return proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def marked(lines: Iterator[str] | Sequence[str], mark: str) -> str | None:
    """The payload of the last line that carries ``mark`` (Flower may prefix log lines)."""
    found = None
    for line in lines:
        i = line.find(mark)
        if i >= 0:
            found = line[i + len(mark) :]
    return found


def write_local_report(out: Path, report: dict[str, Any]) -> None:
    """``report.json`` and the plots in ``out``, from the report the coordinator logged."""
    from sentinel.server.plasticity_plot import has_heads, plot_heads
    from sentinel.server.report import plot_metric, write_json_atomically

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(out / "report.json", report)
    history = ([report["initial"]] if report.get("initial") else []) + list(report.get("rounds", []))
    if history:
        plot_metric(history, "accuracy", int(report.get("best_round", 0)), out / "accuracy.png", "Central test accuracy")
        plot_metric(history, "loss", int(report.get("best_round", 0)), out / "loss.png", "Central test loss")
    if has_heads(history):
        plot_heads(history, out / "heads.png")


def submit_and_follow(
    link: Link, run_config: Mapping[str, Any], workdir: Path, say: Callable[[str], None], *, show: Callable[[str], bool] | None = None
) -> dict[str, Any]:
    """Submit the run, stream its log (lines passed to ``say`` when ``show`` accepts them) and return the report.

    Raises ``RuntimeError`` with the coordinator's reason when the run fails.
    """
    app_dir = write_app_dir(workdir / "app")
    home = workdir / "flwr-home"
    name = write_connection(home, link)
    config_file = write_run_config(workdir / "run-config.toml", run_config)
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    flwr = str(Path(sys.executable).with_name("flwr")) if Path(sys.executable).with_name("flwr").exists() else "flwr"
    argv = [flwr, "run", str(app_dir), name, "--run-config", str(config_file), "--stream"]
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if REPORT_MARK in line:
            return
        if show is None or show(line):
            say(line)

    code = stream_run(argv, env, on_line)
    result = marked(lines, RESULT_MARK)
    payload = marked(lines, REPORT_MARK)
    if result is not None and result.strip() != "ok":
        raise RuntimeError(f"the run failed on the coordinator: {result.strip()}")
    if payload is None:
        tail = "\n".join(lines[-8:])
        raise RuntimeError(f"the run ended without a report (flwr run exited {code}); its output ends with:\n{tail}")
    return json.loads(payload)


__all__ = [
    "LogProgress",
    "REPORT_MARK",
    "RESULT_MARK",
    "report_line",
    "resolve_out",
    "submit_and_follow",
    "wait_for_nodes",
    "write_app_dir",
    "write_local_report",
]
