"""``sentinel server/node/run`` without starting anything: what they refuse, what they would start, what they say."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from sentinel.client.node import NodeIdentity
from sentinel.server.deploy_node import NodeSettings
from sentinel.server.deploy_run import REPORT_MARK, marked, report_line, wait_for_nodes, write_app_dir
from sentinel.server.deploy_server import ServerSettings, TlsFiles
from sentinel.server.exceptions import NodesUnavailableError
from sentinel.server.run_config import declared_defaults
from sentinel.server.tls import make_ca, make_node_keys, make_server_cert
from typer.testing import CliRunner


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    ca, _ = make_ca(tmp_path / "ca")
    cert, key = make_server_cert(tmp_path / "ca", tmp_path / "server")
    return TlsFiles(cert, key, ca).check()


def _cli(*args: str) -> tuple[int, str]:
    from sentinel.server.cli import app

    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output


def test_the_server_refuses_plaintext_unless_asked_and_node_auth_without_tls(tmp_path: Path) -> None:
    code, out = _cli("server", "--data-dir", str(tmp_path))
    assert code == 2 and "--insecure" in out and "Traceback" not in out
    code, out = _cli("server", "--data-dir", str(tmp_path), "--insecure")
    assert code == 2 and "SuperNode authentication needs TLS" in out
    with pytest.raises(ValueError, match="needs TLS"):
        ServerSettings(tmp_path)


def test_the_superlink_gets_tls_node_auth_and_a_state_database(tmp_path: Path, tls: TlsFiles) -> None:
    argv = ServerSettings(tmp_path, port=9999, tls=tls).superlink_argv()
    assert argv[argv.index("--port") + 1] == "9999" and "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert argv[argv.index("--ssl-ca-certfile") + 1] == str(tls.ca)
    assert argv[argv.index("--database") + 1] == str(tmp_path / "superlink.db")
    plain = ServerSettings(tmp_path, node_auth=False).superlink_argv()
    assert "--insecure" in plain and "--enable-supernode-auth" not in plain
    assert ServerSettings(tmp_path, host="0.0.0.0", tls=tls).link.address == "127.0.0.1:9093"


def test_a_node_refuses_to_start_without_its_key(tmp_path: Path, tls: TlsFiles) -> None:
    code, out = _cli("node", "--ca", str(tls.ca))
    assert code == 2 and "needs its signing key" in out
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(ValueError, match="--key-file"):
        NodeSettings(tmp_path / "bad.key", ca=tls.ca).checked()
    bundle = make_node_keys(tmp_path, "edge-0")
    with pytest.raises(ValueError, match="--ca"):
        NodeSettings(bundle.key).checked()
    with pytest.raises(ValueError, match="--role"):
        NodeSettings(bundle.key, ca=tls.ca, role="laptop").checked()
    with pytest.raises(ValueError, match="--partition-id"):
        NodeSettings(bundle.key, ca=tls.ca, partition_id=3, num_partitions=3).checked()


def test_a_node_starts_a_supernode_with_its_keys_role_and_data(tmp_path: Path, tls: TlsFiles) -> None:
    bundle = make_node_keys(tmp_path, "gpu-0")
    node = NodeSettings(bundle.key, superlink="10.0.0.1:9093", ca=tls.ca, role="gpu", partition_id=1, num_partitions=3,
                        dataset="builtin:reviews", lora_rank=8, port=9200).checked()
    assert node.auth_key == bundle.auth_key  # found beside the key file
    argv = node.argv()
    assert argv[argv.index("--auth-supernode-private-key") + 1] == str(bundle.auth_key)
    assert argv[argv.index("--root-certificates") + 1] == str(tls.ca) and "--insecure" not in argv
    config = tomllib.loads(argv[argv.index("--node-config") + 1].replace(" ", "\n"))
    assert config == {"partition-id": 1, "num-partitions": 3, "key-file": str(bundle.key.resolve()), "device": "auto",
                      "role": "gpu", "dataset": "builtin:reviews", "lora-rank": 8}


def test_waiting_for_nodes_says_how_many_and_gives_up_at_a_named_deadline() -> None:
    said: list[str] = []
    counts = iter([0, 1, 1, 2])
    assert wait_for_nodes(lambda: next(counts), 2, 60, said.append, poll_s=0.01) == 2
    assert said[0].startswith("waiting for nodes: 0 of 2 connected; giving up at ")
    assert said[-1] == "2 of 2 nodes connected"
    with pytest.raises(NodesUnavailableError, match=r"only 1 of 3 nodes connected by the deadline \d\d:\d\d:\d\d"):
        wait_for_nodes(lambda: 1, 3, 0.05, said.append, poll_s=0.01)


def test_the_submitted_app_declares_every_key_and_the_report_travels_in_one_line(tmp_path: Path) -> None:
    app = tomllib.loads((write_app_dir(tmp_path) / "pyproject.toml").read_text())
    assert app["tool"]["flwr"]["app"]["config"] == declared_defaults()
    assert app["tool"]["flwr"]["app"]["components"] == {"serverapp": "sentinel.server.app:app", "clientapp": "sentinel.client.app:app"}
    report = {"final": {"round": 2, "accuracy": 0.5}, "rounds": [{"round": 1}]}
    lines = ["noise", "\x1b[92mINFO \x1b[0m:      " + report_line(report), "after"]
    assert marked(lines, REPORT_MARK) == report_line(report).removeprefix(REPORT_MARK)


def test_an_edge_node_names_where_it_keeps_delivered_bundles_and_its_state(tmp_path: Path, tls: TlsFiles) -> None:
    bundle = make_node_keys(tmp_path, "edge-0")
    node = NodeSettings(bundle.key, ca=tls.ca, role="edge", edge_bundle_dir=tmp_path / "bundles", state_dir=tmp_path / "state").checked()
    argv = node.argv()
    config = tomllib.loads(argv[argv.index("--node-config") + 1].replace(" ", "\n"))
    assert config["edge-bundle-dir"] == str((tmp_path / "bundles").resolve())
    # The node reads both back from its node config (what the ClientApp sees).
    ident = NodeIdentity.model_validate(config)
    assert ident.state_dir == str((tmp_path / "state").resolve()) and ident.edge_bundle_dir == config["edge-bundle-dir"]
