"""Hostile nodes cannot break the coordinator: every bad update is rejected with its reason, the round goes on.

Each case is a red-team ClientApp that sends a *validly signed* update broken in
one way (``client.adversarial.MALFORMED_KINDS``) or lies in the profile
handshake. The run must finish, the bad update must be rejected with its reason
on the ledger, and the global model must be exactly the aggregate of the
honest updates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.clientapp import ClientApp
from sentinel.client.adversarial import malformed_update_app, off_frame_app, profile_lying_app
from sentinel.client.app import app as honest_app
from sentinel.ledger.kinds import EntryKind
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid
from sentinel.server.observer import RoundObserver
from sentinel.server.strategy import aggregate_updates

IDS = [1001, 1008, 1015]
ROGUE = 2  # the gpu node's partition under the tiny config (edge, central, gpu)


class Captured(RoundObserver):
    """Keeps each round's outcome and the states before and after it."""

    def __init__(self) -> None:
        self.rounds: list[tuple[Any, Any, Any]] = []

    def on_round(self, outcome: Any, row: Any, state: Any, previous: Any) -> dict[str, Any]:
        self.rounds.append((outcome, previous, state))
        return {}


def _grid(rogue: ClientApp) -> LocalGrid:
    apps = {n: (rogue if i == ROGUE else honest_app) for i, n in enumerate(IDS)}
    return LocalGrid(apps, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(IDS)})


def _run(tiny_config, out: Path, rogue: ClientApp, **overrides: Any) -> tuple[Coordinator, Any, Captured]:
    coordinator = Coordinator.build(tiny_config(rounds=1, **overrides), out)
    captured = Captured()
    return coordinator, coordinator.run(_grid(rogue), extra_observers=[captured]), captured


CASES = {
    "missing-module": "adapted module(s) missing",
    "missing-lora-b": "has no lora_B array",
    "wrong-input-dim": "wrong shape in module",
    "broadcast-b": "wrong shape in module",
    "nan-head": "non-finite values (NaN/Inf) in head parameter",
    "inf-lora": "non-finite values (NaN/Inf) in module",
    "wrong-head-shape": "wrong shape of head parameter",
    "extra-module": "module(s) the global model does not adapt",
    "extra-head-key": "head parameters differ from the global head",
    "float64": "wrong dtype",
    "huge-values": "exceeds 10 × the round's median norm",
    "negative-examples": "metric `num-examples`: Input should be greater than or equal to 0",
    "inflated-examples": "training examples this node may claim",
    "stale-contract": "stale contract version",
    "entropy-out-of-range": "importance `entropy-normalised` holds values above 1",
}


@pytest.mark.parametrize("design", ["legacy", "frame-unit-trained-reach-ef"])  # the default, and the shared frame with error feedback
@pytest.mark.parametrize("kind", sorted(CASES))
def test_a_malformed_update_is_rejected_with_its_reason_and_changes_nothing(kind: str, design: str, tmp_path: Path, tiny_config) -> None:
    coordinator, result, captured = _run(tiny_config, tmp_path / kind, malformed_update_app(kind, {ROGUE}), training_design=design)
    row = result.history[-1]
    rogue_id = next(n.key_id for n in result.nodes if n.node_id == IDS[ROGUE])
    verdict = next(n for n in row["per_node"] if n["node_id"] == rogue_id)
    assert not verdict["accepted"] and CASES[kind] in verdict["reason"], verdict["reason"]
    assert row["accepted"] == 2 and row["round"] == 1
    # The verdict is on the ledger with its reason, and the ledger verifies.
    rejected = {e.payload["node"]: e.payload["reason"] for e in coordinator.ledger.iter_entries(kind=EntryKind.UPDATE_REJECTED)}
    assert CASES[kind] in rejected[rogue_id]
    assert coordinator.ledger.verify().ok
    # The global model is exactly the aggregate of the honest updates.
    outcome, previous, state = captured.rounds[-1]
    honest = [r for r in outcome.results if r.accepted]
    assert {r.node.node_id for r in honest} == {IDS[0], IDS[1]}
    deltas, head = aggregate_updates(honest, "exact", previous.deltas, previous.head)
    for module, delta in deltas.items():
        np.testing.assert_array_equal(state.deltas[module], delta)
    for name, value in head.items():
        np.testing.assert_array_equal(state.head[name], value)
    assert all(np.isfinite(d).all() for d in state.deltas.values())


