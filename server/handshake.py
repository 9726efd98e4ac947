"""The profile handshake: who the run's nodes are, checked against what the coordinator knows.

A node's profile is untrusted input. Its partition must be one of the run's
partitions and not claimed twice, its public key a well-formed Ed25519 key,
and its role is the one the run's configuration gives that partition (the
governance registry's role, in deployment): a node does not choose its own
role, and a profile that claims another one is refused. A refused node takes
no part in the run; the refusals are kept for the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sentinel.ledger.crypto import public_key_from_b64
from sentinel.protos import messages as P
from sentinel.server.config import FederationConfig
from sentinel.server.exceptions import NodesUnavailableError
from sentinel.server.outcome import NodeInfo


class NodeProfile(BaseModel):
    """A node's answer to the profile handshake."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    partition_id: int = Field(alias=P.P_PARTITION_ID, ge=0, strict=True)
    role: str = Field(alias=P.P_ROLE, default="")
    public_key: str = Field(alias=P.P_PUBLIC_KEY)
    declared_examples: int | None = Field(alias=P.P_DECLARED_EXAMPLES, default=None, ge=0, strict=True)
    lora_rank: int | None = Field(alias=P.P_LORA_RANK, default=None, ge=1, strict=True)
    own_data: bool = Field(alias=P.P_OWN_DATA, default=False, strict=True)

    @field_validator("public_key")
    @classmethod
    def _ed25519(cls, value: str) -> str:
        public_key_from_b64(value)  # ValueError names what is wrong
        return value


@dataclass(frozen=True)
class Handshake:
    """The nodes admitted to the run, and the ones refused with the reason."""

    nodes: list[NodeInfo]
    refused: dict[int, str] = field(default_factory=dict)


def admit(node_id: int, content: RecordDict, config: FederationConfig, taken: set[int]) -> NodeInfo:
    """The node a profile describes, or ``ValueError`` with the reason it is refused."""
    if P.REC_PROFILE not in content:
        raise ValueError("the reply has no profile record")
    try:
        profile = NodeProfile.model_validate(dict(content[P.REC_PROFILE]))
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"profile `{err['loc'][0]}`: {err['msg']}") from e
    pid = profile.partition_id
    if pid >= config.nodes:
        raise ValueError(f"partition {pid} is not one of the run's partitions 0..{config.nodes - 1}")
    if pid in taken:
        raise ValueError(f"partition {pid} is already taken by another node")
    role = config.role_of_partition(pid)
    if profile.role and profile.role != role:
        raise ValueError(f"the profile claims role {profile.role!r}; partition {pid} has role {role!r} in this run")
    largest = max(p.lora_rank for p in config.profiles.values())
    if profile.lora_rank is not None and profile.lora_rank > largest:
        raise ValueError(f"the profile asks for LoRA rank {profile.lora_rank}; this run allows at most {largest} (the largest role rank)")
    if profile.own_data and profile.declared_examples is None:
        raise ValueError("the node trains on its own dataset but declares no size (`declared-examples`)")
    return NodeInfo(node_id, pid, role, profile.public_key, profile.declared_examples, profile.lora_rank, profile.own_data)


def discover_nodes(grid: Grid, config: FederationConfig, timeout: float) -> Handshake:
    """Wait for the run's nodes, ask each for its profile, and admit those whose profile checks out.

    Raises :class:`NodesUnavailableError` when fewer nodes than the run needs
    connect or answer in time, or when none is admitted.
    """
    deadline = time.monotonic() + timeout
    while len(ids := sorted(grid.get_node_ids())) < config.nodes:
        if time.monotonic() > deadline:
            raise NodesUnavailableError(f"only {len(ids)} of {config.nodes} nodes connected within {timeout:.0f} s")
        time.sleep(0.2)
    query = ConfigRecord({P.C_RUN_SEED: config.seed})
    msgs = [Message(RecordDict({P.REC_CONFIG: query}), dst_node_id=n, message_type=P.MSG_PROFILE) for n in ids]
    nodes: list[NodeInfo] = []
    refused: dict[int, str] = {}
    answered = 0
    replies = sorted(grid.send_and_receive(msgs, timeout=max(1.0, deadline - time.monotonic())), key=lambda r: r.metadata.src_node_id)
    for reply in replies:
        src = reply.metadata.src_node_id
        if reply.has_error():
            log(INFO, "profile of node %s failed: %s", src, reply.error.reason)
            continue
        answered += 1
        try:
            nodes.append(admit(src, reply.content, config, {n.partition_id for n in nodes}))
        except ValueError as e:
            refused[src] = str(e)
            log(WARNING, "node %s refused: %s", src, e)
    if answered < config.nodes:
        raise NodesUnavailableError(f"{answered} of {config.nodes} nodes answered the profile handshake")
    if not nodes:
        raise NodesUnavailableError(f"every node was refused: {'; '.join(refused.values())}")
    return Handshake(sorted(nodes, key=lambda n: n.partition_id), refused)
