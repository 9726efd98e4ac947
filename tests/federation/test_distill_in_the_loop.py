"""Distillation in a real run: a pruning cycle leads to a distilled student, an edge bundle and one ledger entry.

Three real ClientApps on tiny-bert (LocalGrid), the central node at partition 1.
Plasticity prunes one head (of 8) in round 1 and then stops at its target; the
central node distils the pruned student after that cycle, and again in round 2
(the last round, heads still pruned); in a 3-round run with ``distill_every = 0``
round 2 (no cycle, not the last) distils nothing. Central evaluation runs on the
central node's own held-out data. A crash between round 1's ledger commit and
its checkpoint, then ``--resume``, must not record round 1's student twice.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import sentinel.server.rounds as rounds_module
from sentinel.client.data.federated import federated_split, node_train_val
from sentinel.models.edge_bundle import load_bundle
from sentinel.protos import messages as P
from sentinel.protos.vocabulary import EntryKind
from sentinel.server.central import CentralEvaluator
from sentinel.server.checkpoints import load_state
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid
from sentinel.server.plasticity import MaskedEvaluator

pytestmark = pytest.mark.slow

SETTINGS = dict(
    plasticity=True, prune_every=1, prune_step=0.125, target_sparsity=0.125, prune_vote_share=0.5, prune_rank_share=0.25,
    prune_tolerance=1.0, distill=True, distill_every=0, distill_steps=4, distill_learning_rate=3e-4,
    central_evaluation="central-nodes", rounds=2, token_budget=100,
)


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after the crash point runs."""


def _grid(ids: list[int], keys: Path) -> LocalGrid:
    from sentinel.client.app import app
    from sentinel.client.node import ensure_simulated_keys

    ensure_simulated_keys(keys, 3)
    return LocalGrid({n: app for n in ids}, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(ids)}, node_keys=keys)


def _config(**overrides: object) -> FederationConfig:
    profiles = {
        "edge": RoleProfile(lora_rank=2, local_steps=3, batch_size=8, learning_rate=5e-3),
        "gpu": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
        "central": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
    }
    values = {**SETTINGS, **overrides}
    return FederationConfig(model="tiny-bert", dataset="builtin:reviews?n=360", nodes=3, patience=5, max_length=24, profiles=profiles, **values)


def _students(coordinator: Coordinator) -> list:
    return list(coordinator.ledger.iter_entries(kind=EntryKind.STUDENT_DISTILLED))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("distill") / "run"
    coordinator = Coordinator.build(_config(), out)
    distill_messages: list[int] = []
    real = LocalGrid.send_and_receive

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN202 - records which distill messages crossed the wire
        messages = list(messages)
        distill_messages.extend(int(m.content[P.REC_CONFIG][P.C_ROUND]) for m in messages if m.metadata.message_type == P.MSG_DISTILL)
        return real(self, messages, timeout=timeout)

    mp = pytest.MonkeyPatch()
    mp.setattr(LocalGrid, "send_and_receive", send_and_receive)
    try:
        result = coordinator.run(_grid([1001, 1008, 1015], out / "keys"))
    finally:
        mp.undo()
    return {"out": out, "coordinator": coordinator, "result": result, "distill_messages": distill_messages}


def test_a_pruning_cycle_leads_to_a_distilled_student_whose_bundle_the_ledger_pins(run: dict) -> None:
    coordinator, out = run["coordinator"], run["out"]
    assert run["distill_messages"] == [1, 2]  # after round 1's cycle, and in round 2 (the last) to the one central node
    (cycle,) = list(coordinator.ledger.iter_entries(kind=EntryKind.HEADS_PRUNED))
    entries = _students(coordinator)
    assert [e.payload["round"] for e in entries] == [1, 2]
    assert not list(coordinator.ledger.iter_entries(kind=EntryKind.STUDENT_REJECTED))
    central = next(n for n in run["result"].nodes if n.role == "central")
    for entry in entries:
        p = entry.payload
        assert entry.actor == "coordinator" and p["node"] == central.key_id
        bundle = load_bundle(out / p["bundle"])  # verifies every file's hash against the manifest
        assert p["bundle"] == f"edge-bundle/round-{p['round']}"
        assert bundle.manifest_sha256 == p["manifest_sha256"]
        assert p["pruned_heads"] == cycle.payload["heads"]  # the student of the mask the cycle agreed
        assert sorted(bundle.manifest.architecture["pruned_heads"].items()) == [
            (int(h.split(".")[1]), (int(h.split(".")[3]),)) for h in cycle.payload["heads"]
        ]
        assert p["ffn_widths"] == {}  # the default policy lets no one prune an FFN
        assert p["kl_before"] >= 0 and p["kl_after"] >= 0 and 0 <= p["student_accuracy"] <= 1
        assert p["student_parameters"] < p["teacher_parameters"]
    latest = json.loads((out / "edge-bundle" / "latest.json").read_text())
    assert latest["round"] == 2 and latest["manifest_sha256"] == entries[-1].payload["manifest_sha256"]
    assert coordinator.ledger.verify().ok


