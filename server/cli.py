"""The ``sentinel`` command line: one Typer app that mounts each package's commands."""

from __future__ import annotations

import typer
from sentinel.governance.cli import app as governance_app
from sentinel.ledger.cli import app as ledger_app
from sentinel.models.cli import app as models_app
from sentinel.models.cli_edge import app as edge_app
from sentinel.server.cli_deploy import node_command, run_command, server_command
from sentinel.server.cli_keys import keys_app
from sentinel.server.cli_simulate import simulate_command

app = typer.Typer(
    help="Sentinel Federation: federated LoRA and head pruning with consent governance and a signed ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(models_app, name="models", help="Inspect base models and export them to ONNX.")
app.add_typer(ledger_app, name="ledger", help="Query and verify the contribution ledger.")
app.add_typer(governance_app, name="governance", help="Consent contracts, nodes, proposals and votes.")
app.add_typer(edge_app, name="edge", help="Run and benchmark an edge bundle (ONNX Runtime).")
app.add_typer(keys_app, name="keys", help="Node keys, a test CA and server certificates.")
app.command("simulate")(simulate_command)
app.command("server")(server_command)
app.command("node")(node_command)
app.command("run")(run_command)


if __name__ == "__main__":  # pragma: no cover
    app()
