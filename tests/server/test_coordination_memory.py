"""The coordinated-minority check judges pairs on their record over rounds, and repeat offenders sit out longer.

Two defects measured on the robustness benchmark (5 rounds, 10 nodes, 30 %
malicious) that judging each round alone caused:

- backdoor attackers caught in round 1 came back from their cool-down in round
  4 with pairwise z-scores ≤ 3, were accepted and implanted the backdoor;
- a group of honest nodes of one domain, unremarkable for four rounds, had z 8.5
  in round 5 and was rejected as coordinated.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord
from sentinel.governance.parameters import FederationParameters
from sentinel.server.coordination_memory import pair_key, updated_pair_records
from sentinel.server.outcome import NodeInfo
from sentinel.server.validation import (
    MAX_COOLDOWN_ROUNDS,
    GateParameters,
    ValidationPhase,
    ValidationState,
    escalated_cooldown,
)

MODULE = "base_model.model.bert.encoder.layer.0.attention.self.query"
ATTACKERS = ("n0", "n1", "n2")


def _round(seed: int, weight: float) -> dict[str, dict[str, np.ndarray]]:
    """Ten random LoRA updates; the first three also share one rank-1 direction with ``weight``."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=32), rng.normal(size=64)
    out = {}
    for i in range(10):
        a, b = rng.normal(size=(4, 64)), rng.normal(size=(32, 4))
        if i < len(ATTACKERS):
            a[0] += weight * v
            b[:, 0] += weight * u
        out[f"n{i}"] = {f"{MODULE}.lora_A.weight": a.astype(np.float32), f"{MODULE}.lora_B.weight": b.astype(np.float32)}
    return out


def _phase() -> ValidationPhase:
    def node_config(node: NodeInfo, server_round: int) -> ConfigRecord:
        return ConfigRecord({})

    return ValidationPhase(["gpu"], GateParameters, node_config, seed=0)


def test_a_pair_record_starts_at_its_z_score_and_then_weights_the_past() -> None:
    first = updated_pair_records({}, {("a", "b"): 8.0}, memory=0.6)
    assert first == {("a", "b"): 8.0}
    second = updated_pair_records({pair_key("a", "b"): 8.0}, {("a", "b"): 1.0, ("a", "c"): 2.0}, memory=0.6)
    assert second[("a", "b")] == pytest.approx(0.6 * 8.0 + 0.4 * 1.0)
    assert second[("a", "c")] == 2.0
    assert updated_pair_records({pair_key("a", "b"): 8.0}, {("a", "b"): 1.0}, memory=0.0) == {("a", "b"): 1.0}
    assert pair_key("b", "a") == pair_key("a", "b")
    with pytest.raises(ValueError):
        updated_pair_records({}, {}, memory=1.0)


def test_a_group_caught_once_is_caught_again_when_it_returns_looking_ordinary() -> None:
    params = GateParameters()
    for memory, caught in ((params.coordination_memory, True), (0.0, False)):  # 0: the round alone, as before
        phase = _phase()
        gates = GateParameters(coordination_memory=memory)
        first, _ = phase.judge_coordination(_round(0, weight=1.5), gates)
        assert set(first) == set(ATTACKERS)
        back, scores = phase.judge_coordination(_round(1, weight=0.5), gates)  # after its cool-down: z ≤ 2
        assert max(scores[n][0] for n in ATTACKERS) < gates.coordination_z
        assert (set(back) == set(ATTACKERS)) is caught, memory
        assert all("record" in reason for reason in back.values()) or not caught


def test_one_round_of_likeness_after_a_clean_record_is_not_coordination() -> None:
    params = GateParameters()
    for memory, flagged in ((params.coordination_memory, False), (0.0, True)):
        phase = _phase()
        gates = GateParameters(coordination_memory=memory)
        for seed in range(1, 5):
            assert phase.judge_coordination(_round(seed, weight=0.0), gates)[0] == {}
        late, scores = phase.judge_coordination(_round(0, weight=1.0), gates)  # z 7–10 in this round alone
        assert min(scores[n][0] for n in ATTACKERS) > gates.coordination_z
        assert bool(late) is flagged, memory
        assert not set(late) - set(ATTACKERS)


def test_a_strong_new_coalition_is_caught_whatever_its_record() -> None:
    phase = _phase()
    for seed in range(1, 5):
        phase.judge_coordination(_round(seed, weight=0.0), GateParameters())
    late, _ = phase.judge_coordination(_round(0, weight=1.5), GateParameters())  # z 19-23 this round
    assert set(late) == set(ATTACKERS)


def test_records_survive_a_checkpoint_and_decide_the_same_after_resume() -> None:
    phase = _phase()
    phase.judge_coordination(_round(0, weight=1.5), GateParameters())
    phase.state.coordinated_offences["n0"] = 1
    meta = phase.checkpoint_meta()
    resumed = _phase()
    resumed.restore(meta)
    assert resumed.state == phase.state
    assert ValidationState.from_meta(phase.state.to_meta()).coordination == phase.state.coordination
    assert resumed.judge_coordination(_round(1, weight=0.5), GateParameters()) == phase.judge_coordination(
        _round(1, weight=0.5), GateParameters()
    )


def test_each_coordinated_offence_doubles_the_cool_down_up_to_its_cap() -> None:
    assert [escalated_cooldown(2, k) for k in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert escalated_cooldown(0, 3) == 0
    assert escalated_cooldown(600, 2) == MAX_COOLDOWN_ROUNDS
    assert escalated_cooldown(2, 10_000) == MAX_COOLDOWN_ROUNDS


def test_a_repeat_offender_sits_out_twice_as_long() -> None:
    phase = _phase()
    gates = GateParameters(cooldown_rounds=2)
    phase._update_state(1, [], {"n0": True}, gates, coordinated={"n0"})
    assert phase.state.excluded_until["n0"] == 3
    phase._update_state(4, [], {"n0": True}, gates, coordinated={"n0"})
    assert phase.state.excluded_until["n0"] == 8
    phase._update_state(9, [], {"n1": False}, gates)
    phase._update_state(10, [], {"n1": False}, gates)  # rejected twice in a row: the plain cool-down
    assert phase.state.excluded_until["n1"] == 12


def test_the_memory_is_a_bounded_governance_parameter() -> None:
    assert GateParameters.from_federation(FederationParameters(coordination_memory=0.3)).coordination_memory == 0.3
    with pytest.raises(ValueError):
        FederationParameters(coordination_memory=1.0)
