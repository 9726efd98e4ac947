"""What a node process keeps across rounds: its identity, its keys, its base model and its data.

The base model is loaded once per process and reused every round (each round
trains on a deep copy, so nothing leaks between rounds). A node's role and
partition come from Flower's node config in deployment (``--node-config``);
in simulation Flower gives only ``partition-id`` and the coordinator assigns
roles after the profile handshake.

**Keys are secret.** A node signs with the Ed25519 key in the file its node
config names (``key-file``; ``sentinel node --key-file``, made with ``sentinel
keys node``), and refuses to work without one. Only a simulation gives its
nodes keys itself: random keys made for the run and kept in the run directory
(:func:`ensure_simulated_keys`), whose location reaches the simulated nodes in
their node config (``node-keys``, added by :class:`SimulatedNodeApp`). The node
config is the node operator's, never the coordinator's: in deployment it is
exactly what ``flower-supernode --node-config`` says, so a run cannot point a
node at keys. Nothing about a key can be derived from public values such as
the run's seed or a partition id.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from pydantic import BaseModel, ConfigDict, Field
from sentinel.ledger.crypto import Ed25519PrivateKey, generate_private_key, load_private_key, private_key_to_pem, public_key_b64
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.protos.messages import NODE_EDGE_BUNDLE_DIR, NODE_STATE_DIR
from sentinel.protos.vocabulary import ROLES, Role


class NodeIdentity(BaseModel):
    """A node's static properties, validated from Flower's node config."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    partition_id: int = Field(alias="partition-id", ge=0)
    num_partitions: int = Field(alias="num-partitions", ge=1)
    role: Role | None = None
    key_file: str | None = Field(default=None, alias="key-file")
    node_keys: str | None = Field(default=None, alias="node-keys", description="Simulation only: the run's key directory.")
    device: str = Field(default="auto", description="auto (CUDA when present) | cpu | cuda | cuda:N")
    dataset: str | None = Field(default=None, description="This node's own data spec (`sentinel node --dataset`); None: the run's.")
    lora_rank: int | None = Field(default=None, alias="lora-rank", ge=1, description="Rank this node trains at; None: its role's.")
    declared_examples: int | None = Field(
        default=None,
        alias="declared-examples",
        ge=0,
        description="Training examples this node declares at registration: the most it may claim per round; None: not declared.",
    )
    edge_bundle_dir: str | None = Field(
        default=None,
        alias=NODE_EDGE_BUNDLE_DIR,
        description="Where this edge node keeps the bundles the coordinator delivers; None: beside its key or the user cache.",
    )
    state_dir: str | None = Field(
        default=None,
        alias=NODE_STATE_DIR,
        description="Where this node keeps state across restarts (its error-feedback residual); None: beside its key or the user cache.",
    )


def node_local_dir(configured: str | None, node_keys: str | None, partition_id: int, simulated: str, *cached: str) -> Path:
    """Where a node keeps files of its own between rounds and restarts (delivered bundles, error-feedback state).

    The ``configured`` directory; else, in a simulation, ``<run output>/<simulated>/partition-<i>`` beside the run's
    node keys (so ``--resume`` finds it); else the user cache, ``$XDG_CACHE_HOME/sentinel/<cached...>``.
    """
    if configured:
        return Path(configured).expanduser()
    if node_keys:
        return Path(node_keys).parent / simulated / f"partition-{int(partition_id)}"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sentinel" / Path(*cached)


SIMULATED_KEYS = "node-keys"
"""Node-config key: the directory of a simulated run's node keys (set by the simulation, never by a run)."""


class NodeKeyError(ValueError):
    """A node has no usable signing key."""


def simulated_key_path(directory: str | Path, partition_id: int) -> Path:
    """Where a simulated run keeps partition ``partition_id``'s key."""
    return Path(directory) / f"partition-{int(partition_id)}.key"


def ensure_simulated_keys(directory: str | Path, num_partitions: int) -> Path:
    """Random keys for partitions ``0..num_partitions-1`` in ``directory`` (mode 0700), made once.

    Existing keys are kept (``--resume`` signs with the same keys); each missing
    one is created exclusively, so two processes never end up with two keys.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    for pid in range(num_partitions):
        path = simulated_key_path(directory, pid)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(private_key_to_pem(generate_private_key()))
            f.flush()
            os.fsync(f.fileno())
    return directory


def simulated_node_key(directory: str | Path, partition_id: int) -> Ed25519PrivateKey:
    """The key a simulated node of partition ``partition_id`` signs with (tests act as that node with it)."""
    return load_private_key(simulated_key_path(directory, partition_id))


def node_identity(context: Context) -> NodeIdentity:
    """Parse the node config; a clear error names what is missing or wrong.

    Without ``key-file`` in the node config, a simulated node takes its
    partition's key from the run's simulated key directory (``node-keys`` in its
    node config); any other node is refused (:class:`NodeKeyError`).
    """
    cfg = dict(context.node_config)
    if "role" in cfg and cfg["role"] not in ROLES:
        raise ValueError(f"node config `role` is {cfg['role']!r}; expected one of {ROLES}")
    ident = NodeIdentity.model_validate(cfg)
    if ident.key_file:
        return ident
    keys = ident.node_keys
    if not keys:
        raise NodeKeyError(
            "this node has no signing key: set `key-file` in its node config "
            "(`sentinel node --key-file`, made with `sentinel keys node`)"
        )
    return ident.model_copy(update={"key_file": str(simulated_key_path(keys, ident.partition_id))})


def node_key(partition_id: int, key_file: str | None, run_seed: int = 0) -> Ed25519PrivateKey:
    """The node's Ed25519 signing key: the PEM file ``key_file`` (see :func:`node_identity`).

    ``partition_id`` and ``run_seed`` are not used to make a key (a key derived
    from public values would not be secret); they stay in the signature for
    callers. No key file is a :class:`NodeKeyError`.
    """
    if not key_file:
        raise NodeKeyError(f"node of partition {partition_id} has no signing key file (`key-file`)")
    try:
        return load_private_key(Path(key_file))
    except (OSError, ValueError) as e:
        raise NodeKeyError(f"cannot load the node's signing key: {e}") from e


def node_public_key(identity: NodeIdentity, run_seed: int = 0) -> str:
    """Base64 public key of this node."""
    return public_key_b64(node_key(identity.partition_id, identity.key_file, run_seed))


class SimulatedNodeApp:
    """A simulated node's app: ``app`` with the run's simulated key directory in its node config.

    Flower's simulation runtime gives simulated nodes only ``partition-id`` and
    ``num-partitions``; this wrapper adds ``node-keys`` (see :func:`node_identity`)
    without changing the Context Flower keeps; the node state is shared. It
    pickles, so Ray actors receive it like a ClientApp.
    """

    def __init__(self, app: Callable[..., Message], node_config: dict[str, Any]) -> None:
        self.app, self.node_config = app, dict(node_config)

    def __call__(self, message: Message, context: Context) -> Message:
        view = Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config={**dict(context.node_config), **self.node_config},
            state=context.state,
            run_config=context.run_config,
        )
        return self.app(message=message, context=view)


@lru_cache(maxsize=2)
def cached_base_model(name: str, num_labels: int, seed: int = 0) -> LoadedModel:
    """The base model for classification, loaded once per process."""
    return load_base_model(name, task="classification", num_labels=num_labels, seed=seed)
