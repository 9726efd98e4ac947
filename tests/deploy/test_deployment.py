"""End to end on loopback: ``sentinel server`` (TLS, node authentication), three ``sentinel node`` and ``sentinel run``.

One federation serves every check, in order, to stay within a few minutes on
two cores (each Flower message starts a ClientApp process that imports torch):

1. refusals that need no training: a client without the CA, a node whose key
   is not admitted, a node without a key file, a server without TLS or --insecure;
2. a 3-round run from a config file with a node killed in round 2: complete
   report, that round completes with the others (Flower answers for the node
   once it is offline, before the round's deadline) and records the missing
   update, the next round proceeds, the ledger verifies against the
   coordinator's key;
3. the coordinator host SIGKILLed after round 1 and restarted: ``--resume``
   continues from the last checkpoint.

Every process binds 127.0.0.1, runs in its own process group and is stopped
by its PID within bounded time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROLES = ("edge", "gpu", "central")
RUN_TOML = """model = "tiny-bert"
dataset = "builtin:reviews?n=240"
nodes = 3
roles = "edge,gpu,central"
rounds = 2
patience = 5
max-length = 16
validation = false
contribution = "none"
edge-lora-rank = 2
edge-local-steps = 2
edge-batch-size = 8
gpu-lora-rank = 4
gpu-local-steps = 2
gpu-batch-size = 8
central-lora-rank = 4
central-local-steps = 2
central-batch-size = 8
timeout-s = 300.0
node-wait-s = 120.0
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port_free(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.5)
    return False


def _sentinel(*args: str) -> list[str]:
    return [sys.executable, "-m", "sentinel.server.cli", *args]


@dataclass
class Proc:
    """A process of the test: started in its own group, output collected, stopped by PID."""

    name: str
    argv: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None

    def start(self) -> Proc:
        self.lines = []
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            env=self.env, start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.5)
                return needle in self.text()
            time.sleep(0.3)
        return False

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Signal the process (and its group), wait, SIGKILL the group if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        return self.proc.returncode


@dataclass
class Federation:
    root: Path
    env: dict[str, str]
    port: int
    server: Proc
    nodes: dict[str, Proc]

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def node(self, role: str, pid: int, name: str | None = None) -> Proc:
        name = name or f"{role}-0"
        return Proc(
            f"node-{name}",
            _sentinel("node", "--key-file", str(self.keys / "nodes" / f"{name}.key"), "--superlink", f"127.0.0.1:{self.port}",
                      "--ca", str(self.keys / "ca" / "ca.crt"), "--role", role, "--partition-id", str(pid),
                      "--num-partitions", "3", "--device", "cpu", "--port", str(_free_port())),
            self.env,
        )

    def run(self, *args: str) -> Proc:
        return Proc("run", _sentinel("run", "--superlink", f"127.0.0.1:{self.port}", "--ca", str(self.keys / "ca" / "ca.crt"),
                                     "--config", str(self.root / "run.toml"), *args), self.env)

    def start_server(self) -> Proc:
        self.server = Proc(
            "server",
            _sentinel("server", "--data-dir", str(self.data), "--port", str(self.port), "--ledger-port", "0", "--governance-port", "0",
                      "--tls-cert", str(self.keys / "server" / "server.pem"), "--tls-key", str(self.keys / "server" / "server.key"),
                      "--tls-ca", str(self.keys / "ca" / "ca.crt"), "--sync-interval", "2"),
            self.env,
        ).start()
        assert self.server.wait_for("ready:", 120), self.server.text()
        return self.server


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("deploy")
    env = {**os.environ, "FLWR_HOME": str(root / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}
    keys = root / "keys"
    subprocess.run(_sentinel("keys", "federation", "--out", str(keys), "--nodes", "edge-0,gpu-0,central-0"), check=True, env=env, timeout=120)
    subprocess.run(_sentinel("keys", "node", "rogue-0", "--out", str(keys / "nodes")), check=True, env=env, timeout=120)
    cards = root / "data" / "node-cards"
    cards.mkdir(parents=True)
    for role in ROLES:  # the coordinator admits these three; rogue-0 is not admitted
        (cards / f"{role}-0.card.json").write_text((keys / "nodes" / f"{role}-0.card.json").read_text())
    (root / "run.toml").write_text(RUN_TOML)
    fed = Federation(root, env, _free_port(), None, {})  # type: ignore[arg-type]
    fed.start_server()
    try:
        for pid, role in enumerate(ROLES):
            fed.nodes[role] = fed.node(role, pid).start()
        yield fed
    finally:
        for proc in fed.nodes.values():
            proc.kill()
        fed.server.kill(signal.SIGTERM, timeout=30)


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_refusals_without_keys_certificates_or_admission(federation: Federation) -> None:
    from sentinel.server.control import Link, healthy

    ca = federation.keys / "ca" / "ca.crt"
    assert healthy(Link(f"127.0.0.1:{federation.port}", ca))
    assert not healthy(Link(f"127.0.0.1:{federation.port}"))  # plaintext against TLS
    import ssl
    import urllib.request

    with pytest.raises(Exception) as info:  # TLS without our CA: the certificate does not verify
        urllib.request.urlopen(f"https://127.0.0.1:{federation.port}/health", timeout=5, context=ssl.create_default_context())
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)

    rogue = federation.node("edge", 0, name="rogue-0").start()  # a valid key pair whose card was never admitted
    code = rogue.wait(120)
    assert code != 0 and "Failed to activate SuperNode" in rogue.text(), rogue.text()

    no_key = subprocess.run(_sentinel("node", "--superlink", f"127.0.0.1:{federation.port}", "--ca", str(ca)),
                            capture_output=True, text=True, env=federation.env, timeout=120)
    assert no_key.returncode == 2 and "needs its signing key" in no_key.stdout
    no_tls = subprocess.run(_sentinel("server", "--data-dir", str(federation.root / "x")), capture_output=True, text=True,
                            env=federation.env, timeout=120)
    assert no_tls.returncode == 2 and "--insecure" in no_tls.stdout
    no_ca = subprocess.run(_sentinel("run", "--superlink", f"127.0.0.1:{federation.port}"), capture_output=True, text=True,
                           env=federation.env, timeout=120)
    assert no_ca.returncode == 2 and "--ca" in no_ca.stdout