def test_rows_and_report_carry_the_students(run: dict) -> None:
    rows = [r for r in run["result"].history if r["round"] > 0]
    assert [r["distilled"]["round"] for r in rows] == [1, 2]
    for row, entry in zip(rows, _students(run["coordinator"]), strict=True):
        assert row["distilled"]["manifest_sha256"] == entry.payload["manifest_sha256"]
        assert row["distilled"]["kl_after"] == entry.payload["kl_after"]
        assert row["distilled"]["latency_ms"] > 0 and "latency_ms" not in entry.payload  # measured, not ledger evidence
        bundle = load_bundle(run["out"] / entry.payload["bundle"]).manifest
        assert entry.payload["model_bytes"] == bundle.model_bytes > 0 and entry.payload["total_bytes"] == bundle.total_bytes
    section = run["coordinator"].report_extra()["students"]
    assert [s["round"] for s in section["distilled"]] == [1, 2] and section["latest"]["bundle"] == "edge-bundle/round-2"
    assert section["settings"]["steps"] == 4


def test_round_accuracy_comes_from_the_central_node_with_the_head_mask(run: dict) -> None:
    result, out = run["result"], run["out"]
    assert [r["evaluated_on"] for r in result.history] == ["central-nodes"] * 3
    config = _config()
    data = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    central_val = node_train_val(data, 1, config.val_fraction, config.seed)[1]
    coordinator = run["coordinator"]
    state = load_state(out / "checkpoint" / "last")
    assert state.head_mask is not None and (state.head_mask == 0).sum() == 1
    expected = MaskedEvaluator(CentralEvaluator(coordinator.base, central_val, config.max_length)).metrics(state)
    assert result.history[-1]["accuracy"] == pytest.approx(expected.accuracy)
    assert result.history[-1]["loss"] == pytest.approx(expected.loss, rel=1e-4)
    assert coordinator.evaluator.metrics(state).num_examples != expected.num_examples  # not the coordinator's test set


def test_a_resumed_run_records_the_student_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_before_checkpoint) -> None:
    out = tmp_path / "crashed"
    config = _config(rounds=3)
    kill_before_checkpoint(1, Crash)
    with pytest.raises(Crash):
        Coordinator.build(config, out).run(_grid([1001, 1008, 1015], out / "keys"))
    monkeypatch.undo()
    resumed = Coordinator.build(config, out)
    result = resumed.run(_grid([2001, 2008, 2015], out / "keys"), resume=True)
    assert Counter(e.payload["round"] for e in _students(resumed)) == {1: 1, 3: 1}  # round 1's was committed before the crash
    assert [s["round"] for s in resumed.report_extra()["students"]["distilled"]] == [1, 3]  # kept across the resume
    assert [("distilled" in r) for r in result.history] == [False, True, False, True]  # round 2: target reached, no cycle
    latest = json.loads((out / "edge-bundle" / "latest.json").read_text())
    assert latest["round"] == 3 and load_bundle(out / latest["bundle"]).manifest_sha256 == latest["manifest_sha256"]
    assert resumed.ledger.verify().ok


def test_a_round_redone_after_a_crash_before_its_commit_distils_once_into_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "crashed-early"
    config = _config(rounds=1, central_evaluation="coordinator")
    real_stage = rounds_module.stage_state

    def stage(state, checkpoint_dir: Path) -> None:  # noqa: ANN001
        raise Crash("killed after round 1's distillation, before its checkpoint and ledger commit")

    monkeypatch.setattr(rounds_module, "stage_state", stage)
    with pytest.raises(Crash):
        Coordinator.build(config, out).run(_grid([1001, 1008, 1015], out / "keys"))
    assert (out / "edge-bundle" / "round-1").is_dir() and not (out / "edge-bundle" / "latest.json").exists()
    monkeypatch.setattr(rounds_module, "stage_state", real_stage)
    resumed = Coordinator.build(config, out)
    resumed.run(_grid([2001, 2008, 2015], out / "keys"), resume=True)
    (entry,) = _students(resumed)  # the crashed round left nothing on the ledger; the redone one records once
    assert entry.payload["round"] == 1
    assert load_bundle(out / "edge-bundle" / "round-1").manifest_sha256 == entry.payload["manifest_sha256"]
    assert json.loads((out / "edge-bundle" / "latest.json").read_text())["manifest_sha256"] == entry.payload["manifest_sha256"]
    assert resumed.ledger.verify().ok


def test_the_edge_node_is_delivered_each_new_bundle_and_answers_from_it(run: dict) -> None:
    from sentinel.client.edge import evaluate_bundle
    from sentinel.models.edge_bundle import BundleRunner

    out, result = run["out"], run["result"]
    edge = next(n for n in result.nodes if n.role == "edge")
    config = _config()
    data = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    val = node_train_val(data, edge.partition_id, config.val_fraction, config.seed)[1]
    rows = [r for r in result.history if r["round"] > 0]
    for row in rows:
        e = row["edge"]
        assert e["manifest_sha256"] == row["distilled"]["manifest_sha256"] and e["bundle_round"] == row["round"]
        assert e["delivered"] == [edge.key_id] and e["bytes_down"] > 0 and e["rejected"] == {}  # a new bundle every round here
        installed = out / "node-bundles" / f"partition-{edge.partition_id}" / e["manifest_sha256"]
        assert load_bundle(installed).manifest_sha256 == e["manifest_sha256"]  # on the node, verified
        expected = evaluate_bundle(BundleRunner(out / row["distilled"]["bundle"]), val)
        assert e["nodes"][edge.key_id]["accuracy"] == pytest.approx(expected.accuracy, abs=1e-12)
    section = run["coordinator"].report_extra()["edge"]
    assert [r["round"] for r in section["rounds"]] == [1, 2] and section["latest"]["round"] == 2
