"""Edge deployment: the coordinator delivers the edge bundle to edge nodes, which install it and answer from it.

Real ClientApps on a LocalGrid (a real Flower message path in process), a real
tiny-bert student exported to ONNX, real onnxruntime on the nodes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sentinel.client.app import app as client_app
from sentinel.client.data.federated import federated_split, node_train_val
from sentinel.client.edge import evaluate_bundle
from sentinel.client.edge_install import bundle_store_dir
from sentinel.models.edge_bundle import BundleRunner, load_bundle
from sentinel.models.edge_export import export_bundle
from sentinel.models.global_model import materialise
from sentinel.models.loading import load_base_model
from sentinel.models.student import build_student
from sentinel.protos import messages as P
from sentinel.protos import records
from sentinel.server.central import initial_state
from sentinel.server.edge_deployment import BundleRef, EdgeDeployment
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.strategy import SentinelStrategy

ROLES = ("edge", "edge", "gpu")
IDS = (801, 802, 803)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from tests.federation.conftest import tiny_config

    config = tiny_config(roles=list(ROLES))
    data = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    base = load_base_model(config.model, num_labels=data.num_labels, seed=config.seed)
    state = initial_state(base)
    mask = np.ones((2, 4), dtype=np.float32)
    mask[0, 1] = 0.0
    root = tmp_path_factory.mktemp("edge-deploy")
    bundles = []
    for i, keep in enumerate((0.5, 0.75)):  # two different students: two bundles
        student = build_student(materialise(base, state.deltas, state.head), mask, ffn_layers=[1], ffn_keep=keep).model
        path = export_bundle(student, base.tokenizer, root / f"bundle-{i}", name=config.model, max_length=config.max_length)
        bundles.append(BundleRef(round=i + 1, directory=Path(path), manifest_sha256=load_bundle(path).manifest_sha256))
    return {"config": config, "data": data, "bundles": bundles, "root": root}


def _deployment(setup: dict, tmp_path: Path, current: list[BundleRef], app: ClientApp = client_app) -> tuple[EdgeDeployment, LocalGrid, Path]:
    config = setup["config"]
    stores = tmp_path / "stores"
    node_config = {
        n: {"partition-id": i, "num-partitions": 3, "role": ROLES[i], "device": "cpu", P.NODE_EDGE_BUNDLE_DIR: str(stores / f"p{i}")}
        for i, n in enumerate(IDS)
    }
    grid = LocalGrid({n: app for n in IDS}, node_config)
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    deployment = EdgeDeployment(lambda: current[-1] if current else None, strategy.node_config, max_examples_fn=lambda node: 10_000)
    deployment.on_nodes([NodeInfo(n, i, ROLES[i]) for i, n in enumerate(IDS)])
    return deployment, grid, stores


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(destination, carried the files) of every evaluate.edge message that crosses the grid."""
    sent: list[tuple[int, bool]] = []
    real = LocalGrid.send_and_receive

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN202
        messages = list(messages)
        sent.extend((m.metadata.dst_node_id, P.REC_BUNDLE in m.content) for m in messages if m.metadata.message_type == P.MSG_EDGE_EVALUATE)
        return real(self, messages, timeout=timeout)

    monkeypatch.setattr(LocalGrid, "send_and_receive", send_and_receive)
    return sent


