"""What a node resolves from its own config: device, identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, RecordDict
from sentinel.client.node import (
    SIMULATED_KEYS,
    NodeKeyError,
    ensure_simulated_keys,
    node_identity,
    node_key,
    node_public_key,
    simulated_node_key,
)
from sentinel.ledger.crypto import generate_private_key, public_key_b64, save_private_key


def test_device_resolution_is_explicit_about_missing_cuda() -> None:
    import torch
    from sentinel.client.training import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")



def ctx(cfg: dict, run_config: dict | None = None) -> Context:
    return Context(run_id=1, node_id=7, node_config=cfg, state=RecordDict(), run_config=run_config or {})


def test_node_identity_is_validated_with_clear_errors(tmp_path: Path) -> None:
    key = save_private_key(generate_private_key(), tmp_path / "node.key")
    ident = node_identity(ctx({"partition-id": 2, "num-partitions": 4, "role": "edge", "device": "cpu", "key-file": str(key)}))
    assert (ident.partition_id, ident.num_partitions, ident.role, ident.device) == (2, 4, "edge", "cpu")
    with pytest.raises(ValueError, match="role"):
        node_identity(ctx({"partition-id": 0, "num-partitions": 1, "role": "laptop"}))
    with pytest.raises(ValueError, match="partition-id"):
        node_identity(ctx({"num-partitions": 1}))


def test_a_node_without_a_key_file_is_refused_outside_a_simulation() -> None:
    with pytest.raises(NodeKeyError, match="key-file"):
        node_identity(ctx({"partition-id": 0, "num-partitions": 1}))
    with pytest.raises(NodeKeyError, match="key-file"):
        node_key(0, None, 0)


def test_a_node_signs_with_its_key_file(tmp_path: Path) -> None:
    key = generate_private_key()
    path = save_private_key(key, tmp_path / "node.key")
    ident = node_identity(ctx({"partition-id": 0, "num-partitions": 1, "key-file": str(path)}))
    assert node_public_key(ident) == public_key_b64(key)
    with pytest.raises(NodeKeyError, match="does not exist"):
        node_key(0, str(tmp_path / "missing.key"))


def test_simulated_keys_are_random_per_run_kept_for_resume_and_not_derivable(tmp_path: Path) -> None:
    a = ensure_simulated_keys(tmp_path / "a", 3)
    b = ensure_simulated_keys(tmp_path / "b", 3)
    keys_a = [public_key_b64(simulated_node_key(a, i)) for i in range(3)]
    keys_b = [public_key_b64(simulated_node_key(b, i)) for i in range(3)]
    assert len(set(keys_a)) == 3 and not set(keys_a) & set(keys_b)  # same seed and partitions, other keys
    ensure_simulated_keys(a, 4)  # resume (and a larger federation) keeps existing keys
    assert [public_key_b64(simulated_node_key(a, i)) for i in range(3)] == keys_a
    assert (a / "partition-0.key").stat().st_mode & 0o077 == 0
    ident = node_identity(ctx({"partition-id": 1, "num-partitions": 3, SIMULATED_KEYS: str(a)}))
    assert node_public_key(ident, run_seed=0) == keys_a[1]
    with pytest.raises(NodeKeyError):  # a run cannot point a node at keys: only its node config can
        node_identity(ctx({"partition-id": 1, "num-partitions": 3}, {SIMULATED_KEYS: str(a)}))


def test_the_old_derivable_key_is_gone(tmp_path: Path) -> None:
    import hashlib

    from sentinel.ledger.crypto import Ed25519PrivateKey

    keys = ensure_simulated_keys(tmp_path, 1)
    derived = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"sentinel-simulated-node:0:0").digest())
    assert public_key_b64(simulated_node_key(keys, 0)) != public_key_b64(derived)
