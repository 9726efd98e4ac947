"""Validators in a real Flower simulation: a sign-flipping node is rejected by consensus, a lying validator loses reputation.

Six tiny-bert nodes on Ray (2 edge, 1 central, 3 gpu) learn a task a tiny model
can learn (which letters a text is made of). Partition 3 (a gpu node) flips the
sign of its update; partition 4 (a gpu validator) accepts everything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sentinel.client.attacks import attack_app
from sentinel.ledger.kinds import EntryKind
from sentinel.ledger.store import Ledger
from sentinel.server.attack_scenario import AttackObserver, AttackScenario
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.coordinator import Coordinator
from sentinel.server.simulate import simulate

pytestmark = pytest.mark.slow

ATTACKER, LIAR = 3, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, letters_csv: Path) -> tuple[Path, dict]:
    base = tmp_path_factory.mktemp("validated")
    profiles = {
        "edge": RoleProfile(lora_rank=4, local_steps=10, batch_size=16, learning_rate=1e-2),
        "gpu": RoleProfile(lora_rank=8, local_steps=20, batch_size=16, learning_rate=1e-2),
        "central": RoleProfile(lora_rank=8, local_steps=20, batch_size=16, learning_rate=1e-2),
    }
    config = FederationConfig(
        model="tiny-bert", dataset=f"csv:{letters_csv}", partition="iid", nodes=6, rounds=2,
        patience=5, max_length=24, profiles=profiles,
    )
    out = base / "run"
    coordinator = Coordinator.build(config, out)
    scenario = AttackScenario(kind="sign-flip", validator_kind="always-accept")
    observer = AttackObserver(scenario, config)
    observer.malicious, observer.lying = {ATTACKER}, {LIAR}
    coordinator.observers.append(observer)
    report = simulate(config, out, coordinator=coordinator, client_app=attack_app("sign-flip", {ATTACKER}, "always-accept", {LIAR}))
    return out, report


def _node(report: dict, partition: int) -> str:
    return next(n["node_id"] for n in report["nodes"] if n["partition_id"] == partition)


def test_the_sign_flipping_node_is_rejected_by_consensus_and_honest_nodes_are_accepted(run: tuple[Path, dict]) -> None:
    _, report = run
    attacker = _node(report, ATTACKER)
    for row in report["rounds"]:
        for node in row["per_node"]:
            if node["node_id"] == attacker:
                assert not node["accepted"] and node["reason"].startswith("rejected by validators")
                assert node["validators"], "the attacker's update was judged by validators"
            else:
                assert node["accepted"], node["reason"]
        assert row["detection"]["fp"] == 0
    assert report["rounds"][0]["detection"]["tp"] == 1


def test_every_verdict_is_on_the_ledger_signed_by_its_validator(run: tuple[Path, dict]) -> None:
    out, report = run
    ledger = Ledger.open(f"sqlite:///{out / 'ledger.db'}", out / "coordinator.key")
    entries = list(ledger.iter_entries(kind=EntryKind.VALIDATION_VERDICT))
    verdicts = [(r["round"], n["node_id"], v["validator"], v["accept"]) for r in report["rounds"] for n in r["per_node"] for v in n["validators"]]
    assert sorted((e.payload["round"], e.payload["node"], e.payload["validator"], e.payload["accept"]) for e in entries) == sorted(verdicts)
    assert all(e.actor == e.payload["validator"] and e.node_signature for e in entries)
    assert ledger.verify(node_signatures=True).ok


def test_the_always_accepting_validator_loses_reputation(run: tuple[Path, dict]) -> None:
    _, report = run
    liar = _node(report, LIAR)
    final = report["rounds"][-1]["reputation"]
    assert final[liar] < 1.0
    assert all(final[liar] < rep for node, rep in final.items() if node != liar)
    checkpoint = json.loads((run[0] / "checkpoint" / "last" / "state.json").read_text())
    assert checkpoint["meta"]["validation"]["reputation"]  # reputation travels with the checkpoint