def test_edge_nodes_get_the_bundle_once_and_answer_from_it(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = setup["bundles"]
    current = [first]
    deployment, grid, stores = _deployment(setup, tmp_path, current)
    sent = _spy(monkeypatch)

    row = deployment.run(grid, 1)
    assert sorted(sent) == [(IDS[0], True), (IDS[1], True)]  # edge nodes only; the gpu node is not asked
    assert row["rejected"] == {} and len(row["nodes"]) == 2 and row["manifest_sha256"] == first.manifest_sha256
    assert row["bytes_down"] == 2 * (load_bundle(first.directory).manifest.total_bytes + (first.directory / "manifest.json").stat().st_size)
    runner = BundleRunner(first.directory)
    config = setup["config"]
    expected = [evaluate_bundle(runner, node_train_val(setup["data"], p, config.val_fraction, config.seed)[1]) for p in (0, 1)]
    assert sorted(n["accuracy"] for n in row["nodes"].values()) == pytest.approx(sorted(e.accuracy for e in expected), abs=1e-12)
    for p in (0, 1):  # installed, verified, under the manifest hash
        assert load_bundle(stores / f"p{p}" / first.manifest_sha256).manifest_sha256 == first.manifest_sha256

    sent.clear()
    row = deployment.run(grid, 2)  # same bundle: the nodes answer from their copy, no files travel
    assert sorted(sent) == [(IDS[0], False), (IDS[1], False)] and row["delivered"] == [] and row["bytes_down"] == 0
    assert row["rejected"] == {} and len(row["nodes"]) == 2

    current.append(second)
    sent.clear()
    row = deployment.run(grid, 3)  # a new distillation: delivered again
    assert sorted(sent) == [(IDS[0], True), (IDS[1], True)] and row["manifest_sha256"] == second.manifest_sha256
    assert row["rejected"] == {}


def test_a_node_that_lost_its_copy_is_sent_the_files_within_the_round(setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = setup["bundles"][0]
    deployment, grid, stores = _deployment(setup, tmp_path, [first])
    deployment.run(grid, 1)
    shutil.rmtree(stores / "p0")  # the device was wiped
    sent = _spy(monkeypatch)
    row = deployment.run(grid, 2)
    assert sorted(sent) == [(IDS[0], False), (IDS[0], True), (IDS[1], False)]  # asked, failed, sent the files at once
    assert row["rejected"] == {} and len(row["nodes"]) == 2 and len(row["delivered"]) == 1


def test_a_corrupted_delivery_is_refused_by_the_node_and_nothing_is_installed(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = setup["bundles"][0]
    deployment, grid, stores = _deployment(setup, tmp_path, [first])
    real = records.bundle_record

    def corrupted(directory, paths):  # noqa: ANN001, ANN202 - a flipped byte in transit (or a hostile relay)
        record = real(directory, paths)
        values = record["model.onnx"].numpy().copy()
        values[len(values) // 2] ^= 0xFF
        record["model.onnx"] = type(record["model.onnx"])(values)
        return record

    monkeypatch.setattr("sentinel.server.edge_deployment.bundle_record", corrupted)
    row = deployment.run(grid, 1)
    assert row["nodes"] == {} and len(row["rejected"]) == 2
    assert all("does not match its sha256" in reason for reason in row["rejected"].values())
    assert not any(d.name == first.manifest_sha256 for p in (0, 1) if (stores / f"p{p}").is_dir() for d in (stores / f"p{p}").iterdir())


def test_a_reply_that_is_not_from_the_bundle_asked_about_is_refused(setup: dict, tmp_path: Path) -> None:
    first = setup["bundles"][0]
    liar = ClientApp()

    @liar.evaluate("edge")
    def evaluate_edge(msg: Message, context: Context) -> Message:  # answers with torch-like figures and no bundle
        metrics = MetricRecord({P.M_EXAMPLES: 4, P.M_ACCURACY: 1.0, P.M_LOSS: 0.0, P.M_ECE: 0.0, "accuracy/a": 1.0, "examples/a": 4})
        evaluator = ConfigRecord({P.E_RUNTIME: P.RUNTIME_ONNX, P.E_BUNDLE_SHA256: "0" * 64})
        return Message(RecordDict({P.REC_METRICS: metrics, P.REC_EVALUATOR: evaluator}), reply_to=msg)

    deployment, grid, _ = _deployment(setup, tmp_path, [first], app=liar)
    row = deployment.run(grid, 1)
    assert row["nodes"] == {} and row["accuracy"] is None
    assert all("the coordinator asked about" in reason for reason in row["rejected"].values())


def test_no_bundle_yet_means_no_edge_phase(setup: dict, tmp_path: Path) -> None:
    deployment, grid, _ = _deployment(setup, tmp_path, [])
    assert deployment.run(grid, 1) == {} and deployment.report()["edge"]["latest"] is None


def test_the_store_defaults_beside_the_simulated_keys_or_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bundle_store_dir(str(tmp_path / "mine"), None, 0, "k") == tmp_path / "mine"
    assert bundle_store_dir(None, str(tmp_path / "run" / "node-keys"), 3, "k") == tmp_path / "run" / "node-bundles" / "partition-3"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert bundle_store_dir(None, None, 0, "abc") == tmp_path / "cache" / "sentinel" / "edge-bundles" / "abc"