def test_a_run_from_a_config_file_reports_verifies_and_survives_a_node_killed_mid_round(federation: Federation) -> None:
    from sentinel.ledger.crypto import load_private_key, public_key_b64

    out = federation.root / "out-a"
    run = federation.run("--server-out", "run-a", "--out", str(out), "--rounds", "3").start()
    try:
        assert run.wait_for("round 2 started", 400), run.text()
        time.sleep(2)
        federation.nodes["edge"].kill(signal.SIGKILL)  # mid-round: its ClientApp is still starting
        assert run.wait(600) == 0, run.text()
    finally:
        run.kill()
        federation.nodes["edge"] = federation.node("edge", 0).start()  # back for the next test
    assert "3 of 3 nodes connected" in run.text()
    report = _report(out)
    rows = [(r["round"], r["nodes"], r["accepted"], r["failures"], r["duration_s"]) for r in report["rounds"]]
    assert [r[0] for r in rows] == [1, 2, 3], rows
    one, two, three = report["rounds"]
    assert one["nodes"] == 3 and one["accepted"] == 3, (rows, run.text())
    # The node killed in round 2: that round completes with the others, the missing update is
    # recorded in the round, and the next round proceeds without it.
    assert two["accepted"] == 2 and two["failures"] == 1, (rows, run.text())
    assert three["accepted"] == 2 and three["failures"] == 1, rows
    # Flower answers for a node that went offline (heartbeat), so the round ends before its deadline (timeout-s = 300).
    assert two["duration_s"] < 300, rows
    assert sorted(n["role"] for n in report["nodes"]) == sorted(ROLES)
    assert (out / "accuracy.png").stat().st_size > 1000
    run_dir = federation.data / "run-a"
    assert json.loads((run_dir / "report.json").read_text())["final"] == report["final"]
    pinned = public_key_b64(load_private_key(run_dir / "coordinator.key"))
    verify = subprocess.run(_sentinel("ledger", "verify", "--db", str(run_dir / "ledger.db"), "--public-key", pinned),
                            capture_output=True, text=True, env=federation.env, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_the_coordinator_killed_and_restarted_resumes_from_its_checkpoint(federation: Federation) -> None:
    out = federation.root / "out-c"
    run = federation.run("--server-out", "run-c", "--out", str(out)).start()
    try:
        assert run.wait_for("round 1 done", 400), run.text()
        federation.server.kill(signal.SIGKILL)  # the whole coordinator host, no clean-up
    finally:
        run.kill()
    checkpoint = federation.data / "run-c" / "checkpoint" / "last"
    assert checkpoint.exists()
    assert _wait_port_free(federation.port, 60)  # the SuperLink went down with its supervisor
    federation.start_server()
    resumed = federation.run("--server-out", "run-c", "--resume", "--out", str(out)).start()
    assert resumed.wait(600) == 0, resumed.text()
    report = _report(out)
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    assert "round 1 started" not in resumed.text()  # round 1 came from the checkpoint
