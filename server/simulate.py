"""``sentinel simulate``: a whole federation on one machine through Flower's simulation engine."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from sentinel.client.app import app as default_client_app
from sentinel.server.config import FederationConfig
from sentinel.server.coordinator import Coordinator
from sentinel.server.exceptions import SimulationError
from sentinel.server.progress import RoundProgress
from sentinel.server.report import write_report
from sentinel.server.rounds import RunResult


def quiet_flower() -> None:
    """Keep Flower's and Ray's console chatter out of the progress display."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from flwr.common.logger import update_console_handler

    update_console_handler(level=logging.WARNING, timestamps=False, colored=True)


def backend_config(num_cpus: int | None = None) -> dict[str, Any]:
    """Ray settings: one CPU per simulated node, as many nodes in parallel as cores."""
    cpus = num_cpus or os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "logging_level": "ERROR", "log_to_driver": False},
    }


def simulate(
    config: FederationConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    console: Console | None = None,
    coordinator: Coordinator | None = None,
    client_app: ClientApp = default_client_app,
) -> dict[str, Any]:
    """Run the federation in Flower's simulation engine and write the report; returns it.

    ``client_app`` is the nodes' app (the honest Sentinel node by default; red-team
    tests pass one from ``client.adversarial``).
    """
    from flwr.simulation import run_simulation

    quiet_flower()
    console = console or Console()
    out_dir = Path(out_dir)
    coordinator = coordinator or Coordinator.build(config, out_dir)
    holder: dict[str, Any] = {}
    start_round = coordinator.starting_state(resume).round if resume else 0
    progress = RoundProgress(config.rounds, console, start_round=start_round)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            with progress:
                holder["result"] = coordinator.run(grid, resume=resume, extra_observers=[progress])
        except BaseException as e:  # surfaced to the caller below
            holder["error"] = e
            raise

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=config.nodes,
        backend_config=backend_config(),  # type: ignore[arg-type]
    )
    if "error" in holder:
        raise SimulationError(f"the federation failed: {holder['error']}") from holder["error"]
    if "result" not in holder:
        raise SimulationError("the simulation ended without a result (see Flower's log above)")
    result: RunResult = holder["result"]
    return write_report(out_dir, config, result, coordinator.report_extra())
