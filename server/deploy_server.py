"""``sentinel server``: the coordinator host — Flower's SuperLink plus the ledger and governance gRPC services.

One process supervises everything on the coordinator's host:

- **SuperLink** (``flower-superlink``; Fleet API for nodes and Control API for
  runs on one ``--host/--port``), TLS from ``--tls-cert/--tls-key/--tls-ca``
  or an explicit ``--insecure``; SuperNode authentication on by default (it
  needs TLS); its state in a database file, so a restart keeps the registered
  SuperNodes;
- **LedgerService** (read-only) and **GovernanceService** over the run
  directory's ledger and governance databases, on the same certificate;
- **key sync** (:mod:`sentinel.server.key_sync`): Flower's SuperNode key
  registry follows the admitted node cards and the governance registry.

The federation lives in ``--data-dir``: ``run/`` is the run directory the
coordinator ServerApp writes (ledger, governance, checkpoints, report),
``node-cards/`` the admitted cards, ``logs/`` the children's logs. Runs
submitted with ``sentinel run`` find it through ``SENTINEL_DATA_DIR`` in the
SuperLink's environment, which Flower passes on to the ServerApp process.

SIGINT or SIGTERM stops the services and the SuperLink (its process group),
each within a bounded time; if this process is killed outright, the kernel
stops the SuperLink too (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sentinel.server.control import Link, healthy
from sentinel.server.processes import Child, flower_bin, flower_env, wait_until

log = logging.getLogger("sentinel.server")

DATA_DIR_ENV = "SENTINEL_DATA_DIR"
LEDGER_URL_ENV = "SENTINEL_LEDGER_URL"
"""Set for the ServerApp when the server was given ``--ledger-db``: runs keep their ledger in the database the LedgerService serves."""
GOVERNANCE_URL_ENV = "SENTINEL_GOVERNANCE_URL"
"""Set for the ServerApp when the server was given ``--governance-db`` (the GovernanceService's database)."""
RUN_DIR = "run"
CARDS_DIR = "node-cards"
STARTUP_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate chain and key, and the CA that signed them (what clients trust)."""

    cert: Path
    key: Path
    ca: Path

    def check(self) -> TlsFiles:
        for name, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if not Path(path).is_file():
                raise ValueError(f"{name} {path} is not a file")
        return self


@dataclass(frozen=True)
class ServerSettings:
    """Everything ``sentinel server`` was asked for, validated."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 9093
    ledger_port: int = 50061
    governance_port: int = 50052
    tls: TlsFiles | None = None
    node_auth: bool = True
    node_cards: Path | None = None
    superlink_db: Path | None = None
    ledger_db: str | None = None
    governance_db: str | None = None
    sync_interval: float = 5.0

    def __post_init__(self) -> None:
        if self.node_auth and self.tls is None:
            raise ValueError("SuperNode authentication needs TLS: give --tls-cert/--tls-key/--tls-ca, or --no-node-auth with --insecure")

    @property
    def run_dir(self) -> Path:
        return self.data_dir / RUN_DIR

    @property
    def cards_dir(self) -> Path:
        return self.node_cards or self.data_dir / CARDS_DIR

    @property
    def link(self) -> Link:
        """How this host reaches its own SuperLink."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return Link(f"{host}:{self.port}", self.tls.ca if self.tls else None)

    def ledger_url(self) -> str:
        return self.ledger_db or f"sqlite:///{self.run_dir / 'ledger.db'}"

    def governance_url(self) -> str:
        return self.governance_db or str(self.run_dir / "governance.db")

    def database_env(self) -> dict[str, str]:
        """What tells the ServerApp (a child of the SuperLink) where the services' databases are, when they were given."""
        env: dict[str, str] = {}
        if self.ledger_db:
            env[LEDGER_URL_ENV] = str(self.ledger_db)
        if self.governance_db:
            env[GOVERNANCE_URL_ENV] = str(self.governance_db)
        return env

    def superlink_argv(self) -> list[str]:
        argv = [flower_bin("flower-superlink"), "--host", self.host, "--port", str(self.port)]
        argv += ["--database", str(self.superlink_db or self.data_dir / "superlink.db")]
        argv += ["--disable-runtime-dependency-installation"]
        if self.tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key), "--ssl-ca-certfile", str(self.tls.ca)]
        if self.node_auth:
            argv.append("--enable-supernode-auth")
        return argv


