"""`sentinel node --dataset/--lora-rank`: a node trains on its own data at its own rank, and the coordinator knows it."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, RecordDict
from sentinel.client.app import app as client_app
from sentinel.client.data import load_examples
from sentinel.client.data.federated import own_train_val
from sentinel.ledger.crypto import Ed25519PrivateKey, public_key_b64
from sentinel.protos import messages as P
from sentinel.server.coordinator import Coordinator
from sentinel.server.handshake import admit
from sentinel.server.local_grid import LocalGrid

KEY = public_key_b64(Ed25519PrivateKey.generate().public_key())
OWN = "builtin:reviews?n=90&domains=hotels"


def _profile(**extra: object) -> RecordDict:
    return RecordDict({P.REC_PROFILE: ConfigRecord({P.P_PARTITION_ID: 0, P.P_PUBLIC_KEY: KEY, **extra})})  # type: ignore[dict-item]


def test_the_handshake_checks_a_nodes_own_rank_and_data(tiny_config) -> None:
    config = tiny_config()  # ranks 2 (edge) and 8 (gpu, central)
    node = admit(7, _profile(**{P.P_LORA_RANK: 4, P.P_OWN_DATA: True, P.P_DECLARED_EXAMPLES: 90}), config, set())
    assert (node.lora_rank, node.own_data, node.declared_examples) == (4, True, 90)
    with pytest.raises(ValueError, match="LoRA rank 9; this run allows at most 8"):
        admit(7, _profile(**{P.P_LORA_RANK: 9}), config, set())
    with pytest.raises(ValueError, match="own dataset but declares no size"):
        admit(7, _profile(**{P.P_OWN_DATA: True}), config, set())


def test_own_labels_must_be_the_runs_classes() -> None:
    train, val = own_train_val(OWN, 2, 0.2, seed=0)
    assert len(train) + len(val) == len(load_examples(OWN)) and val
    with pytest.raises(ValueError, match="outside the run's 1 classes"):
        own_train_val(OWN, 1, 0.2, seed=0)


@pytest.mark.slow
def test_a_node_on_its_own_data_at_its_own_rank_is_accepted(tmp_path: Path, tiny_config) -> None:
    ids = [3001, 3008, 3015]
    own = {"dataset": OWN, "lora-rank": 4}  # the gpu node (partition 2; its role's rank is 8)
    configs = {n: {"partition-id": i, "num-partitions": 3, **(own if i == 2 else {})} for i, n in enumerate(ids)}
    coordinator = Coordinator.build(tiny_config(rounds=1, validation=False), tmp_path / "run")
    result = coordinator.run(LocalGrid({n: client_app for n in ids}, configs))
    node = next(n for n in result.nodes if n.partition_id == 2)
    assert (node.lora_rank, node.own_data, node.declared_examples) == (4, True, len(load_examples(OWN)))
    row = next(r for r in result.history[-1]["per_node"] if r["partition_id"] == 2)
    assert row["accepted"], row["reason"]
    assert row["rank"] == 4
    own_train, _ = own_train_val(OWN, 2, coordinator.config.val_fraction, coordinator.config.seed, 2)
    assert row["examples"] == len(own_train) != coordinator.train_sizes[2]
