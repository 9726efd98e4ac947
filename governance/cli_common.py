"""Shared pieces of the governance command line: options, console, error handling, client factories."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from sentinel.governance.exceptions import GovernanceError
from sentinel.ledger.exceptions import LedgerError
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from sentinel.governance.client import GovernanceClient
    from sentinel.governance.local_reader import LocalGovernanceReader
    from sentinel.ledger.store import Ledger

console = Console()
err_console = Console(stderr=True)

DEFAULT_TARGET = "127.0.0.1:50052"
DEFAULT_DB = "sqlite:///governance.db"
DEFAULT_LEDGER_DB = "sqlite:///ledger.db"

Target = Annotated[str, typer.Option("--target", "-t", envvar="SENTINEL_GOVERNANCE_TARGET", help="GovernanceService host:port.")]
RootCert = Annotated[Path | None, typer.Option("--root-cert", help="PEM CA certificate: use TLS and trust it.")]
NodeId = Annotated[str, typer.Option("--node-id", "-n", envvar="SENTINEL_NODE_ID", help="Your registered node id (the signer).")]
KeyPath = Annotated[Path, typer.Option("--key", "-k", envvar="SENTINEL_NODE_KEY", help="Your node's PEM private key.")]
Title = Annotated[str, typer.Option("--title", help="A short title for the proposal.")]
VotingPeriod = Annotated[
    float | None, typer.Option("--voting-period", help="Seconds until the deadline (default: the federation's).")
]
Db = Annotated[str, typer.Option("--db", envvar="SENTINEL_GOVERNANCE_DB", help="Governance database URL or SQLite path.")]
LedgerDb = Annotated[str, typer.Option("--ledger-db", envvar="SENTINEL_LEDGER_DB", help="Ledger database URL.")]
LedgerKey = Annotated[
    Path, typer.Option("--ledger-key", envvar="SENTINEL_COORDINATOR_KEY", help="Coordinator PEM key that signs ledger entries (created if missing).")
]
Components = Annotated[list[str], typer.Option("--component", "-c", help="Component id or glob (repeatable), e.g. 'layer.0.head.*'.")]

_F = TypeVar("_F", bound=Callable[..., Any])


def one_line(error: BaseException) -> str:
    """An error's message on one line (database errors carry their SQL and a link on the lines below)."""
    if isinstance(error, SQLAlchemyError) and getattr(error, "orig", None) is not None:
        error = error.orig  # type: ignore[assignment]
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def friendly_errors(command: _F) -> _F:
    """Print governance, ledger, input, file and database errors as one red line and exit 1 instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (GovernanceError, LedgerError, ValueError, OSError, SQLAlchemyError) as e:
            err_console.print(f"[bold red]error:[/] {one_line(e)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from e

    return wrapper  # type: ignore[return-value]


def make_client(target: str, root_cert: Path | None, node_id: str | None = None, key: Path | None = None) -> GovernanceClient:
    """A client of the service at ``target`` (TLS when ``root_cert``), signing as ``node_id`` with ``key``."""
    from sentinel.governance.client import GovernanceClient

    return GovernanceClient(target, node_id=node_id, key=key, root_cert=root_cert)


ReadDb = Annotated[
    str | None, typer.Option("--db", help="Read this governance database directly (URL or SQLite path) instead of --target.")
]


def make_reader(target: str, root_cert: Path | None, db: str | None) -> GovernanceClient | LocalGovernanceReader:
    """What read commands query: the database given by ``--db``, else the service at ``target``."""
    if db:
        from sentinel.governance.local_reader import LocalGovernanceReader

        return LocalGovernanceReader(db)
    return make_client(target, root_cert)


def open_ledger(url: str, key: Path) -> Ledger:
    """The ledger at ``url``, signing with the coordinator key at ``key`` (created if missing)."""
    from sentinel.ledger.store import Ledger

    return Ledger.open(url, key)
