"""The deployment ServerApp (``flwr run`` against a SuperLink).

Reads the run's configuration from Flower's run config (``[tool.flwr.app.config]``
in pyproject.toml, or ``flwr run --run-config 'rounds=5 model="minilm"'``),
plus ``out`` (the output directory) and ``resume`` (true to continue from the
last checkpoint in ``out``). Nodes state their own role with
``flower-supernode --node-config 'partition-id=0 num-partitions=3 role="edge"'``.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from sentinel.server.config import FederationConfig
from sentinel.server.coordinator import Coordinator
from sentinel.server.report import write_report

app = ServerApp()

RUN_KEYS_NOT_CONFIG = ("out", "resume")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config and write its report."""
    run_config = dict(context.run_config)
    out = Path(str(run_config.get("out") or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")))
    resume = bool(run_config.get("resume", False))
    config = FederationConfig.from_run_config({k: v for k, v in run_config.items() if k not in RUN_KEYS_NOT_CONFIG})
    coordinator = Coordinator.build(config, out)
    result = coordinator.run(grid, resume=resume)
    write_report(out, config, result, coordinator.report_extra())
