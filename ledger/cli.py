"""`sentinel ledger ...` commands.

Every query command reads either a database directly (``--db URL``, or a SQLite
file path) or a running LedgerService (``--target host:port``, TLS with
``--root-cert``); ``serve`` runs that service. Nothing here creates a ledger: a
database that does not exist is an error. Errors are one line on stderr (exit
code 2); ``verify`` exits 1 when the chain is broken.

``verify`` trusts only a coordinator key it is given (``--public-key``) or the
one the run published beside its database (``coordinator.pub``, with the
signed head ``ledger_head.json``; see :mod:`ledger.anchor`), never the key the
database stores about itself.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sentinel.ledger.entries import LedgerEntry, LedgerInfo, NodeSummary, VerifyReport
from sentinel.ledger.exceptions import LedgerError
from sentinel.ledger.head import SignedHead
from sqlalchemy.exc import SQLAlchemyError

app = typer.Typer(help="ledger commands.", no_args_is_help=True)
_F = TypeVar("_F", bound=Callable[..., Any])


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
    def verify(
        self, public_key: str | None = None, *, node_signatures: bool = False, head: SignedHead | None = None
    ) -> VerifyReport: ...
    def balances(self) -> dict[str, int]: ...
    def info(self) -> LedgerInfo: ...
    def close(self) -> None: ...


def db_url(value: str) -> str:
    """``value`` as a database URL: a bare path means a SQLite file."""
    return value if "://" in value else f"sqlite:///{Path(value).expanduser()}"


def _one_line(error: BaseException) -> str:
    """An error's message on one line (database errors carry their SQL and a link below it)."""
    if isinstance(error, SQLAlchemyError) and getattr(error, "orig", None) is not None:
        error = error.orig  # type: ignore[assignment]
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _fail(message: str) -> typer.Exit:
    Console(stderr=True).print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _friendly(command: _F) -> _F:
    """Print ledger, input, file and database errors as one line (exit code 2) instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (LedgerError, ValueError, OSError, SQLAlchemyError) as e:
            raise _fail(_one_line(e)) from e

    return wrapper  # type: ignore[return-value]


@contextmanager
def _reader(db: str | None, target: str | None, root_cert: Path | None) -> Iterator[_Reader]:
    if (db is None) == (target is None):
        raise _fail("give exactly one of --db URL or --target host:port")
    if target is not None:
        from sentinel.ledger.client import LedgerClient

        source: _Reader = LedgerClient(target, root_cert)
    else:
        from sentinel.ledger.store import Ledger

        source = Ledger(db_url(db))  # type: ignore[arg-type]  # read-only: refuses a database that does not exist
    try:
        yield source
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
@_friendly
def serve(
    db: Annotated[str, typer.Option("--db", help="Database URL or SQLite file path (must exist).")],
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 50061,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    tls_cert: Annotated[Path | None, typer.Option(help="Server certificate (PEM) to enable TLS.", exists=True)] = None,
    tls_key: Annotated[Path | None, typer.Option(help="Server private key (PEM).", exists=True)] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="Require client certificates signed by this CA.", exists=True)] = None,
) -> None:
    """Serve the ledger read-only over gRPC (LedgerService) until SIGINT or SIGTERM."""
    from sentinel.ledger import serving
    from sentinel.ledger.service import TlsConfig
    from sentinel.ledger.service import serve as start

    if (tls_cert is None) != (tls_key is None):
        raise _fail("--tls-cert and --tls-key go together")
    tls = TlsConfig.from_files(tls_cert, tls_key, tls_client_ca) if tls_cert and tls_key else None
    server = start(db_url(db), host=host, port=port, tls=tls)
    _console().print(f"LedgerService for {db} on {host}:{server.port} ({'TLS' if tls else 'plaintext'}); Ctrl-C stops", soft_wrap=True)
    _console().file.flush()  # supervisors and tests read the address from a pipe
    serving.serve_until_signalled(server.stop)


@app.command()
@_friendly
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
@_friendly
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
@_friendly
def verify(
    db: DbOption = None,
    target: TargetOption = None,
    root_cert: RootCertOption = None,
    public_key: Annotated[
        str | None,
        typer.Option(help="Coordinator public key to trust: a file (base64 or PEM) or base64 text; default: the "
                     "coordinator.pub published beside the database. Needed for --target and for a database outside "
                     "a run directory."),
    ] = None,
    head: Annotated[
        Path | None,
        typer.Option(help="Published signed head (JSON) the chain must reach; default: the ledger_head.json beside the database."),
    ] = None,
    node_signatures: Annotated[
        bool, typer.Option(help="Also re-check every node signature (audits the coordinator; one Ed25519 check per signed entry).")
    ] = False,
) -> None:
    """Verify the whole chain against a coordinator key you trust; exits 1 and names the first bad entry and why."""
    from sentinel.ledger.anchor import HEAD_FILE, anchor_directory, load_trust_anchor, read_public_key, read_signed_head

    if (db is None) == (target is None):
        raise _fail("give exactly one of --db URL or --target host:port")
    key = read_public_key(public_key) if public_key is not None else None
    published = read_signed_head(head) if head is not None else None
    found = load_trust_anchor(anchor_directory(db_url(db))) if db is not None else None
    where = "given with --public-key"
    if key is None and found is not None:
        key, where = found.public_key, f"pinned in {found.key_file}"
    if key is None:
        raise _fail(
            "verifying through --target needs --public-key (the coordinator key you trust)" if target is not None else
            f"no trusted coordinator key for {db}: no coordinator.pub is published beside it; pass --public-key FILE or "
            "BASE64 (the key the database stores is never trusted)"
        )
    if published is None and found is not None:
        published = found.head
    with _reader(db, target, root_cert) as source:
        with _console().status("verifying the chain..."):
            report = source.verify(key, node_signatures=node_signatures, head=published)
        bad_entry = None
        if not report.ok and report.first_bad_seq is not None:
            try:
                bad_entry = source.get(report.first_bad_seq)
            except LedgerError:
                pass  # the first bad entry is a missing one
    reached = f"; it reaches the published head (seq {published.seq})" if published is not None else ""
    if report.ok:
        _console().print(f"[green]chain OK[/green]: {report.checked} entries verified against coordinator key {key} ({where}){reached}", soft_wrap=True)
        if published is None:
            _console().print(f"[yellow]note:[/yellow] no signed head ({HEAD_FILE}) was given or published: only the "
                             "database's own signed head record vouches that no tail was removed", soft_wrap=True)
        return
    at = f" at entry {report.first_bad_seq}" if report.first_bad_seq is not None else ""
    _console().print(f"[red]chain BROKEN[/red]{at}: {report.reason}", soft_wrap=True)
    _console().print(f"{report.checked} entries before it verified against coordinator key {key} ({where})", soft_wrap=True)
    if bad_entry is not None:
        _console().print(_entries_table([bad_entry], "first bad entry"))
    raise typer.Exit(1)


@app.command()
@_friendly
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
