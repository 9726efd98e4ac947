"""``sentinel simulate`` runs Flower's simulation runtime in-process: its private entry point, configs, no deprecation."""

from __future__ import annotations

import inspect
import logging
import os
import time

import pytest


def test_the_runtime_entry_point_takes_what_we_pass() -> None:
    from flwr.simulation.run_simulation import _run_simulation

    params = inspect.signature(_run_simulation).parameters
    for name in ("num_supernodes", "exit_event", "client_app", "server_app", "backend_name", "backend_config", "server_app_context", "run"):
        assert name in params, f"flwr's _run_simulation lost `{name}`: revisit sentinel.server.simulate"


@pytest.mark.slow
def test_the_server_sees_the_run_config_nodes_their_keys_and_nothing_is_deprecated() -> None:
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from sentinel.client.node import SimulatedNodeApp
    from sentinel.server.simulate import run_simulation_engine

    client = ClientApp()

    @client.query("probe")
    def probe(msg: Message, context: Context) -> Message:
        keys = str(context.node_config.get("node-keys", ""))
        return Message(RecordDict({"r": ConfigRecord({"keys": keys, "pid": int(context.node_config["partition-id"])})}), reply_to=msg)

    seen: dict[str, object] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        seen["server"] = dict(context.run_config)
        while len(list(grid.get_node_ids())) < 2:
            time.sleep(0.1)
        msgs = [Message(RecordDict(), dst_node_id=n, message_type="query.probe") for n in grid.get_node_ids()]
        seen["replies"] = sorted((r.content["r"]["pid"], r.content["r"]["keys"]) for r in grid.send_and_receive(msgs, timeout=900))

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addHandler(handler)
    pythonpath = os.environ.get("PYTHONPATH")
    try:
        run_simulation_engine(server, SimulatedNodeApp(client, {"node-keys": "/run/keys"}), 2, {"rounds": 1})
    finally:
        flwr_logger.removeHandler(handler)
    assert seen["server"] == {"rounds": 1}
    assert seen["replies"] == [(0, "/run/keys"), (1, "/run/keys")]
    assert not [r for r in records if "deprecated" in r.getMessage().lower()]
    # The caller's environment is as it was: Flower's Ray backend sets PYTHONPATH to the
    # driver's sys.path, which leaked into every later subprocess.
    assert os.environ.get("PYTHONPATH") == pythonpath