class CoordinatorServer:
    """The supervised SuperLink, ledger and governance services and the key sync; :meth:`serve` until a signal."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.superlink: Child | None = None
        self.ledger = None
        self.governance = None
        self.sync = None
        self._stop = threading.Event()

    def start(self) -> CoordinatorServer:
        """Start everything and wait until the SuperLink answers its health check; raise on failure."""
        s = self.settings
        for d in (s.data_dir, s.run_dir, s.cards_dir, s.data_dir / "logs"):
            d.mkdir(parents=True, exist_ok=True)
        env = {**flower_env(s.data_dir / "flwr-home"), DATA_DIR_ENV: str(s.data_dir.resolve()), **s.database_env()}
        started = time.monotonic()
        self.superlink = Child("SuperLink", s.superlink_argv(), s.data_dir / "logs" / "superlink.log", env).start()
        try:
            self._start_services()
            if not wait_until(lambda: healthy(s.link), STARTUP_TIMEOUT_S, child=self.superlink):
                code = self.superlink.exit_code()
                why = f"exited with code {code}" if code is not None else f"did not answer /health within {STARTUP_TIMEOUT_S:.0f} s"
                raise RuntimeError(f"the SuperLink {why}; its log ends with:\n{self.superlink.tail()}")
            log.info("SuperLink healthy on %s (%s, node auth %s) after %.1f s", s.link.address,
                     "TLS" if s.tls else "plaintext", "on" if s.node_auth else "off", time.monotonic() - started)
            if s.node_auth:
                self._start_key_sync()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_services(self) -> None:
        from sentinel.governance.cli_common import open_ledger
        from sentinel.governance.service import TLSConfig
        from sentinel.governance.service import serve as serve_governance
        from sentinel.ledger.service import TlsConfig
        from sentinel.ledger.service import serve as serve_ledger

        s = self.settings
        key = s.run_dir / "coordinator.key"  # the key the coordinator signs the run's ledger with
        sink = open_ledger(s.ledger_url(), key)  # creates the ledger and its key before any run does
        tls = s.tls
        self.ledger = serve_ledger(s.ledger_url(), host=s.host, port=s.ledger_port, tls=TlsConfig.from_files(tls.cert, tls.key) if tls else None)
        log.info("LedgerService on %s:%d (%s)", s.host, self.ledger.port, "TLS" if tls else "plaintext")
        self.governance = serve_governance(s.governance_url(), sink, host=s.host, port=s.governance_port, tls=TLSConfig(tls.cert, tls.key) if tls else None)
        log.info("GovernanceService on %s (%s)", self.governance.target, "TLS" if tls else "plaintext")

    def _start_key_sync(self) -> None:
        from sentinel.server.key_sync import KeySync

        assert self.governance is not None
        self.sync = KeySync(self.settings.link, self.settings.cards_dir, self.governance.governor.nodes, self.settings.sync_interval)
        result = self.sync.reconcile()
        log.info("SuperNode keys: %d registered now from %s", len(result.registered), self.settings.cards_dir)
        self.sync.start()

    def serve(self) -> int:
        """Block until SIGINT/SIGTERM (exit 0) or until the SuperLink dies (exit 1); everything is stopped on return."""
        previous = {sig: signal.signal(sig, lambda *_: self._stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self._stop.wait(1.0):
                if self.superlink is not None and (code := self.superlink.exit_code()) is not None:
                    log.error("the SuperLink exited with code %s; stopping. Its log ends with:\n%s", code, self.superlink.tail())
                    return 1
            log.info("stopping")
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self) -> None:
        """Stop the key sync, the gRPC services (1 s grace) and the SuperLink (10 s, then SIGKILL)."""
        if self.sync is not None:
            self.sync.stop()
        for service in (self.governance, self.ledger):
            if service is not None:
                try:
                    service.stop(grace=1.0)
                except Exception as e:  # keep stopping the rest
                    log.warning("stopping a service failed: %s", e)
        self.governance = self.ledger = None
        if self.superlink is not None:
            code = self.superlink.stop(timeout=10.0)
            log.info("SuperLink stopped (exit %s)", code)


__all__ = ["CoordinatorServer", "DATA_DIR_ENV", "GOVERNANCE_URL_ENV", "LEDGER_URL_ENV", "RUN_DIR", "ServerSettings", "TlsFiles"]
