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
from sentinel.governance.parameters import MAX_COOLDOWN_ROUNDS, FederationParameters
from sentinel.server.coordination_memory import pair_key, updated_pair_records
from sentinel.server.outcome import NodeInfo
from sentinel.server.validation import (
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
    # The record alone, probation alone, both (the default), and neither: the round alone, as before.
    for memory, probation, caught in (
        (params.coordination_memory, False, True),
        (0.0, True, True),
        (params.coordination_memory, True, True),
        (0.0, False, False),
    ):
        phase = _phase()
        gates = GateParameters(coordination_memory=memory)
        first, _ = phase.judge_coordination(_round(0, weight=1.5), gates)
        assert set(first) == set(ATTACKERS)
        assert len(phase.state.coordinated_pairs) == 3  # the three pairs were caught together
        if not probation:
            phase.state.coordinated_pairs.clear()
        back, scores = phase.judge_coordination(_round(1, weight=0.5), gates)  # after its cool-down: z ≤ 2
        assert max(scores[n][0] for n in ATTACKERS) < gates.coordination_z
        assert (set(back) == set(ATTACKERS)) is caught, (memory, probation)


def test_a_pair_on_probation_is_caught_again_once_more_alike_than_the_typical_pair() -> None:
    phase = _phase()
    phase.judge_coordination(_round(0, weight=1.5), GateParameters())
    phase.state.coordination.clear()  # no record to carry it: probation alone
    rounds = [phase.judge_coordination(_round(seed, weight=0.0), GateParameters(coordination_memory=0.0)) for seed in range(1, 9)]
    for flagged, scores in rounds:  # honest-looking rounds: caught exactly when a pair of theirs is above the median
        assert not set(flagged) - set(ATTACKERS)
        for n, why in flagged.items():
            assert "caught together before" in why
    assert any(flagged for flagged, _ in rounds) and not all(len(flagged) == 3 for flagged, _ in rounds)


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


# ------------------------------------------------------------ in the validate phase's decision


class _Federation:
    """Ten gpu nodes with keys, judging one another's updates with hand-written verdicts."""

    def __init__(self) -> None:
        from sentinel.ledger.crypto import generate_private_key, public_key_b64

        self.keys = [generate_private_key() for _ in range(10)]
        self.nodes = [NodeInfo(100 + i, i, "gpu", public_key_b64(k.public_key())) for i, k in enumerate(self.keys)]
        self.phase = _phase()
        self.phase.on_nodes(self.nodes)
        self.name = {f"n{i}": n.key_id for i, n in enumerate(self.nodes)}

    def round(self, server_round: int, updates: dict[str, dict[str, np.ndarray]], loss: dict[str, float]) -> dict[str, tuple[bool, str]]:
        """Node name → (accepted, reason) after the validate phase; ``loss`` is what every validator measures."""
        from flwr.app import Message, MetricRecord, RecordDict
        from sentinel.ledger.recorder import validation_verdict_payload
        from sentinel.ledger.signing import sign_payload
        from sentinel.protos import messages as P
        from sentinel.server.outcome import NodeResult, RoundOutcome
        from sentinel.server.state import GlobalState

        by_key = {n.key_id: (n, k) for n, k in zip(self.nodes, self.keys, strict=True)}
        excluded = self.phase.excluded(server_round)
        results = [
            NodeResult(self.nodes[int(name[1:])], accepted=True, arrays=arrays)
            for name, arrays in updates.items()
            if self.nodes[int(name[1:])].node_id not in excluded
        ]
        outcome = RoundOutcome(server_round, results=results)
        state = GlobalState(deltas={MODULE: np.zeros((32, 64), np.float32)}, head={}, round=server_round - 1)
        plan = self.phase.configure(server_round, state, outcome)
        replies = []
        for message in plan.messages:
            validator, key = next(by_key[n.key_id] for n in self.nodes if n.node_id == message.metadata.dst_node_id)
            content, signatures = RecordDict(), ConfigRecord()
            for record in message.content:
                if not record.startswith(P.REC_CANDIDATE):
                    continue
                author = record[len(P.REC_CANDIDATE) :]
                change = loss[next(k for k, v in self.name.items() if v == author)]
                reason = "" if change <= 0.2 else f"loss gate: validation loss {change:+.4f} nats > tolerance 0 + 2 SE (0.0100)"
                content[P.REC_VERDICT + author] = MetricRecord(
                    {P.V_ACCEPT: int(not reason), P.V_LOSS_CHANGE: change, P.V_ACCURACY_CHANGE: 0.0, P.V_KL: 0.01, P.V_SHIFT_NORM: 1.0, P.V_EXAMPLES: 50}
                )
                payload = validation_verdict_payload(author, server_round, validator.key_id, not reason, reason)
                signatures[P.S_VERDICT + author] = sign_payload(key, payload)
                signatures[P.S_REASON + author] = reason
            content[P.REC_SIGNATURE] = signatures
            replies.append(Message(content, reply_to=message))
        decided = self.phase.decide(plan, replies, outcome)
        names = {v: k for k, v in self.name.items()}
        return {names[r.node.key_id]: (r.accepted, r.reason) for r in decided.results}


def _coalition(seed: int, weight: float, members: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=32), rng.normal(size=64)
    out = {}
    for i in range(10):
        a, b = rng.normal(size=(4, 64)), rng.normal(size=(32, 4))
        if i < members:
            a[0] += weight * v
            b[:, 0] += weight * u
        out[f"n{i}"] = {f"{MODULE}.lora_A.weight": a.astype(np.float32), f"{MODULE}.lora_B.weight": b.astype(np.float32)}
    return out


GAIN = -0.1
"""Every validator's loss change on an honest update in a round whose updates help."""


@pytest.mark.usefixtures("inside_a_server_app")
def test_a_coalition_is_judged_whole_even_when_another_gate_rejects_one_of_it() -> None:
    fed = _Federation()
    first = fed.round(1, _coalition(0, 1.5, members=2), dict.fromkeys(fed.name, GAIN))
    assert not first["n0"][0] and not first["n1"][0] and first["n1"][1].startswith("coordinated update")
    for r in (2, 3):  # the pair sits out its cool-down
        out = fed.round(r, _coalition(r, 0.0, members=0), dict.fromkeys(fed.name, GAIN))
        assert "n0" not in out or out["n0"] == (True, "")
    # Back, looking ordinary; the loss gate rejects n0, so only the pair's record can still tie n1 to it.
    back = fed.round(4, _coalition(4, 0.5, members=2), {**dict.fromkeys(fed.name, GAIN), "n0": 0.5})
    assert back["n0"][1].startswith("rejected by validators")
    assert not back["n1"][0] and back["n1"][1].startswith("coordinated update"), back["n1"]
    assert fed.phase.state.excluded_until[fed.name["n1"]] == 4 + 4  # a second offence: twice the cool-down
    assert fed.phase.state.excluded_until[fed.name["n0"]] == 4 + 4
    assert all(ok for name, (ok, _) in back.items() if name not in ("n0", "n1"))


@pytest.mark.usefixtures("inside_a_server_app")
def test_likeness_near_the_optimum_is_not_a_first_offence_but_a_repeat_is() -> None:
    fed = _Federation()
    for r in range(1, 5):
        assert all(ok for ok, _ in fed.round(r, _coalition(r, 0.0, members=0), dict.fromkeys(fed.name, GAIN)).values())
    costs = dict.fromkeys(fed.name, 0.15)  # every update costs the validators a little: the non-IID optimum
    late = fed.round(5, _coalition(5, 1.5, members=3), costs)
    assert all(ok for ok, _ in late.values()), late
    gaining = _Federation()  # the same likeness while the round's updates help is a first offence
    for r in range(1, 5):
        gaining.round(r, _coalition(r, 0.0, members=0), dict.fromkeys(gaining.name, GAIN))
    assert {n for n, (ok, _) in gaining.round(5, _coalition(5, 1.5, members=3), dict.fromkeys(gaining.name, GAIN)).items() if not ok} == set(ATTACKERS)
    caught = _Federation()  # and a group caught before is caught again in a costing round
    caught.round(1, _coalition(0, 1.5, members=3), dict.fromkeys(caught.name, GAIN))
    for r in (2, 3):
        caught.round(r, _coalition(r, 0.0, members=0), dict.fromkeys(caught.name, GAIN))
    again = caught.round(4, _coalition(4, 0.5, members=3), dict.fromkeys(caught.name, 0.15))
    assert {n for n, (ok, _) in again.items() if not ok} == set(ATTACKERS)
