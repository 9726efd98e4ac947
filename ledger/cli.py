"""`sentinel ledger ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="ledger commands.", no_args_is_help=True)
