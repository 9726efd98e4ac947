"""Every validation threshold is a governance parameter the coordinator reads each round."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.parameters import FederationParameters
from sentinel.ledger.crypto import Ed25519PrivateKey, public_key_b64
from sentinel.ledger.kinds import EntryKind
from sentinel.models.global_model import materialise
from sentinel.models.lora import adapter_arrays, attach_lora
from sentinel.protos import messages as P
from sentinel.server.coordinator import Coordinator
from sentinel.server.outcome import NodeInfo, NodeResult, RoundOutcome
from sentinel.server.validation import GateParameters

ROUND_GATES = {"entropy_min_ratio": 6.0, "coordination_z": 0.0, "loss_allowance_share": 0.2, "loss_gate_z": 2.0}


def _set(coordinator: Coordinator, name: str, value: float) -> None:
    """Store a new parameters version and its act, as an executed ``set_parameter`` proposal does."""
    governor = coordinator.governance.governor
    now = datetime.now(UTC)
    with governor.store.transaction() as tx:
        tx.put_parameters(governor.parameters().with_value(name, value), at=now, cause="test: proposal executed")
        tx.record_act(EntryKind.EXECUTION, governor.actor, now, "test: proposal executed")


@pytest.fixture(autouse=True)
def _inside_a_server_app(inside_a_server_app: None) -> None:
    """Every test here builds Flower messages as a ServerApp does."""


def _node(node_id: int, partition: int, role: str) -> NodeInfo:
    return NodeInfo(node_id, partition, role, public_key_b64(Ed25519PrivateKey.generate().public_key()))


def test_the_round_gates_default_to_the_federation_parameters() -> None:
    defaults = FederationParameters()
    assert GateParameters() == GateParameters.from_federation(defaults)
    for name in ROUND_GATES:
        assert name in FederationParameters.settable()


@pytest.mark.parametrize(("name", "bad"), [("entropy_min_ratio", 0.5), ("coordination_z", -1.0), ("loss_allowance_share", 11.0)])
def test_a_proposal_cannot_set_a_gate_out_of_range(name: str, bad: float) -> None:
    with pytest.raises(InvalidRequestError, match=f"parameter `{name}`"):
        FederationParameters().with_value(name, bad)


def test_a_passed_proposal_changes_the_gates_of_the_next_round(tmp_path: Path, tiny_config) -> None:
    coordinator = Coordinator.build(tiny_config(validation=True), tmp_path / "run")
    assert coordinator.gate_parameters() == GateParameters()
    for name, value in ROUND_GATES.items():
        _set(coordinator, name, value)
    gates = coordinator.gate_parameters()
    assert {name: getattr(gates, name) for name in ROUND_GATES} == ROUND_GATES

    # The validate phase reads them when it builds the round's messages: validators get the new floor.
    strategy = coordinator.strategy()
    phase = coordinator.validation_phase(strategy)
    assert phase is not None
    author, validator = _node(1, 0, "central"), _node(2, 1, "gpu")
    phase.on_nodes([author, validator])
    state = coordinator.starting_state(resume=False)
    peft = attach_lora(materialise(coordinator.base, state.deltas, state.head), rank=2, alpha=P.LORA_ALPHA_PER_RANK * 2, seed=1)
    outcome = RoundOutcome(1, results=[NodeResult(author, accepted=True, arrays=adapter_arrays(peft))])
    (message,) = phase.configure(1, state, outcome).messages
    config = message.content[P.REC_CONFIG]
    assert config[P.C_ENTROPY_MIN_RATIO] == ROUND_GATES["entropy_min_ratio"]
    assert config[P.C_ENTROPY_Z] == FederationParameters().entropy_gate_z
