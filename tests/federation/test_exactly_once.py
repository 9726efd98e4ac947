"""A crashed coordinator resumes without recording anything twice, and decides as an uninterrupted run does.

The crash is injected at the two moments that matter: while a round trains
(nothing of the round is durable yet) and between the round's ledger commit
and its checkpoint being put in force. In both cases the resumed run must keep
every node's identity (one ``node_registered`` per node), record each round
once, pay each round's tokens once, and end with the same balances, reputation
and agency state as a run that never stopped.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from sentinel.ledger.kinds import EntryKind
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid

IDS = [1001, 1008, 1015]
RESUMED_IDS = [2001, 2008, 2015]  # Flower ids change on restart; identities must not


class Crash(BaseException):
    """Stands in for SIGKILL: nothing after the crash point runs."""


def _grid(ids: list[int], keys: Path) -> LocalGrid:
    """Three honest nodes whose random keys are kept in ``keys`` (the run's directory keeps them across a restart)."""
    from sentinel.client.app import app
    from sentinel.client.node import ensure_simulated_keys

    ensure_simulated_keys(keys, 3)
    return LocalGrid({n: app for n in ids}, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(ids)}, node_keys=keys)


def _by_partition(out: Path, values: dict) -> dict:
    """Re-key a mapping of node key ids by partition (runs in different directories have different random keys)."""
    from sentinel.client.node import simulated_node_key
    from sentinel.ledger.crypto import public_key_b64
    from sentinel.protos.vocabulary import node_id_of_key

    ids = {node_id_of_key(public_key_b64(simulated_node_key(out / "keys", p))): p for p in range(3)}
    return {ids[k]: v for k, v in values.items()}


def _summary(out: Path, coordinator: Coordinator) -> dict:
    ledger = coordinator.ledger
    kinds = Counter(e.kind for e in ledger.iter_entries())
    rounds_started = Counter(e.payload["round"] for e in ledger.iter_entries(kind=EntryKind.ROUND_STARTED))
    tokens = Counter(e.payload["round"] for e in ledger.iter_entries(kind=EntryKind.TOKENS))
    meta = json.loads((out / "checkpoint" / "last" / "state.json").read_text())["meta"]
    return {
        "registered": kinds[EntryKind.NODE_REGISTERED],
        "rounds_started": dict(rounds_started),
        "tokens_rounds": dict(tokens),
        "balances": _by_partition(out, ledger.balances()),
        "reputation": _by_partition(out, meta["validation"]["reputation"]),
        "entropy_history": meta["entropy_history"],
        "accuracies": [r["accuracy"] for r in meta["history"]],
        "verified": ledger.verify(node_signatures=True).ok,
    }


def _config() -> FederationConfig:
    profiles = {
        "edge": RoleProfile(lora_rank=2, local_steps=3, batch_size=8, learning_rate=5e-3),
        "gpu": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
        "central": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
    }
    return FederationConfig(
        model="tiny-bert", dataset="builtin:reviews?n=360", nodes=3, rounds=3, patience=5, max_length=24,
        profiles=profiles, token_budget=100,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("once") / "full"
    coordinator = Coordinator.build(_config(), out)
    coordinator.run(_grid(IDS, out / "keys"))
    return _summary(out, coordinator)


def _crash_then_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kill_before_checkpoint, where: str) -> tuple[Path, Coordinator]:  # noqa: ANN001
    out = tmp_path / where
    config = _config()
    if where == "training":
        real = LocalGrid.send_and_receive

        def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN202
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train" and int(messages[0].content["config"]["server-round"]) == 2:
                raise Crash("killed while round 2 trains")
            return real(self, messages, timeout=timeout)

        monkeypatch.setattr(LocalGrid, "send_and_receive", send_and_receive)
    else:
        kill_before_checkpoint(2, Crash)
    with pytest.raises(Crash):
        Coordinator.build(config, out).run(_grid(IDS, out / "keys"))
    monkeypatch.undo()
    resumed = Coordinator.build(config, out)
    resumed.run(_grid(RESUMED_IDS, out / "keys"), resume=True)
    return out, resumed


@pytest.mark.parametrize("where", ["training", "between-ledger-and-checkpoint"])
def test_a_resumed_run_records_every_round_once_and_matches_an_uninterrupted_one(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uninterrupted: dict, kill_before_checkpoint
) -> None:
    out, resumed = _crash_then_resume(tmp_path, monkeypatch, kill_before_checkpoint, where)
    got = _summary(out, resumed)
    assert got["registered"] == 3  # every node kept its identity across the restart
    assert got["rounds_started"] == {1: 1, 2: 1, 3: 1}
    assert got["tokens_rounds"] == uninterrupted["tokens_rounds"]
    assert all(count == 1 for count in got["tokens_rounds"].values())
    assert got["balances"] == uninterrupted["balances"]
    assert got["reputation"] == uninterrupted["reputation"]
    assert got["entropy_history"] == uninterrupted["entropy_history"]
    assert got["accuracies"] == uninterrupted["accuracies"]
    assert got["verified"]
    governance_nodes = resumed.governance.governor.nodes().active()
    assert len(governance_nodes) == 3  # no ghost electorate
