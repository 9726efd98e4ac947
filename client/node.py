"""What a node process keeps across rounds: its identity, its base model and its data.

The base model is loaded once per process and reused every round (each round
trains on a deep copy, so nothing leaks between rounds). A node's role and
partition come from Flower's node config in deployment (``--node-config``);
in simulation Flower gives only ``partition-id`` and the coordinator assigns
roles after the profile handshake.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from flwr.app import Context
from pydantic import BaseModel, ConfigDict, Field
from sentinel.ledger.crypto import Ed25519PrivateKey, load_private_key, public_key_b64
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.protos.vocabulary import ROLES, Role


class NodeIdentity(BaseModel):
    """A node's static properties, validated from Flower's node config."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    partition_id: int = Field(alias="partition-id", ge=0)
    num_partitions: int = Field(alias="num-partitions", ge=1)
    role: Role | None = None
    key_file: str | None = Field(default=None, alias="key-file")
    device: str = Field(default="auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")


def node_identity(context: Context) -> NodeIdentity:
    """Parse the node config; a clear error names what is missing or wrong."""
    cfg = dict(context.node_config)
    if "role" in cfg and cfg["role"] not in ROLES:
        raise ValueError(f"node config `role` is {cfg['role']!r}; expected one of {ROLES}")
    return NodeIdentity.model_validate(cfg)


@lru_cache(maxsize=4)
def node_key(partition_id: int, key_file: str | None, run_seed: int = 0) -> Ed25519PrivateKey:
    """The node's Ed25519 signing key.

    Deployment: the PEM file named by ``key-file`` in the node config (make one
    with ``sentinel keys generate``). Simulation: a key derived from the run seed
    and the partition id, so every process of a simulated node signs with the
    same key — reproducible, and therefore not secret.
    """
    if key_file:
        return load_private_key(Path(key_file))
    seed = hashlib.sha256(f"sentinel-simulated-node:{run_seed}:{partition_id}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def node_public_key(identity: NodeIdentity, run_seed: int = 0) -> str:
    """Base64 public key of this node."""
    return public_key_b64(node_key(identity.partition_id, identity.key_file, run_seed))


@lru_cache(maxsize=2)
def cached_base_model(name: str, num_labels: int, seed: int = 0) -> LoadedModel:
    """The base model for classification, loaded once per process."""
    return load_base_model(name, task="classification", num_labels=num_labels, seed=seed)
