"""``train.distill`` through a real Flower message path: central nodes distil, others refuse, the coordinator checks and exports.

Tiny-bert on LocalGrid (real ClientApps in-process): the central node distils
the global model (all heads) into the student the global head mask and the
FFN consent describe, on its own texts; the coordinator checks the reply
against what it sent and exports the student as the edge bundle, whose
onnxruntime outputs match the torch student.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from flwr.app import Message
from sentinel.client.app import app as client_app
from sentinel.client.data.federated import federated_split
from sentinel.client.node import simulated_node_key
from sentinel.ledger.crypto import public_key_b64
from sentinel.models.components import model_layout
from sentinel.models.edge_bundle import BundleRunner, load_bundle
from sentinel.models.ffn import widths_for
from sentinel.models.global_model import materialise
from sentinel.models.loading import load_base_model
from sentinel.models.student import load_student
from sentinel.protos import messages as P
from sentinel.protos.records import to_array_record
from sentinel.server.central import initial_state
from sentinel.server.distillation import (
    DistillSettings,
    check_distill_reply,
    configure_distill,
    distill_on_central_nodes,
)
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.replies import MalformedReplyError
from sentinel.server.state import GlobalState
from sentinel.server.strategy import SentinelStrategy

ROLES = ("edge", "central", "gpu")
IDS = (501, 502, 503)
SETTINGS = DistillSettings(steps=40, learning_rate=3e-4, temperature=2.0, ffn_keep=0.25)


@pytest.fixture(scope="module")
def federation(tiny_config_module):  # noqa: ANN001, ANN201
    config = tiny_config_module()
    grid = LocalGrid(
        {n: client_app for n in IDS},
        {n: {"partition-id": i, "num-partitions": 3, "role": ROLES[i], "device": "cpu"} for i, n in enumerate(IDS)},
    )
    data = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    base = load_base_model(config.model, num_labels=data.num_labels, seed=config.seed)
    start = initial_state(base)
    rng = np.random.default_rng(3)
    layout = model_layout(base.model)
    mask = np.ones((layout.num_layers, layout.num_heads), dtype=np.float32)
    mask[0, :3] = 0.0  # three of four heads per layer
    mask[1, 1:] = 0.0
    # A random tiny-bert answers the same for every text (and does not learn this task in a test's time);
    # a large random global ΔW and head make the teacher's outputs depend on the input, so the pruned
    # student starts measurably away from it and distillation has something to learn.
    state = GlobalState(
        deltas={m: rng.normal(scale=0.4, size=(4, d.shape[1])).astype(np.float32) for m, d in start.deltas.items()},
        head={k: (v + rng.normal(scale=3.0, size=v.shape)).astype(np.float32) for k, v in start.head.items()},
        head_mask=mask,
        round=2,
    )
    state.deltas = {m: rng.normal(scale=0.4, size=(d.shape[0], 4)).astype(np.float32) @ state.deltas[m] for m, d in start.deltas.items()}
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    keys = [public_key_b64(simulated_node_key(grid.node_keys, i)) for i in range(len(IDS))]
    nodes = [NodeInfo(n, i, ROLES[i], keys[i]) for i, n in enumerate(IDS)]
    return dict(config=config, grid=grid, base=base, state=state, strategy=strategy, nodes=nodes, mask=mask)


@pytest.fixture(scope="module")
def tiny_config_module():  # noqa: ANN201
    from tests.federation.conftest import tiny_config

    return tiny_config


@pytest.fixture(scope="module")
def distilled(federation, tmp_path_factory):  # noqa: ANN001, ANN201
    f = federation
    bundle = tmp_path_factory.mktemp("edge") / "bundle"
    result = distill_on_central_nodes(
        f["grid"], 3, f["state"], f["nodes"], lambda n: f["strategy"].node_config(n, 3), f["base"], bundle, SETTINGS,
        ffn_layers=[0],
    )
    return result, bundle


def test_the_central_node_distils_the_student_the_mask_and_consent_describe(federation, distilled) -> None:  # noqa: ANN001
    result, _ = distilled
    assert not result.rejected, result.rejected
    chosen = result.chosen
    assert chosen is not None and chosen.node.role == "central" and len(result.replies) == 1
    assert {k: list(v) for k, v in chosen.spec.pruned_heads.items()} == {0: [0, 1, 2], 1: [1, 2, 3]}
    teacher = materialise(federation["base"], federation["state"].deltas, federation["state"].head)
    assert chosen.spec.ffn_widths == widths_for(teacher, [0], SETTINGS.ffn_keep)  # layer 1 is not permitted: full width
    m = chosen.metrics
    assert not m.reverted and m.kl_after < 0.75 * m.kl_before  # distillation brought the student closer on held-out data
    assert m.student_parameters < m.teacher_parameters and m.steps == SETTINGS.steps
    assert not any("word_embeddings" in k for k in chosen.arrays)  # frozen: the coordinator has the teacher's


def test_the_exported_bundle_is_the_torch_student_under_onnxruntime(federation, distilled) -> None:  # noqa: ANN001
    result, bundle = distilled
    exported = result.exported
    assert exported is not None and exported.manifest_sha256 == load_bundle(bundle).manifest_sha256  # hashes verified
    manifest = load_bundle(bundle).manifest
    assert manifest.num_parameters == exported.student_parameters < manifest.teacher_parameters
    assert manifest.architecture["pruned_heads"] == {0: (0, 1, 2), 1: (1, 2, 3)}
    base, state = federation["base"], federation["state"]
    student = load_student(materialise(base, state.deltas, state.head), result.chosen.spec, result.chosen.arrays)
    texts = ["the battery lasts all day", "it broke after a week and support never answered", "fine"]
    runner = BundleRunner(bundle)
    enc = base.tokenizer(texts, padding=True, truncation=True, max_length=manifest.max_length, return_tensors="pt")
    with torch.no_grad():
        expected = student(**enc).logits.numpy()
    np.testing.assert_allclose(runner.logits(texts), expected, atol=1e-4)


def test_only_central_nodes_accept_distillation(federation) -> None:  # noqa: ANN001
    f = federation
    # The coordinator (wrongly) calls the edge and gpu nodes central: their own node config says otherwise.
    impostors = [NodeInfo(n.node_id, n.partition_id, "central", n.public_key) for n in f["nodes"] if n.role != "central"]
    plan = configure_distill(3, f["state"], impostors, lambda n: f["strategy"].node_config(n, 3), SETTINGS, [0])
    replies = list(f["grid"].send_and_receive(plan.messages))
    assert len(replies) == 2 and all(r.has_error() for r in replies)
    assert all("central nodes" in r.error.reason for r in replies)
    with pytest.raises(MalformedReplyError, match="error"):
        check_distill_reply(replies[0], plan, f["base"], f["state"])
    # A plan never sends distillation to a node the coordinator knows is not central.
    assert configure_distill(3, f["state"], [f["nodes"][0], f["nodes"][2]], lambda n: f["strategy"].node_config(n, 3), SETTINGS).messages == []


def _tampered(reply: Message, **changes: object) -> Message:
    bad = copy.deepcopy(reply)
    if "arrays" in changes:
        bad.content[P.REC_ARRAYS] = to_array_record(changes["arrays"])
    if "spec" in changes:
        bad.content[P.REC_STUDENT][P.S_SPEC] = changes["spec"]
    if "metrics" in changes:
        for k, v in changes["metrics"].items():
            bad.content[P.REC_METRICS][k] = v
    return bad


def test_the_coordinator_checks_every_part_of_a_distill_reply(federation) -> None:  # noqa: ANN001
    f = federation
    central = [n for n in f["nodes"] if n.role == "central"]
    settings = DistillSettings(steps=2, learning_rate=1e-3, ffn_keep=0.5)
    plan = configure_distill(4, f["state"], central, lambda n: f["strategy"].node_config(n, 4), settings, [0])
    (reply,) = f["grid"].send_and_receive(plan.messages)
    good = check_distill_reply(reply, plan, f["base"], f["state"])
    name = next(k for k in good.arrays if k.endswith("intermediate.dense.weight") and ".0." in k)
    spec = good.spec.model_dump()
    cases = {
        "shape": _tampered(reply, arrays={**good.arrays, name: np.zeros((3, 3), np.float32)}),
        "non-finite": _tampered(reply, arrays={**good.arrays, name: np.full_like(good.arrays[name], np.nan)}),
        "not a weight": _tampered(reply, arrays={**good.arrays, "backdoor.weight": np.zeros(2, np.float32)}),
        "float32": _tampered(reply, arrays={**good.arrays, name: good.arrays[name].astype(np.float64)}),
        "prunes heads": _tampered(reply, spec=good.spec.model_copy(update={"pruned_heads": {0: (0, 1)}}).model_dump_json()),
        "consent does not allow": _tampered(
            reply, spec=good.spec.model_copy(update={"ffn_neurons": {**spec["ffn_neurons"], 1: (0, 1)}}).model_dump_json()
        ),
        "signature": _tampered(reply, arrays={**good.arrays, name: good.arrays[name] + np.float32(0.01)}),
        "kl-after": _tampered(reply, metrics={P.M_KL_AFTER: float("nan")}),
        "student-accuracy": _tampered(reply, metrics={P.M_STUDENT_ACCURACY: 1.5}),
        "steps": _tampered(reply, metrics={P.M_DISTILL_STEPS: 999}),
    }
    for why, bad in cases.items():
        with pytest.raises(MalformedReplyError, match=why):
            check_distill_reply(bad, plan, f["base"], f["state"])
    # Another node's key cannot vouch for this student.
    other = {node_id: NodeInfo(n.node_id, n.partition_id, n.role, f["nodes"][0].public_key) for node_id, n in plan.nodes.items()}
    with pytest.raises(MalformedReplyError, match="signature"):
        check_distill_reply(reply, dataclasses.replace(plan, nodes=other), f["base"], f["state"])


def test_components_consent_does_not_let_the_node_distill_keep_the_teachers_weights(federation) -> None:  # noqa: ANN001
    f = federation
    central = [n for n in f["nodes"] if n.role == "central"]
    forbidden = ["classifier", "layer.1.ffn", "layer.0.head.3"]  # a kept head of layer 0: its projections are shared
    settings = DistillSettings(steps=3, learning_rate=1e-3)
    plan = configure_distill(5, f["state"], central, lambda n: f["strategy"].node_config(n, 5), settings, frozen_of=lambda n: forbidden)
    assert list(plan.messages[0].content[P.REC_CONFIG][P.C_DISTILL_FROZEN]) == sorted(forbidden)
    (reply,) = f["grid"].send_and_receive(plan.messages)
    good = check_distill_reply(reply, plan, f["base"], f["state"])
    names = set(good.arrays)
    assert not any(k.startswith(("classifier.", "bert.pooler.")) for k in names)  # outside the layers: the classifier's
    assert not any(".layer.1." in k and (".intermediate." in k or k.endswith("output.dense.weight") and "attention" not in k) for k in names)
    assert not any(".layer.0.attention.self." in k or ".layer.0.attention.output.dense." in k for k in names)  # head 3's layer
    assert any(".layer.1.attention.self.query." in k for k in names) and any(".layer.0.intermediate." in k for k in names)
    teacher = materialise(f["base"], f["state"].deltas, f["state"].head)
    student = load_student(teacher, good.spec, good.arrays)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)  # the teacher's, exactly
    # A reply that changes a frozen component anyway is refused, naming it.
    classifier = {"classifier.weight": student.classifier.weight.detach().numpy() + np.float32(0.5)}
    with pytest.raises(MalformedReplyError, match="may not distill"):
        check_distill_reply(_tampered(reply, arrays={**good.arrays, **classifier}), plan, f["base"], f["state"])


def test_a_central_node_that_may_distill_nothing_is_not_asked_and_the_decision_says_why(federation, tmp_path) -> None:  # noqa: ANN001
    from sentinel.models.components import list_components
    from sentinel.server.distill_phase import DistillationPhase

    f = federation
    config = f["config"].model_copy(update={"distill": True, "distill_steps": 2})
    records: list[tuple[object, dict]] = []
    phase = DistillationPhase(
        config, f["base"], tmp_path, f["strategy"].node_config, 2, may=lambda node, op, c: op != "distill",
        record=lambda kind, payload: records.append((kind, payload)), require_signature=False,
    )
    phase.on_nodes(f["nodes"])
    assert phase.frozen_of(f["nodes"][1]) == list_components(f["base"].model) and phase.distillers() == []
    sent: list[Message] = []
    real = f["grid"].send_and_receive
    f["grid"].send_and_receive = lambda messages, **kw: sent.extend(messages) or real(messages, **kw)  # type: ignore[method-assign]
    try:
        result = phase.run(f["grid"], 6, f["state"])
    finally:
        del f["grid"].send_and_receive
    assert sent == [] and result.chosen is None
    ((kind, payload),) = records
    assert kind.value == "student_rejected" and "distill no component" in payload["rejected"][f["nodes"][1].key_id]
