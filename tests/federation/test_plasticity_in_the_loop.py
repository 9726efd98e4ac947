"""Federated plasticity in a real run: heads pruned by consensus reach the nodes, the ledger and the report, once.

Three real ClientApps on tiny-bert (LocalGrid). Pruning runs every round with a
tolerance that keeps every cycle, so each round prunes one head (of 8) until a
quarter are gone. A crash between round 3's ledger commit and its checkpoint,
then ``--resume``, must record every decision once and continue with the same
global importance as a run that never stopped.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sentinel.protos import messages as P
from sentinel.protos.vocabulary import EntryKind, parse_component
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid

pytestmark = pytest.mark.slow

PLASTICITY = dict(
    plasticity=True, prune_every=1, prune_step=0.125, target_sparsity=0.25, prune_vote_share=0.5, prune_rank_share=0.25,
    prune_tolerance=1.0, rounds=3, token_budget=100,
)


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after the crash point runs."""


def _grid(ids: list[int], keys: Path) -> LocalGrid:
    from sentinel.client.app import app
    from sentinel.client.node import ensure_simulated_keys

    ensure_simulated_keys(keys, 3)
    return LocalGrid({n: app for n in ids}, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(ids)}, node_keys=keys)


def _config() -> FederationConfig:
    """The federation tests' tiny run (tests/federation/conftest.py) with plasticity on."""
    profiles = {
        "edge": RoleProfile(lora_rank=2, local_steps=3, batch_size=8, learning_rate=5e-3),
        "gpu": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
        "central": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
    }
    return FederationConfig(
        model="tiny-bert", dataset="builtin:reviews?n=360", nodes=3, patience=5, max_length=24, profiles=profiles, **PLASTICITY
    )


def _meta(out: Path) -> dict:
    return json.loads((out / "checkpoint" / "last" / "state.json").read_text())["meta"]


def _decisions(coordinator: Coordinator) -> list:
    return list(coordinator.ledger.iter_entries(kind=EntryKind.HEADS_PRUNED))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("plasticity") / "full"
    coordinator = Coordinator.build(_config(), out)
    sent: list[tuple[int, np.ndarray | None]] = []
    replies: list[tuple[int, dict[str, np.ndarray]]] = []
    real = LocalGrid.send_and_receive

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN202 - records what crossed the wire
        messages = list(messages)
        answers = list(real(self, messages, timeout=timeout))
        train = [m for m in messages if m.metadata.message_type == P.MSG_TRAIN]
        for m in train:
            arrays = m.content[P.REC_ARRAYS]
            sent.append((int(m.content[P.REC_CONFIG][P.C_ROUND]), arrays[P.KEY_HEAD_MASK].numpy() if P.KEY_HEAD_MASK in arrays else None))
        if train:
            rnd = int(train[0].content[P.REC_CONFIG][P.C_ROUND])
            replies.extend((rnd, {k: v.numpy() for k, v in a.content[P.REC_ARRAYS].items()}) for a in answers if a.has_content() and P.REC_ARRAYS in a.content)
        return answers

    mp = pytest.MonkeyPatch()
    mp.setattr(LocalGrid, "send_and_receive", send_and_receive)
    try:
        result = coordinator.run(_grid([1001, 1008, 1015], out / "keys"))
    finally:
        mp.undo()
    return {"out": out, "coordinator": coordinator, "result": result, "sent": sent, "replies": replies}


def test_consensus_pruning_reaches_the_ledger_the_checkpoint_and_the_next_rounds_nodes(uninterrupted: dict) -> None:
    coordinator, out = uninterrupted["coordinator"], uninterrupted["out"]
    decisions = _decisions(coordinator)
    assert [e.payload["round"] for e in decisions] == [1, 2]  # one head per cycle, up to a quarter of 8
    pruned = [h for e in decisions for h in e.payload["heads"]]
    assert len(set(pruned)) == 2
    for entry in decisions:  # the evidence a decision rests on is on the record
        assert entry.actor == "coordinator"
        assert set(entry.payload["evaluation_before"]) == {"accuracy", "loss"}
        for head in entry.payload["heads"]:
            evidence = entry.payload["evidence"][head]
            assert evidence["votes"] >= 0.5 * evidence["electorate"] > 0
    assert len(_meta(out)["plasticity"]["cycles"]) == 2
    from sentinel.server.checkpoints import load_state

    state = load_state(out / "checkpoint" / "last")
    zeros = {f"layer.{layer}.head.{h}" for layer, h in zip(*np.nonzero(state.head_mask == 0), strict=True)}
    assert zeros == set(pruned)
    # Round 1's nodes got no mask; round 3's got the mask of both cycles, and trained no pruned head.
    by_round = {rnd: m for rnd, m in uninterrupted["sent"]}
    assert by_round[1] is None
    np.testing.assert_array_equal(by_round[3], state.head_mask)
    round3 = [arrays for rnd, arrays in uninterrupted["replies"] if rnd == 3]
    assert len(round3) == 3
    for arrays in round3:
        for head in pruned:
            ref = parse_component(head)
            key = f"base_model.model.bert.encoder.layer.{ref.layer}.attention.self.query.lora_B.weight"
            d = arrays[key].shape[0] // 4
            assert not arrays[key][ref.head * d : (ref.head + 1) * d].any()  # a gated head's q rows never move


def test_rows_and_report_carry_plasticity(uninterrupted: dict) -> None:
    result, coordinator = uninterrupted["result"], uninterrupted["coordinator"]
    rows = [r for r in result.history if r["round"] > 0]
    assert [r["pruned_heads"] for r in rows] == [1, 2, 2]
    assert [r["sparsity"] for r in rows] == [0.125, 0.25, 0.25]
    assert rows[0]["plasticity"]["event"] == EntryKind.HEADS_PRUNED
    section = coordinator.report_extra()["plasticity"]
    assert section["cycles"] == 2 and section["sparsity"] == 0.25 and len(section["pruned"]) == 2
    assert np.shape(section["importance"]["values"]) == (2, 4)


def test_a_default_run_has_no_plasticity(tiny_config) -> None:  # noqa: ANN001
    assert FederationConfig().plasticity is False
    assert tiny_config().plasticity is False


def test_a_resumed_run_records_each_decision_once_and_keeps_the_global_importance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict, kill_before_checkpoint
) -> None:
    out = tmp_path / "crashed"
    config = _config()
    kill_before_checkpoint(2, Crash)
    with pytest.raises(Crash):
        Coordinator.build(config, out).run(_grid([1001, 1008, 1015], out / "keys"))
    monkeypatch.undo()
    resumed = Coordinator.build(config, out)
    resumed.run(_grid([2001, 2008, 2015], out / "keys"), resume=True)
    kinds = Counter(e.payload["round"] for e in _decisions(resumed))
    assert kinds == {1: 1, 2: 1}  # round 2's decision was committed before the crash and is not made again
    full = _meta(uninterrupted["out"])["plasticity"]
    got = _meta(out)["plasticity"]
    assert got["importance"] == full["importance"]
    assert got["cycles"] == full["cycles"]
    assert resumed.ledger.verify().ok
