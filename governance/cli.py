"""`sentinel governance ...` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="governance commands.", no_args_is_help=True)

keys_app = typer.Typer(help="Node key pairs (Ed25519).", no_args_is_help=True)
