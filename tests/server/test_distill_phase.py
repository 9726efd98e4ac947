"""When the round loop distils, and which FFN layers the student may narrow (``server.distill_phase``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sentinel.server.config import FederationConfig
from sentinel.server.distill_phase import DistillationPhase, bundle_dir_of
from sentinel.server.outcome import NodeInfo
from sentinel.server.state import GlobalState

NODES = [NodeInfo(11, 0, "edge", "a"), NodeInfo(12, 1, "central", "b"), NodeInfo(13, 2, "central", "c")]


def _phase(tmp_path: Path, may=None, **config: object) -> DistillationPhase:  # noqa: ANN001
    phase = DistillationPhase(
        FederationConfig(distill=True, **config), None, tmp_path, lambda node, rnd: None, num_layers=3, may=may  # type: ignore[arg-type]
    )
    phase.on_nodes(NODES)
    return phase


def _state(pruned: bool) -> GlobalState:
    mask = np.ones((3, 4), dtype=np.float32)
    if pruned:
        mask[1, 2] = 0.0
    return GlobalState({}, {}, mask if pruned else None, 0)


def test_distillation_is_due_after_a_cycle_and_periodically_or_last_while_heads_are_pruned(tmp_path: Path) -> None:
    phase = _phase(tmp_path, rounds=10, distill_every=4)
    assert phase.due(3, _state(pruned=True), pruned_this_round=True)  # a cycle was accepted now
    assert not phase.due(3, _state(pruned=True), pruned_this_round=False)
    assert phase.due(4, _state(pruned=True), pruned_this_round=False)  # periodic
    assert not phase.due(4, _state(pruned=False), pruned_this_round=False)  # nothing pruned: the student is the teacher
    assert phase.due(10, _state(pruned=True), pruned_this_round=False)  # the run's last round
    assert not _phase(tmp_path, rounds=10).due(4, _state(pruned=True), pruned_this_round=False)  # distill_every 0: off
    assert _phase(tmp_path, rounds=10, distill_ffn_keep=0.5).due(10, _state(pruned=False), pruned_this_round=False)  # FFN only
    phase.on_nodes([n for n in NODES if n.role != "central"])
    assert not phase.due(3, _state(pruned=True), pruned_this_round=True)  # no central node to distil


def test_the_student_narrows_only_ffn_layers_every_central_node_may_prune(tmp_path: Path) -> None:
    asked: list[tuple[str, str, str]] = []

    def may(node: str, operation: str, component: str) -> bool:
        asked.append((node, operation, component))
        return not (node == NODES[2].key_id and component == "layer.1.ffn")

    assert _phase(tmp_path, may=may).ffn_layers() == []  # ffn_keep 1: no narrowing, consent not even asked
    assert asked == []
    assert _phase(tmp_path, may=may, distill_ffn_keep=0.5).ffn_layers() == [0, 2]  # one central node refuses layer 1
    assert {(op, node) for node, op, _ in asked} == {("prune", NODES[1].key_id), ("prune", NODES[2].key_id)}
    assert _phase(tmp_path, distill_ffn_keep=0.5).ffn_layers() == [0, 1, 2]  # a run without consent


def test_restore_and_report_keep_the_students(tmp_path: Path) -> None:
    phase = _phase(tmp_path)
    students = [{"round": 2, "bundle": "edge-bundle/round-2", "manifest_sha256": "ab"}, {"round": 4, "bundle": None, "rejected": {}}]
    phase.restore({"students": students})
    assert phase.checkpoint_meta() == {"students": students}
    report = phase.report()["students"]
    assert report["latest"]["round"] == 2 and len(report["distilled"]) == 2  # the latest *exported* student
    phase.restore({})
    assert phase.report()["students"]["latest"] is None
    assert bundle_dir_of(tmp_path, 7) == tmp_path / "edge-bundle" / "round-7"


def test_a_central_nodes_evaluation_is_bounded_by_its_validation_split_or_its_declared_size(tmp_path: Path) -> None:
    from sentinel.client.data.federated import federated_split, node_train_val
    from sentinel.server.coordinator import Coordinator

    from tests.federation.conftest import tiny_config

    config = tiny_config()
    coordinator = Coordinator.build(config, tmp_path / "run", accountable=False)
    data = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    central = NodeInfo(12, 1, "central", "b")
    assert coordinator._max_val_examples(central) == len(node_train_val(data, 1, config.val_fraction, config.seed)[1]) > 0
    assert coordinator._max_val_examples(NodeInfo(12, 9, "central", "b")) == 0  # a partition the coordinator does not know
    assert coordinator._max_val_examples(NodeInfo(12, 1, "central", "b", declared_examples=40, own_data=True)) == 40
