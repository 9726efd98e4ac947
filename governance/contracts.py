"""Consent contracts: the metadata header every model component carries.

A contract says who may do what to a component (``operations``: for each of
``adapt``, ``prune``, ``grow`` and ``distill`` a :class:`Grant` naming roles,
node ids or everyone), for which purposes, until when, and what the component
itself currently signals (:class:`AgencyState`). A :class:`ContractSet` holds the
contracts of every component of one model under one set version; it is what the
coordinator sends to nodes and saves with checkpoints.

All datetimes are timezone-aware (naive values are rejected: a naive time is
ambiguous across machines).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator
from sentinel.ledger.crypto import canonical_json, sha256_hex
from sentinel.protos.vocabulary import Role, parse_component

Operation = Literal["adapt", "prune", "grow", "distill"]
AgencyStateName = Literal["active", "resting", "withdrawn"]
AgencySource = Literal["policy", "measurement", "governance"]

OPERATIONS: tuple[Operation, ...] = ("adapt", "prune", "grow", "distill")
AGENCY_STATES: tuple[AgencyStateName, ...] = ("active", "resting", "withdrawn")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Grant(BaseModel):
    """Who may perform one operation: any of ``roles``, the listed ``nodes``, or ``everyone``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: frozenset[Role] = Field(default_factory=frozenset, description="Roles granted the operation.")
    nodes: frozenset[str] = Field(default_factory=frozenset, description="Node ids granted the operation.")
    everyone: bool = Field(default=False, description="Every registered, active node is granted the operation.")

    @field_validator("nodes")
    @classmethod
    def _nodes_non_empty(cls, nodes: frozenset[str]) -> frozenset[str]:
        if any(not n for n in nodes):
            raise ValueError("`nodes` must not contain an empty node id")
        return nodes

    @field_serializer("roles", "nodes")
    def _sorted(self, values: frozenset[str]) -> list[str]:
        return sorted(values)

    def is_empty(self) -> bool:
        """True iff nobody is granted anything."""
        return not (self.roles or self.nodes or self.everyone)

    def union(self, other: Grant) -> Grant:
        """The grant allowing everyone either grant allows."""
        return Grant(roles=self.roles | other.roles, nodes=self.nodes | other.nodes, everyone=self.everyone or other.everyone)

    def minus(self, other: Grant) -> Grant:
        """This grant with ``other``'s roles and nodes taken away (and ``everyone`` if ``other`` names it)."""
        return Grant(
            roles=self.roles - other.roles,
            nodes=self.nodes - other.nodes,
            everyone=self.everyone and not other.everyone,
        )


class AgencyState(BaseModel):
    """The component's own signal of whether it may be changed now, with why and since when.

    ``active``: operations follow the grants. ``resting``: the component asks not to
    be trained now (``adapt`` and ``grow`` denied; ``prune`` and ``distill`` follow
    the grants). ``withdrawn``: nobody may change it at all until a governance act
    restores it. ``source`` says who set the state: the policy file, a measurement
    rule (:mod:`governance.agency`) or a governance act.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    state: AgencyStateName = "active"
    reason: str = ""
    since: AwareDatetime = _EPOCH
    source: AgencySource = "policy"


class ConsentContract(BaseModel):
    """The consent contract of one component (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str = Field(description="Component id, e.g. `layer.3.head.5`.")
    steward: str = Field(min_length=1, description="Who answers for this component (organisation or person).")
    operations: dict[Operation, Grant] = Field(default_factory=dict, description="Who may perform each operation.")
    purposes: list[str] = Field(default_factory=list, description="Purposes the component may be used for.")
    expires_at: AwareDatetime | None = Field(default=None, description="After this time every operation is denied.")
    agency: AgencyState = Field(default_factory=AgencyState)
    version: int = Field(default=1, ge=1, description="Incremented on every change of this contract.")

    @field_validator("component")
    @classmethod
    def _valid_component(cls, component: str) -> str:
        parse_component(component)
        return component

    def grant(self, operation: Operation) -> Grant:
        """The grant for ``operation`` (empty when the contract does not mention it)."""
        return self.operations.get(operation, _EMPTY_GRANT)

    def revised(self, **changes: object) -> ConsentContract:
        """A copy with ``changes`` applied and the version incremented (validated again)."""
        data = self.model_dump()
        data.update(changes)
        data["version"] = self.version + 1
        return ConsentContract.model_validate(data)


_EMPTY_GRANT = Grant()


class ContractSet(BaseModel):
    """The contracts of every component of one model, under one set version.

    The set version increments with every governance act that changes any
    contract; nodes train against the version the coordinator sent them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1, description="The model these contracts belong to (id or path).")
    version: int = Field(default=1, ge=1, description="Set version; increments on every change.")
    contracts: dict[str, ConsentContract] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keys_match(self) -> ContractSet:
        for key, contract in self.contracts.items():
            if key != contract.component:
                raise ValueError(f"`contracts` key {key!r} holds the contract of {contract.component!r}")
        return self

    def get(self, component: str) -> ConsentContract | None:
        """The contract of ``component``, or None when the set has none."""
        return self.contracts.get(component)

    def __contains__(self, component: object) -> bool:
        return component in self.contracts

    def __iter__(self) -> Iterator[ConsentContract]:  # type: ignore[override]
        return iter(self.contracts[c] for c in sorted(self.contracts))

    def __len__(self) -> int:
        return len(self.contracts)

    def components(self) -> list[str]:
        """All component ids, sorted."""
        return sorted(self.contracts)

    def with_contracts(self, changed: Iterable[ConsentContract]) -> ContractSet:
        """A new set (version + 1) in which ``changed`` replace the contracts of their components."""
        contracts = dict(self.contracts)
        for contract in changed:
            contracts[contract.component] = contract
        return ContractSet(model=self.model, version=self.version + 1, contracts=contracts)

    def to_json(self) -> str:
        """JSON text of the whole set (round-trips through :meth:`from_json`)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> ContractSet:
        """Parse JSON written by :meth:`to_json` (validated)."""
        return cls.model_validate_json(text)

    def content_hash(self) -> str:
        """Hex SHA-256 of the set's canonical JSON: equal iff model, version and every contract are equal."""
        return sha256_hex(canonical_json(self.model_dump(mode="json")))
