"""An edge node with an edge bundle answers evaluation from onnxruntime, through a real Flower message path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from sentinel.client.app import app as client_app
from sentinel.client.data.federated import federated_split, node_train_val
from sentinel.client.edge import evaluate_bundle
from sentinel.models.components import model_layout
from sentinel.models.edge_bundle import BundleRunner, load_bundle
from sentinel.models.edge_export import export_bundle
from sentinel.models.global_model import materialise
from sentinel.models.loading import load_base_model
from sentinel.models.student import build_student
from sentinel.protos import messages as P
from sentinel.server.central import initial_state
from sentinel.server.central_nodes import parse_evaluation_reply
from sentinel.server.distillation import exact_view_record
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.state import GlobalState
from sentinel.server.strategy import SentinelStrategy

ROLES = ("edge", "edge", "gpu")
IDS = (701, 702, 703)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):  # noqa: ANN001, ANN201
    from tests.federation.conftest import tiny_config

    config = tiny_config(roles=list(ROLES))
    data = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    base = load_base_model(config.model, num_labels=data.num_labels, seed=config.seed)
    start = initial_state(base)
    rng = np.random.default_rng(5)
    state = GlobalState(
        deltas={m: rng.normal(scale=0.05, size=d.shape).astype(np.float32) for m, d in start.deltas.items()},
        head={k: (v + rng.normal(scale=1.0, size=v.shape)).astype(np.float32) for k, v in start.head.items()},
        round=1,
    )
    layout = model_layout(base.model)
    mask = np.ones((layout.num_layers, layout.num_heads), dtype=np.float32)
    mask[0, 1] = 0.0
    student = build_student(materialise(base, state.deltas, state.head), mask, ffn_layers=[1], ffn_keep=0.5).model
    bundle = export_bundle(student, base.tokenizer, tmp_path_factory.mktemp("edge") / "bundle", name=config.model, max_length=config.max_length)
    grid = LocalGrid(
        {n: client_app for n in IDS},
        {
            IDS[0]: {"partition-id": 0, "num-partitions": 3, "role": "edge", "device": "cpu", P.NODE_EDGE_BUNDLE: str(bundle)},
            IDS[1]: {"partition-id": 1, "num-partitions": 3, "role": "edge", "device": "cpu"},  # no bundle: torch
            IDS[2]: {"partition-id": 2, "num-partitions": 3, "role": "gpu", "device": "cpu", P.NODE_EDGE_BUNDLE: str(bundle)},
        },
    )
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    nodes = [NodeInfo(n, i, ROLES[i]) for i, n in enumerate(IDS)]
    messages = [
        Message(
            content=RecordDict({P.REC_ARRAYS: exact_view_record(state), P.REC_CONFIG: strategy.node_config(node, 1)}),
            message_type=P.MSG_EVALUATE,
            dst_node_id=node.node_id,
        )
        for node in nodes
    ]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages)}
    return dict(config=config, data=data, base=base, state=state, bundle=Path(bundle), replies=replies)


def test_an_edge_node_with_a_bundle_answers_evaluation_from_onnxruntime(setup) -> None:  # noqa: ANN001
    config, bundle = setup["config"], setup["bundle"]
    reply = setup["replies"][IDS[0]]
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    evaluator = reply.content[P.REC_EVALUATOR]
    assert evaluator[P.E_RUNTIME] == P.RUNTIME_ONNX and evaluator[P.E_BUNDLE_SHA256] == load_bundle(bundle).manifest_sha256
    _, val = node_train_val(setup["data"], 0, config.val_fraction, config.seed)
    expected = evaluate_bundle(BundleRunner(bundle), val)  # the bundle's own evaluation of the node's held-out data
    metrics = dict(reply.content[P.REC_METRICS])
    assert metrics[P.M_EXAMPLES] == expected.num_examples == len(val)
    assert metrics[P.M_ACCURACY] == pytest.approx(expected.accuracy, abs=1e-12)
    assert metrics[P.M_LOSS] == pytest.approx(expected.loss, rel=1e-9)
    assert metrics[P.M_ECE] == pytest.approx(expected.ece, abs=1e-12)
    assert {k[len(P.M_DOMAIN_ACCURACY):]: v for k, v in metrics.items() if k.startswith(P.M_DOMAIN_ACCURACY)} == pytest.approx(expected.per_domain)
    assert P.M_KL_BASE not in metrics  # the bundle has no base model to compare with


def test_nodes_without_a_bundle_or_not_edge_answer_from_the_torch_global_model(setup) -> None:  # noqa: ANN001
    for node_id in IDS[1:]:
        reply = setup["replies"][node_id]
        assert reply.content[P.REC_EVALUATOR][P.E_RUNTIME] == P.RUNTIME_TORCH
        checked = parse_evaluation_reply(reply)  # the coordinator's strict parse accepts an honest torch reply
        assert checked.metrics.kl_from_base is not None and checked.metrics.kl_from_base > 0
    # On the same examples, the global model (torch) scores differently from the pruned, narrowed bundle:
    # the edge node's reply is the bundle's, not the global model's.
    from sentinel.server.central import CentralEvaluator

    config = setup["config"]
    _, val = node_train_val(setup["data"], 0, config.val_fraction, config.seed)
    global_loss = CentralEvaluator(setup["base"], val, config.max_length).metrics(setup["state"]).loss
    edge_loss = dict(setup["replies"][IDS[0]].content[P.REC_METRICS])[P.M_LOSS]
    assert abs(edge_loss - global_loss) > 1e-4


def test_a_bundle_reply_is_not_taken_as_central_evaluation(setup) -> None:  # noqa: ANN001
    from sentinel.server.replies import MalformedReplyError

    with pytest.raises(MalformedReplyError, match="runtime"):
        parse_evaluation_reply(setup["replies"][IDS[0]])


@pytest.mark.slow  # starts Flower's simulation runtime (Ray)
def test_edge_nodes_in_a_flower_simulation_answer_evaluation_from_the_bundle(setup, tmp_path: Path) -> None:  # noqa: ANN001
    """The same through Flower's simulation engine: messages serialised, ClientApps in Ray workers."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from sentinel.client.node import SIMULATED_KEYS, SimulatedNodeApp, ensure_simulated_keys
    from sentinel.server.handshake import discover_nodes
    from sentinel.server.simulate import quiet_flower, run_simulation_engine

    from tests.federation.conftest import tiny_config

    config = tiny_config(roles=["edge", "edge", "edge"])
    bundle = setup["bundle"]
    state = initial_state(setup["base"])
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    holder: dict[int, tuple[dict, dict]] = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        # The run's own deadline, not a short one: on a loaded machine Ray's nodes are slow to answer.
        nodes = discover_nodes(grid, config, config.timeout_s).nodes
        messages = [
            Message(
                content=RecordDict({P.REC_ARRAYS: exact_view_record(state), P.REC_CONFIG: strategy.node_config(node, 1)}),
                message_type=P.MSG_EVALUATE,
                dst_node_id=node.node_id,
            )
            for node in nodes
        ]
        by_id = {n.node_id: n for n in nodes}
        for reply in grid.send_and_receive(messages, timeout=300):
            node = by_id[reply.metadata.src_node_id]
            holder[node.partition_id] = (dict(reply.content[P.REC_METRICS]), dict(reply.content[P.REC_EVALUATOR]))

    keys = ensure_simulated_keys(tmp_path / "keys", config.nodes)
    node_app = SimulatedNodeApp(client_app, {SIMULATED_KEYS: str(keys), "role": "edge", P.NODE_EDGE_BUNDLE: str(bundle)})
    quiet_flower()
    run_simulation_engine(server_app, node_app, config.nodes, {})
    assert sorted(holder) == [0, 1, 2]
    runner = BundleRunner(bundle)
    for partition, (metrics, evaluator) in holder.items():
        assert evaluator[P.E_RUNTIME] == P.RUNTIME_ONNX
        _, val = node_train_val(setup["data"], partition, config.val_fraction, config.seed)
        expected = evaluate_bundle(runner, val)
        assert metrics[P.M_EXAMPLES] == expected.num_examples
        assert metrics[P.M_ACCURACY] == pytest.approx(expected.accuracy, abs=1e-12)
        assert metrics[P.M_LOSS] == pytest.approx(expected.loss, rel=1e-9)
        assert metrics[P.M_ECE] == pytest.approx(expected.ece, abs=1e-12)
