"""``sentinel simulate``: a whole federation on one machine through Flower's simulation engine.

Flower 1.41 deprecates the ``run_simulation`` wrapper in favour of ``flwr run``
on a simulation SuperLink. That path spawns a SuperLink, a ``flwr-simulation``
process and a FAB install per run, and its ServerApp runs in another process;
under it, ``flwr-simulation`` calls the simulation runtime
(``flwr.simulation.run_simulation._run_simulation``) with the run's Context and
Run. We call that same runtime in-process, with a Context and Run built the way
``flwr-simulation`` builds them (the run config on the server; the run's
simulated key directory in every node's node config): the same engine and Ray backend, no deprecation
warning, no SuperLink, and red-team ClientApps and live progress keep working.
It is a private function, so the flwr pin (``flwr==1.41.0``) and
``tests/deploy/test_simulation_engine.py`` guard its signature.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from rich.console import Console
from sentinel.client.app import app as default_client_app
from sentinel.client.node import SIMULATED_KEYS, SimulatedNodeApp, ensure_simulated_keys
from sentinel.server.config import FederationConfig
from sentinel.server.coordinator import Coordinator
from sentinel.server.exceptions import SimulationError
from sentinel.server.progress import RoundProgress
from sentinel.server.report import write_report
from sentinel.server.rounds import RunResult
from sentinel.server.run_config import to_run_config


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

    keys = ensure_simulated_keys(out_dir / SIMULATED_KEYS_DIR, config.nodes)
    run_config = to_run_config(config, out=str(out_dir), resume=resume)
    run_simulation_engine(server_app, SimulatedNodeApp(client_app, {SIMULATED_KEYS: str(keys)}), config.nodes, run_config)
    if "error" in holder:
        raise SimulationError(f"the federation failed: {holder['error']}") from holder["error"]
    if "result" not in holder:
        raise SimulationError("the simulation ended without a result (see Flower's log above)")
    result: RunResult = holder["result"]
    return write_report(out_dir, config, result, coordinator.report_extra())


SIMULATED_KEYS_DIR = "node-keys"
"""The run directory's folder of simulated node keys (random, made once per run, reused by ``--resume``)."""


def run_simulation_engine(server_app: ServerApp, client_app: Any, num_nodes: int, run_config: dict[str, Any]) -> None:
    """Run ``server_app`` and ``num_nodes`` simulated nodes in Flower's simulation runtime (Ray), in this process."""
    from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
    from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    run = Run.create_empty(run_id=generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    run.override_config = dict(run_config)
    TaskIdentity.task_id = run.primary_task_id
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    # Flower's Ray backend writes this process's whole sys.path into PYTHONPATH so its
    # workers can import the app; left there, every later subprocess of the caller
    # inherits it (and imports whatever folders happen to be on that path).
    pythonpath = os.environ.get("PYTHONPATH")
    try:
        _run_simulation(
            num_supernodes=num_nodes,
            exit_event=EventType.FLWR_SIMULATION_RUN_LEAVE,
            client_app=client_app,
            server_app=server_app,
            backend_name="ray",
            backend_config=backend_config(),  # type: ignore[arg-type]
            server_app_context=context,
            run=run,
        )
    finally:
        if pythonpath is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = pythonpath
