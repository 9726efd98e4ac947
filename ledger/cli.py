"""`sentinel ledger ...` commands.

Every query command reads either a database directly (``--db URL``, or a SQLite
file path) or a running LedgerService (``--target host:port``, TLS with
``--root-cert``); ``serve`` runs that service.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Protocol

import typer
from rich.console import Console
from rich.table import Table
from sentinel.ledger.entries import LedgerEntry, LedgerInfo, NodeSummary, VerifyReport
from sentinel.ledger.exceptions import LedgerError

app = typer.Typer(help="ledger commands.", no_args_is_help=True)


def _console() -> Console:
    """A console sized for the terminal at call time (``COLUMNS`` when not a terminal)."""
    return Console()

DbOption = Annotated[
    str | None, typer.Option("--db", help="Database URL (sqlite:///FILE, postgresql+psycopg://...) or SQLite file path.")
]
TargetOption = Annotated[str | None, typer.Option("--target", help="LedgerService address host:port (instead of --db).")]
RootCertOption = Annotated[
    Path | None, typer.Option("--root-cert", help="PEM CA certificate for a TLS --target.", exists=True, dir_okay=False)
]


class _Reader(Protocol):
    def entries(self, start: int = 0, limit: int = 100, kind: str | None = None, node: str | None = None) -> list[LedgerEntry]: ...
    def get(self, seq: int) -> LedgerEntry: ...
    def node_summary(self, node: str) -> NodeSummary: ...
    def verify(self, public_key: str | None = None, *, node_signatures: bool = False) -> VerifyReport: ...
    def balances(self) -> dict[str, int]: ...
    def info(self) -> LedgerInfo: ...
    def close(self) -> None: ...


def db_url(value: str) -> str:
    """``value`` as a database URL: a bare path means a SQLite file."""
    return value if "://" in value else f"sqlite:///{Path(value).expanduser()}"


def _fail(message: str) -> typer.Exit:
    _console().print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


@contextmanager
def _reader(db: str | None, target: str | None, root_cert: Path | None):  # type: ignore[no-untyped-def]
    if (db is None) == (target is None):
        raise _fail("give exactly one of --db URL or --target host:port")
    if target is not None:
        from sentinel.ledger.client import LedgerClient

        source: _Reader = LedgerClient(target, root_cert)
    else:
        url = db_url(db)  # type: ignore[arg-type]
        if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
            raise _fail(f"no ledger database at {url.removeprefix('sqlite:///')}")
        from sentinel.ledger.store import Ledger

        source = Ledger(url)
    try:
        yield source
    except LedgerError as e:
        raise _fail(str(e)) from e
    finally:
        source.close()


def _short(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    text = json.dumps(value, separators=(",", ":")) if isinstance(value, list) else str(value)
    return text if len(text) <= 24 else text[:8] + "…"  # keys, hashes, signatures


def _payload_summary(payload: dict[str, object]) -> str:
    """``key=value`` pairs with long values (keys, hashes) shortened, for one table cell."""
    return " ".join(f"{key}={_short(value)}" for key, value in payload.items())


def _entries_table(entries: list[LedgerEntry], title: str) -> Table:
    table = Table(title=title, caption="✍ = signed by the node; --json shows hashes and signatures")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("actor", overflow="fold")
    table.add_column("payload", ratio=1, overflow="fold")
    for e in entries:
        actor = e.actor + (" ✍" if e.node_signature else "")
        when = e.timestamp[:19].replace("T", " ")
        table.add_row(str(e.seq), when, str(e.kind), actor, _payload_summary(e.payload))
    return table


@app.command()
def serve(
    db: Annotated[str, typer.Option("--db", help="Database URL or SQLite file path.")],
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 50061,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM) to enable TLS.", exists=True)] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).", exists=True)] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="Require client certificates signed by this CA.", exists=True)] = None,
) -> None:
    """Serve the ledger read-only over gRPC (LedgerService) until interrupted."""
    from sentinel.ledger.service import TlsConfig
    from sentinel.ledger.service import serve as start

    if (tls_cert is None) != (tls_key is None):
        raise _fail("--tls-cert and --tls-key go together")
    tls = TlsConfig.from_files(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    server = start(db_url(db), host=host, port=port, tls=tls)
    _console().print(f"LedgerService for {db} on {host}:{server.port} ({'TLS' if tls else 'plaintext'}); Ctrl-C stops", soft_wrap=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def entries(
    db: DbOption = None,
    target: TargetOption = None,
    root_cert: RootCertOption = None,
    start: Annotated[int, typer.Option(min=0, help="First seq.")] = 0,
    limit: Annotated[int, typer.Option(min=1, help="How many entries.")] = 20,
    kind: Annotated[str | None, typer.Option(help="Only this kind (e.g. update_submitted).")] = None,
    node: Annotated[str | None, typer.Option(help="Only entries about this node.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line instead of a table.")] = False,
) -> None:
    """List entries in seq order."""
    with _reader(db, target, root_cert) as source:
        found = source.entries(start, limit, kind, node)
    if as_json:
        for e in found:
            print(json.dumps(e.to_dict()))
        return
    _console().print(_entries_table(found, f"ledger entries from seq {start}" + (f" (kind {kind})" if kind else "")))


@app.command("node")
def node_command(
    node: Annotated[str, typer.Argument(help="Node id.")],
    db: DbOption = None,
    target: TargetOption = None,
    root_cert: RootCertOption = None,
) -> None:
    """What the ledger says about one node: submissions, decisions, contributions, tokens."""
    with _reader(db, target, root_cert) as source:
        s = source.node_summary(node)
    table = Table(title=f"node {s.node}", show_header=False)
    for label, value in (
        ("registered", f"{s.registered} (role {s.role or '-'})"),
        ("public key", s.public_key or "-"),
        ("updates submitted / accepted / rejected", f"{s.submitted} / {s.accepted} / {s.rejected}"),
        ("consent violations", str(s.consent_violations)),
        ("contribution total", f"{s.contribution_total:.6g} over {len(s.contributions)} rounds"),
        ("token balance", str(s.token_balance)),
    ):
        table.add_row(label, value)
    _console().print(table)
    if s.contributions:
        rounds = Table(title="contributions")
        for column in ("round", "score", "method", "seq"):
            rounds.add_column(column)
        for c in s.contributions:
            rounds.add_row(str(c.round), f"{c.score:.6g}", c.method, str(c.seq))
        _console().print(rounds)


@app.command()
def verify(
    db: DbOption = None,
    target: TargetOption = None,
    root_cert: RootCertOption = None,
    public_key: Annotated[
        str | None, typer.Option(help="Coordinator public key (base64) to trust; default: the one the ledger recorded.")
    ] = None,
    node_signatures: Annotated[
        bool, typer.Option(help="Also re-check every node signature (audits the coordinator; one Ed25519 check per signed entry).")
    ] = False,
) -> None:
    """Verify the whole chain; exits 1 and names the first bad entry and why if it is broken."""
    with _reader(db, target, root_cert) as source:
        with _console().status("verifying the chain..."):
            report = source.verify(public_key, node_signatures=node_signatures)
        key = public_key or source.info().public_key
        bad_entry = None
        if not report.ok and report.first_bad_seq is not None:
            try:
                bad_entry = source.get(report.first_bad_seq)
            except LedgerError:
                pass  # the first bad entry is a missing one
    if report.ok:
        _console().print(f"[green]chain OK[/green]: {report.checked} entries verified against coordinator key {key}")
        return
    _console().print(f"[red]chain BROKEN[/red] at entry {report.first_bad_seq}: {report.reason}")
    _console().print(f"{report.checked} entries before it verified against coordinator key {key}")
    if bad_entry is not None:
        _console().print(_entries_table([bad_entry], "first bad entry"))
    raise typer.Exit(1)


@app.command()
def balances(db: DbOption = None, target: TargetOption = None, root_cert: RootCertOption = None) -> None:
    """Token balance per node, derived from the ledger's token entries."""
    with _reader(db, target, root_cert) as source:
        found = source.balances()
    table = Table(title="token balances")
    table.add_column("node")
    table.add_column("tokens", justify="right")
    for node, amount in found.items():
        table.add_row(node, str(amount))
    table.add_row("[bold]total[/bold]", f"[bold]{sum(found.values())}[/bold]")
    _console().print(table)