def test_a_frozen_factor_off_the_shared_frame_is_rejected_and_changes_nothing(tmp_path: Path, tiny_config) -> None:
    """Reproduced before the check: under a frame design the update was accepted and ΔW's rank grew past the frame's."""
    coordinator, result, captured = _run(tiny_config, tmp_path / "off-frame", off_frame_app({ROGUE}), training_design="frame-unit")
    row = result.history[-1]
    rogue_id = next(n.key_id for n in result.nodes if n.node_id == IDS[ROGUE])
    verdict = next(n for n in row["per_node"] if n["node_id"] == rogue_id)
    assert not verdict["accepted"] and "outside the shared frame" in verdict["reason"], verdict["reason"]
    assert row["accepted"] == 2
    rejected = {e.payload["node"]: e.payload["reason"] for e in coordinator.ledger.iter_entries(kind=EntryKind.UPDATE_REJECTED)}
    assert "outside the shared frame" in rejected[rogue_id]
    outcome, previous, state = captured.rounds[-1]
    honest = [r for r in outcome.results if r.accepted]
    deltas, _ = aggregate_updates(honest, "exact", previous.deltas, previous.head)
    for module, delta in deltas.items():
        np.testing.assert_array_equal(state.deltas[module], delta)
    ranks = [np.linalg.matrix_rank(d.astype(np.float64), tol=1e-6 * max(np.abs(d).max(), 1e-30)) for d in state.deltas.values()]
    assert max(ranks) <= max(p.lora_rank for p in coordinator.config.profiles.values())  # still the frame's rank


PROFILE_CASES = {
    "admin-role": "claims role 'admin'",
    "claims-central": "claims role 'central'",
    "bad-public-key": "profile `public-key`",
    "non-integer-partition": "profile `partition-id`",
    "foreign-partition": "partition 99 is not one of the run's partitions",
}


@pytest.mark.parametrize("kind", sorted(PROFILE_CASES))
def test_a_lying_profile_is_refused_and_the_run_goes_on(kind: str, tmp_path: Path, tiny_config) -> None:
    coordinator, result, _ = _run(tiny_config, tmp_path / kind, profile_lying_app(kind, {ROGUE}))
    assert PROFILE_CASES[kind] in result.refused[IDS[ROGUE]]
    assert [n.node_id for n in result.nodes] == IDS[:2]
    assert result.history[-1]["accepted"] == 2
    # A refused node is never registered: it gets no permissions and no vote.
    registered = {e.payload.get("node_id") or e.payload.get("node") for e in coordinator.ledger.iter_entries(kind=EntryKind.NODE_REGISTERED)}
    assert len(registered) == 2 and registered == {n.key_id for n in result.nodes}


RESTRICTING_POLICY = """
version: 1
name: gpu-keeps-off-non-heads
defaults:
  operations:
    adapt: {roles: [edge, gpu, central]}
rules:
  - name: non-heads-not-for-gpu
    match: {kind: [classifier, ffn, embeddings]}
    revoke:
      adapt: {roles: [gpu]}
"""


def test_honest_nodes_pass_a_policy_that_revokes_the_classifier_and_a_rogue_one_is_caught(tmp_path: Path, tiny_config) -> None:
    from sentinel.client.adversarial import consent_ignoring_app

    policy = tmp_path / "policy.yaml"
    policy.write_text(RESTRICTING_POLICY)
    coordinator, result, captured = _run(tiny_config, tmp_path / "honest", honest_app, policy=str(policy))
    row = result.history[-1]
    assert row["accepted"] == 3 and row["consent_violations"] == 0, [n["reason"] for n in row["per_node"]]
    gpu = next(n for n in result.nodes if n.role == "gpu")
    permitted = coordinator.governance.governor.permitted_set(str(gpu.node_id), "adapt")
    assert "classifier" not in permitted and not any(c.endswith(".ffn") for c in permitted) and "embeddings" not in permitted
    outcome, previous, _ = captured.rounds[-1]
    gpu_update = next(r for r in outcome.results if r.node.node_id == gpu.node_id)
    head = {k: v for k, v in gpu_update.arrays.items() if ".lora_" not in k}
    for key, value in head.items():  # the honest gpu node left the classifier exactly as it was sent
        np.testing.assert_array_equal(value, previous.head[key.removeprefix("base_model.model.")])

    _, rogue, _ = _run(tiny_config, tmp_path / "rogue", consent_ignoring_app({ROGUE}), policy=str(policy))
    rogue_id = next(n.key_id for n in rogue.nodes if n.node_id == IDS[ROGUE])
    verdict = next(n for n in rogue.history[-1]["per_node"] if n["node_id"] == rogue_id)
    assert not verdict["accepted"] and "classifier" in verdict["offending"]
