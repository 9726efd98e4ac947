"""The deployment ServerApp (``sentinel run``, or ``flwr run`` against a SuperLink).

Reads the run's configuration from Flower's run config: every key of
``[tool.flwr.app.config]`` (``FederationConfig`` fields with dashes, per-role
profiles as ``edge-lora-rank`` ...; see :mod:`sentinel.server.run_config`),
plus the run's own keys: ``out`` (the run directory on the coordinator's host;
relative to ``$SENTINEL_DATA_DIR`` under ``sentinel server``), ``resume``
(continue from the last checkpoint in ``out``) and ``node-wait-s`` (how long
to wait for the run's nodes). Nodes state their role and key in their node
config (``sentinel node``).

The run log says how many nodes have connected while it waits, one line per
round, and ends with the report as one marked line (``sentinel run`` writes it
into its ``--out``) and how the run ended.
"""

from __future__ import annotations

from logging import ERROR, INFO

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log
from sentinel.server.coordinator import Coordinator
from sentinel.server.deploy_run import RESULT_MARK, LogProgress, database_urls, report_line, resolve_out, wait_for_nodes
from sentinel.server.report import write_report
from sentinel.server.run_config import RUN_KEYS, split_keys, to_federation_config

app = ServerApp()


def _say(text: str) -> None:
    log(INFO, "%s", text)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config and write (and log) its report."""
    try:
        run_keys, fed = split_keys(dict(context.run_config))
        run = {**RUN_KEYS, **run_keys}
        config = to_federation_config(fed)
        out = resolve_out(str(run["out"]))
        _say(f"run directory {out}; {config.nodes} nodes, {config.rounds} rounds, model {config.model}")
        wait_for_nodes(lambda: len(list(grid.get_node_ids())), config.nodes, float(run["node-wait-s"]), _say)
        ledger_url, governance_url = database_urls(run)
        coordinator = Coordinator.build(config, out, ledger_url=ledger_url, governance_url=governance_url)
        result = coordinator.run(grid, resume=bool(run["resume"]), extra_observers=[LogProgress(_say)])
        report = write_report(out, config, result, coordinator.report_extra())
    except Exception as e:
        log(ERROR, "%s%s: %s", RESULT_MARK, type(e).__name__, e)
        raise
    log(INFO, "%s", report_line(report))
    log(INFO, "%sok", RESULT_MARK)
