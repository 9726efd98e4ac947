"""The node registry: which nodes belong to the federation, in which role, with which key.

Registration and removal are governance acts (:class:`governance.governor.Governor`
performs them and records them on the ledger); this module holds the records and
a read-only snapshot of the registry that the policy engine and the vote checks use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator
from sentinel.ledger.crypto import public_key_from_b64
from sentinel.protos.vocabulary import Role

NodeStatus = Literal["active", "removed"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def validate_node_id(node_id: str) -> str:
    """Node ids are non-empty strings without surrounding whitespace (Flower's uint64 ids as decimal text)."""
    if not isinstance(node_id, str) or not node_id or node_id != node_id.strip():
        raise ValueError(f"`node_id` {node_id!r} must be a non-empty string without surrounding whitespace")
    if len(node_id) > 128:
        raise ValueError(f"`node_id` is {len(node_id)} characters long; at most 128 are allowed")
    return node_id


NodeIdText = Annotated[str, AfterValidator(validate_node_id)]
"""A ``node_id`` field (pydantic), checked by :func:`validate_node_id`."""


def validate_public_key(public_key: str | None) -> str | None:
    """A base64 raw Ed25519 public key, or None for a node that cannot sign."""
    if public_key is None or public_key == "":
        return None
    public_key_from_b64(public_key)
    return public_key


class NodeRecord(BaseModel):
    """One registered node: id, role, organisation, Ed25519 public key (base64) and status."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    node_id: NodeIdText
    role: Role
    organisation: str = ""
    public_key: str | None = Field(default=None, description="Base64 raw Ed25519 key; None: the node cannot vote.")
    status: NodeStatus = "active"
    registered_at: AwareDatetime = _EPOCH
    removed_at: AwareDatetime | None = None

    @field_validator("public_key")
    @classmethod
    def _check_key(cls, public_key: str | None) -> str | None:
        return validate_public_key(public_key)

    @property
    def active(self) -> bool:
        """True iff the node has not been removed."""
        return self.status == "active"


class NodeRegistry(Mapping[str, NodeRecord]):
    """An immutable snapshot of the registry, keyed by node id (removed nodes included)."""

    def __init__(self, records: Iterable[NodeRecord] = ()) -> None:
        self._records: dict[str, NodeRecord] = {}
        for record in records:
            self._records[record.node_id] = record

    @classmethod
    def from_roles(cls, roles: Mapping[str, Role]) -> NodeRegistry:
        """A registry of active, keyless nodes from a plain ``node -> role`` mapping."""
        return cls(NodeRecord(node_id=str(node), role=role) for node, role in roles.items())

    def __getitem__(self, node_id: str) -> NodeRecord:
        return self._records[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def active(self) -> list[NodeRecord]:
        """Active nodes, sorted by id."""
        return [self._records[n] for n in sorted(self._records) if self._records[n].active]

    def role(self, node_id: str) -> Role | None:
        """The role of an active node, or None when unknown or removed."""
        record = self._records.get(node_id)
        return record.role if record is not None and record.active else None

    def voters(self) -> list[NodeRecord]:
        """Active nodes that hold a public key: the electorate of proposals."""
        return [r for r in self.active() if r.public_key]
