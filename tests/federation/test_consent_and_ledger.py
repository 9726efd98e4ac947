"""Consent enforcement, signature checks and the ledger, through real federation rounds (in-process grid)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from sentinel.client.adversarial import consent_ignoring_app, scaling_inflating_app, signature_forging_app
from sentinel.client.app import app as honest_app
from sentinel.ledger.kinds import EntryKind
from sentinel.ledger.store import Ledger
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid
from sentinel.server.report import write_report

from tests.federation.conftest import crashing_app

IDS = [1001, 1008, 1015]


def _grid(app: ClientApp, overrides: dict[int, ClientApp] | None = None) -> LocalGrid:
    apps = {n: (overrides or {}).get(i, app) for i, n in enumerate(IDS)}
    return LocalGrid(apps, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(IDS)})


def _run(tiny_config, out: Path, grid: LocalGrid, **overrides):
    config = tiny_config(rounds=1, **overrides)
    coordinator = Coordinator.build(config, out)
    return coordinator, coordinator.run(grid)


def test_honest_nodes_respect_their_permitted_sets(tmp_path: Path, tiny_config) -> None:
    coordinator, result = _run(tiny_config, tmp_path / "honest", _grid(honest_app))
    row = result.history[-1]
    assert row["accepted"] == 3 and row["consent_violations"] == 0
    # The default policy keeps edge nodes off the heads of layers 0-1: all of tiny-bert's heads.
    edge = next(n for n in result.nodes if n.role == "edge")
    assert not any(".head." in c for c in coordinator.governance.governor.permitted_set(str(edge.node_id), "adapt"))


def test_a_node_that_ignores_its_mask_is_rejected_recorded_and_has_no_effect(tmp_path: Path, tiny_config) -> None:
    rogue_coord, rogue = _run(tiny_config, tmp_path / "rogue", _grid(consent_ignoring_app({0})))
    row = rogue.history[-1]
    assert row["consent_violations"] == 1 and row["accepted"] == 2
    bad = next(n for n in row["per_node"] if n["partition_id"] == 0)
    assert not bad["accepted"] and bad["reason"].startswith("consent violation")
    assert bad["offending"] and all(c.startswith("layer.") for c in bad["offending"])

    ledger = rogue_coord.ledger
    violations = list(ledger.iter_entries(kind=EntryKind.CONSENT_VIOLATION))
    assert len(violations) == 1
    assert violations[0].payload["node"] == bad["node_id"]
    assert violations[0].payload["components"] == bad["offending"]
    rejected = list(ledger.iter_entries(kind=EntryKind.UPDATE_REJECTED))
    assert [e.payload["node"] for e in rejected] == [bad["node_id"]]
    assert ledger.verify().ok

    # The rejected update has no effect: same global model as when that node's update never arrives.
    _, absent = _run(tiny_config, tmp_path / "absent", _grid(honest_app, {0: crashing_app()}))
    for module, delta in absent.state.deltas.items():
        np.testing.assert_array_equal(rogue.state.deltas[module], delta)
    for name, value in absent.state.head.items():
        np.testing.assert_array_equal(rogue.state.head[name], value)


def test_forged_signatures_are_rejected(tmp_path: Path, tiny_config) -> None:
    coordinator, result = _run(tiny_config, tmp_path / "forged", _grid(signature_forging_app({2})))
    bad = next(n for n in result.history[-1]["per_node"] if n["partition_id"] == 2)
    assert not bad["accepted"] and bad["reason"].startswith("bad signature")
    # A forged submission never reaches the ledger as the node's own.
    submitted = {e.payload["node"] for e in coordinator.ledger.iter_entries(kind=EntryKind.UPDATE_SUBMITTED)}
    assert bad["node_id"] not in submitted and len(submitted) == 2


def test_ledger_records_the_round_and_report_has_contributions_and_tokens(tmp_path: Path, tiny_config) -> None:
    out = tmp_path / "ledgered"
    coordinator, result = _run(tiny_config, out, _grid(honest_app), token_budget=100)
    ledger = Ledger(f"sqlite:///{out / 'ledger.db'}")  # a read-only auditor's view
    assert ledger.verify().ok
    kinds = [e.kind for e in ledger.iter_entries()]
    for kind in (
        EntryKind.NODE_REGISTERED, EntryKind.ROUND_STARTED, EntryKind.UPDATE_SUBMITTED,
        EntryKind.UPDATE_ACCEPTED, EntryKind.CONTRIBUTION, EntryKind.CHECKPOINT, EntryKind.CONTRACT_CHANGED,
    ):
        assert kind in kinds, kind
    assert kinds.count(EntryKind.NODE_REGISTERED) == 3
    # Every submission carries the node's own signature, verified against its registered key.
    subs = list(ledger.iter_entries(kind=EntryKind.UPDATE_SUBMITTED))
    assert len(subs) == 3 and all(e.node_signature for e in subs)
    assert ledger.verify(node_signatures=True).ok

    report = write_report(out, coordinator.config, result, coordinator.report_extra())
    per_node = report["ledger"]["per_node"]
    assert report["ledger"]["verified"]
    scores = result.history[-1]["contributions"]
    assert set(scores) == {n.key_id for n in result.nodes}  # nodes are their keys, not Flower ids
    balances = ledger.balances()
    assert sum(balances.values()) in (0, 100)  # nothing is paid when no update helped
    for node, totals in per_node.items():
        assert totals["tokens"] == balances.get(node, 0)
    # Tokens go in proportion to positive contribution.
    positive = {n: s for n, s in scores.items() if s > 0}
    if positive:
        best = max(positive, key=positive.get)
        assert balances[best] == max(balances.values())
    assert json.loads((out / "report.json").read_text())["ledger"]["entries"] == ledger.count()


def test_a_node_cannot_amplify_its_update_by_claiming_a_larger_scaling(tmp_path: Path, tiny_config) -> None:
    _, result = _run(tiny_config, tmp_path / "inflated", _grid(scaling_inflating_app({2})))
    bad = next(n for n in result.history[-1]["per_node"] if n["partition_id"] == 2)
    assert not bad["accepted"] and bad["reason"].startswith("wrong LoRA scaling")
    _, absent = _run(tiny_config, tmp_path / "absent", _grid(honest_app, {2: crashing_app()}))
    for module, delta in absent.state.deltas.items():
        np.testing.assert_array_equal(result.state.deltas[module], delta)


def test_a_malformed_reply_is_rejected_with_its_reason_not_a_crash(tmp_path: Path, tiny_config) -> None:
    def drops_metrics(msg: Message, context: Context) -> Message:
        reply = honest_app(msg, context)
        if msg.metadata.message_type == "train":
            del reply.content["metrics"]
        return reply

    coordinator, result = _run(tiny_config, tmp_path / "malformed", _grid(honest_app, {1: drops_metrics}))
    row = result.history[-1]
    assert row["rejected"] == 1 and row["accepted"] == 2
    assert result.state.round == 1
    rejected = [e for e in coordinator.ledger.iter_entries(kind=EntryKind.UPDATE_REJECTED)]
    second = next(n.key_id for n in result.nodes if n.node_id == IDS[1])
    assert [(e.payload["node"], e.payload["reason"]) for e in rejected] == [(second, "malformed reply: reply has no `metrics` record")]


def test_shapley_contributions_are_recorded_with_their_method(tmp_path: Path, tiny_config) -> None:
    coordinator, result = _run(tiny_config, tmp_path / "shapley", _grid(honest_app), contribution="shapley", shapley_permutations=4)
    entries = list(coordinator.ledger.iter_entries(kind=EntryKind.CONTRIBUTION))
    assert {e.payload["method"] for e in entries} == {"shapley"}
    assert {e.payload["node"] for e in entries} == {n.key_id for n in result.nodes}
    scores = result.history[-1]["contributions"]
    # Efficiency: every sampled permutation's marginal gains telescope, so the values add up
    # exactly to U(all) − U(none): the round's loss improvement on the scoring set.
    from sentinel.server.central import CentralEvaluator

    scoring = CentralEvaluator(coordinator.base, coordinator.evaluator.test[: coordinator.config.contribution_examples], coordinator.config.max_length)
    _, loss_before = scoring(coordinator.starting_state(resume=False))
    _, loss_after = scoring(result.state)
    assert sum(scores.values()) == pytest.approx(loss_before - loss_after, abs=1e-6)


def test_no_contribution_scoring_when_disabled(tmp_path: Path, tiny_config) -> None:
    coordinator, result = _run(tiny_config, tmp_path / "none", _grid(honest_app), contribution="none")
    assert list(coordinator.ledger.iter_entries(kind=EntryKind.CONTRIBUTION)) == []
    assert result.history[-1]["contributions"] == {}
