"""A node's aggregation weight is bounded by what the coordinator knows: partition, declared size, governance cap."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, RecordDict
from sentinel.ledger.crypto import Ed25519PrivateKey, public_key_b64
from sentinel.ledger.kinds import EntryKind
from sentinel.protos import messages as P
from sentinel.server.coordinator import Coordinator
from sentinel.server.handshake import admit
from sentinel.server.outcome import NodeInfo

KEY = public_key_b64(Ed25519PrivateKey.generate().public_key())


def _set_cap(coordinator: Coordinator, cap: int) -> None:
    """Store a new parameters version and its act, as an executed ``set_parameter`` proposal does."""
    governor = coordinator.governance.governor
    now = datetime.now(UTC)
    with governor.store.transaction() as tx:
        tx.put_parameters(governor.parameters().with_value("max_examples_per_node", cap), at=now, cause="test: proposal executed")
        tx.record_act(EntryKind.EXECUTION, governor.actor, now, "test: proposal executed")


def _profile(**extra: object) -> RecordDict:
    return RecordDict({P.REC_PROFILE: ConfigRecord({P.P_PARTITION_ID: 0, P.P_PUBLIC_KEY: KEY, **extra})})  # type: ignore[dict-item]


def test_a_declared_size_is_kept_and_a_bad_one_refused(tiny_config) -> None:
    config = tiny_config()
    assert admit(7, _profile(), config, set()).declared_examples is None
    assert admit(7, _profile(**{P.P_DECLARED_EXAMPLES: 40}), config, set()).declared_examples == 40
    for bad in (-1, 2.5, "40"):
        with pytest.raises(ValueError, match="profile `declared-examples`"):
            admit(7, _profile(**{P.P_DECLARED_EXAMPLES: bad}), config, set())


def test_the_bound_is_the_least_of_partition_declared_size_and_governance_cap(tmp_path: Path, tiny_config) -> None:
    coordinator = Coordinator.build(tiny_config(), tmp_path / "run")
    partition = coordinator.train_sizes[0]
    assert coordinator._max_examples(NodeInfo(1, 0, "edge", KEY)) == partition
    assert coordinator._max_examples(NodeInfo(1, 0, "edge", KEY, declared_examples=partition - 3)) == partition - 3
    assert coordinator._max_examples(NodeInfo(1, 0, "edge", KEY, declared_examples=partition + 50)) == partition
    _set_cap(coordinator, 5)
    assert coordinator._max_examples(NodeInfo(1, 0, "edge", KEY)) == 5


@pytest.mark.slow
def test_claims_above_the_governance_cap_are_rejected_and_the_round_goes_on(tmp_path: Path, tiny_config, local_grid) -> None:
    coordinator = Coordinator.build(tiny_config(rounds=1, validation=False), tmp_path / "run")
    cap = min(coordinator.train_sizes) - 1  # below every honest claim
    _set_cap(coordinator, cap)
    result = coordinator.run(local_grid(3))
    row = result.history[-1]
    assert row["round"] == 1 and row["accepted"] == 0
    assert all(f"exceeds the {cap} training examples this node may claim" in n["reason"] for n in row["per_node"])
    rejected = list(coordinator.ledger.iter_entries(kind=EntryKind.UPDATE_REJECTED))
    assert len(rejected) == 3 and coordinator.ledger.verify().ok
