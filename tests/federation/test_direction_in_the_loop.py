"""A sign-flipping node is caught by the check phase's direction test in a real round, before any validator."""

from __future__ import annotations

from pathlib import Path

import pytest
from sentinel.client.attacks import attack_app
from sentinel.ledger.kinds import EntryKind
from sentinel.server.checkpoints import LAST, load_state
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.coordinator import CHECKPOINT_DIR, Coordinator
from sentinel.server.local_grid import LocalGrid

NODES = 6
ATTACKER = 4


@pytest.mark.slow
def test_a_sign_flipper_is_rejected_by_direction_and_honest_nodes_are_not(tmp_path: Path, letters_csv: Path) -> None:
    profile = RoleProfile(lora_rank=8, local_steps=20, batch_size=16, learning_rate=1e-2)
    config = FederationConfig(
        model="tiny-bert", dataset=f"csv:{letters_csv}", partition="iid", nodes=NODES, rounds=2, patience=5, max_length=24,
        profiles={"gpu": profile, "central": profile}, roles=["central", "gpu", "gpu", "gpu", "gpu", "gpu"],
        validation=False, update_min_cosine=0.0,
    )
    ids = [2001 + 7 * i for i in range(NODES)]
    app = attack_app("sign-flip", {ATTACKER})
    grid = LocalGrid({n: app for n in ids}, {n: {"partition-id": i, "num-partitions": NODES} for i, n in enumerate(ids)})
    coordinator = Coordinator.build(config, tmp_path / "run")
    result = coordinator.run(grid)
    attacker = next(n.key_id for n in result.nodes if n.partition_id == ATTACKER)
    for row in result.history[1:]:
        verdicts = {v["node_id"]: v for v in row["per_node"]}
        assert not verdicts[attacker]["accepted"]
        assert "update direction opposes the round's consensus" in verdicts[attacker]["reason"]
        assert verdicts[attacker]["direction_cosine"] < 0
        honest = [v for k, v in verdicts.items() if k != attacker]
        assert all(v["accepted"] and v["direction_cosine"] > 0 for v in honest), [(v["reason"], v["direction_cosine"]) for v in honest]
    rejected = [e.payload for e in coordinator.ledger.iter_entries(kind=EntryKind.UPDATE_REJECTED)]
    assert [p["node"] for p in rejected] == [attacker, attacker]
    assert all("direction opposes" in p["reason"] for p in rejected)
    assert coordinator.ledger.verify().ok
    # Each node's direction record is kept with the checkpoint (for --resume), the attacker's against the round.
    saved = load_state(tmp_path / "run" / CHECKPOINT_DIR / LAST).meta["direction"]
    assert saved["records"][attacker] < 0 < min(v for k, v in saved["records"].items() if k != attacker)
    assert attacker not in saved["standing"] and len(saved["standing"]) == NODES - 1
