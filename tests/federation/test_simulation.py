"""Real Flower simulations (Ray): report, resume, and consent enforcement end to end.

Each simulation pays Ray's start-up (~10 s), so three runs serve every check:
an uninterrupted 2-round run, and a 1-round run resumed to round 2. In both, the
edge node (partition 0) ignores its consent mask.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sentinel.client.adversarial import consent_ignoring_app
from sentinel.ledger.kinds import EntryKind
from sentinel.ledger.store import Ledger
from sentinel.server.checkpoints import load_state
from sentinel.server.simulate import simulate

pytestmark = pytest.mark.slow

ROGUE = consent_ignoring_app({0})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from sentinel.server.config import FederationConfig, RoleProfile

    profiles = {
        "edge": RoleProfile(lora_rank=2, local_steps=3, batch_size=8, learning_rate=5e-3),
        "gpu": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
        "central": RoleProfile(lora_rank=8, local_steps=6, batch_size=8, learning_rate=5e-3),
    }

    def config(rounds: int) -> FederationConfig:
        return FederationConfig(
            model="tiny-bert", dataset="builtin:reviews?n=360", nodes=3, rounds=rounds, patience=5,
            max_length=24, profiles=profiles,
        )

    base = tmp_path_factory.mktemp("sim")
    full, split = base / "full", base / "split"
    simulate(config(2), full, client_app=ROGUE)
    simulate(config(1), split, client_app=ROGUE)
    simulate(config(2), split, resume=True, client_app=ROGUE)
    return {"full": full, "split": split}


def test_simulation_writes_a_complete_report(runs: dict[str, Path]) -> None:
    out = runs["full"]
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["nodes"] == 3
    assert sorted(n["role"] for n in report["nodes"]) == ["central", "edge", "gpu"]
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for row in report["rounds"]:
        for key in ("accuracy", "loss", "nodes", "bytes_up", "bytes_down", "duration_s", "svd_residual"):
            assert key in row
        assert row["nodes"] == 3 and row["bytes_up"] > 0 and row["bytes_down"] > 0
    assert report["best_round"] in (0, 1, 2)
    assert set(report["final"]) >= {"accuracy", "loss"}
    assert (out / "accuracy.png").stat().st_size > 1000 and (out / "loss.png").stat().st_size > 1000
    assert (out / "checkpoint" / "best" / "adapter_config.json").is_file()
    assert report["ledger"]["verified"]


def test_rogue_edge_node_is_rejected_every_round_and_recorded(runs: dict[str, Path]) -> None:
    out = runs["full"]
    report = json.loads((out / "report.json").read_text())
    assert [r["consent_violations"] for r in report["rounds"]] == [1, 1]
    assert [r["accepted"] for r in report["rounds"]] == [2, 2]
    ledger = Ledger(f"sqlite:///{out / 'ledger.db'}")
    assert ledger.verify().ok
    violations = list(ledger.iter_entries(kind=EntryKind.CONSENT_VIOLATION))
    edge = next(n for n in report["nodes"] if n["role"] == "edge")
    assert [v.payload["node"] for v in violations] == [edge["node_id"], edge["node_id"]]


def test_resume_after_round_one_reproduces_the_uninterrupted_run(runs: dict[str, Path]) -> None:
    full = load_state(runs["full"] / "checkpoint" / "last")
    resumed = load_state(runs["split"] / "checkpoint" / "last")
    assert full.round == resumed.round == 2
    for module, delta in full.deltas.items():
        np.testing.assert_allclose(resumed.deltas[module], delta, atol=1e-6, rtol=0)
    for name, value in full.head.items():
        np.testing.assert_allclose(resumed.head[name], value, atol=1e-6, rtol=0)
    a = json.loads((runs["full"] / "report.json").read_text())
    b = json.loads((runs["split"] / "report.json").read_text())
    assert [r["accuracy"] for r in a["rounds"]] == pytest.approx([r["accuracy"] for r in b["rounds"]])
