"""Proposals and votes: what can be proposed, how it is signed, counted and executed.

A proposal is a :class:`ProposalDocument` signed by its proposer; its id is
derived from the signed bytes. A vote is a :class:`VoteBody` —
``{proposal_id, voter, choice, nonce, timestamp}`` — signed by the voter; the
ledger entry of a vote is exactly that body, so anyone can verify it.

Counting (:func:`tally_votes`, :func:`decide`): the electorate is the active
nodes that hold a key. A proposal passes when at least ``quorum`` of the
electorate voted (abstentions count towards the quorum) and yes / (yes + no) is
above ``majority``. It is decided early as soon as the outcome cannot change
whatever the remaining voters do, otherwise at its deadline.

Execution (:func:`execute_spec`) is pure: it returns the new contract set, node
record or parameters, which the governor writes in one transaction.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from governance.contracts import AgencyState, AgencyStateName, ConsentContract, ContractSet, Grant, Operation, Role
from governance.exceptions import InvalidRequestError
from governance.parameters import FederationParameters
from governance.registry import NodeRecord, NodeRegistry, validate_node_id, validate_public_key
from governance.signing import check_nonce_format, format_timestamp, new_nonce, parse_timestamp, sign_document
from ledger.crypto import Ed25519PrivateKey, canonical_json, sha256_hex

Choice = Literal["yes", "no", "abstain"]
ProposalStatus = Literal["open", "executed", "rejected", "failed"]
CHOICES: tuple[Choice, ...] = ("yes", "no", "abstain")


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ContractChangeSpec(_Spec):
    """``grant`` or ``revoke`` ``operation`` on ``components`` (ids or glob patterns) for roles, nodes or everyone."""

    kind: Literal["grant", "revoke"]
    operation: Operation
    components: list[str] = Field(min_length=1)
    roles: list[Role] = Field(default_factory=list)
    nodes: list[str] = Field(default_factory=list)
    everyone: bool = False

    @model_validator(mode="after")
    def _names_someone(self) -> ContractChangeSpec:
        if not (self.roles or self.nodes or self.everyone):
            raise ValueError(f"a `{self.kind}` proposal must name `roles`, `nodes` or `everyone`")
        return self

    def as_grant(self) -> Grant:
        """The roles/nodes/everyone this change adds or removes."""
        return Grant(roles=frozenset(self.roles), nodes=frozenset(self.nodes), everyone=self.everyone)


class SetAgencySpec(_Spec):
    """Set the agency state of ``components`` (the only way to restore a withdrawn component)."""

    kind: Literal["set_agency"] = "set_agency"
    components: list[str] = Field(min_length=1)
    state: AgencyStateName
    reason: str = ""


class RegisterNodeSpec(_Spec):
    """Register a node (``public_key``: base64 raw Ed25519; empty: the node cannot vote)."""

    kind: Literal["register_node"] = "register_node"
    node_id: str
    role: Role
    organisation: str = ""
    public_key: str = ""

    @field_validator("node_id")
    @classmethod
    def _id(cls, node_id: str) -> str:
        return validate_node_id(node_id)

    @field_validator("public_key")
    @classmethod
    def _key(cls, public_key: str) -> str:
        validate_public_key(public_key)
        return public_key


class RemoveNodeSpec(_Spec):
    """Remove a node from the federation."""

    kind: Literal["remove_node"] = "remove_node"
    node_id: str
    reason: str = ""


class SetParameterSpec(_Spec):
    """Set one :class:`~governance.parameters.FederationParameters` field."""

    kind: Literal["set_parameter"] = "set_parameter"
    name: str
    value: float


ProposalSpec = Annotated[
    ContractChangeSpec | SetAgencySpec | RegisterNodeSpec | RemoveNodeSpec | SetParameterSpec,
    Field(discriminator="kind"),
]
PROPOSAL_KINDS = ("grant", "revoke", "set_agency", "register_node", "remove_node", "set_parameter")


class ProposalDocument(BaseModel):
    """What a proposer signs: the change, a title, an optional deadline, and replay protection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proposer: str
    nonce: str
    timestamp: str
    title: str = ""
    deadline: str = Field(default="", description="ISO 8601; empty: the federation's default voting period.")
    spec: ProposalSpec

    @field_validator("nonce")
    @classmethod
    def _nonce(cls, nonce: str) -> str:
        return check_nonce_format(nonce)

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, timestamp: str) -> str:
        parse_timestamp(timestamp)
        return timestamp

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, deadline: str) -> str:
        if deadline:
            parse_timestamp(deadline, "deadline")
        return deadline

    def signed_payload(self) -> dict:
        """The JSON object the signature covers (also the ledger payload of the proposal)."""
        return self.model_dump(mode="json")

    def proposal_id(self) -> str:
        """The proposal's id: the first 32 hex digits of the SHA-256 of the signed bytes."""
        return sha256_hex(canonical_json(self.signed_payload()))[:32]


class SignedProposal(BaseModel):
    """A proposal document with its proposer's base64 Ed25519 signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    document: ProposalDocument
    signature: str = ""


class VoteBody(BaseModel):
    """What a voter signs; also, verbatim, the ledger payload of the vote."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proposal_id: str = Field(min_length=1)
    voter: str
    choice: Choice
    nonce: str
    timestamp: str

    @field_validator("nonce")
    @classmethod
    def _nonce(cls, nonce: str) -> str:
        return check_nonce_format(nonce)

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, timestamp: str) -> str:
        parse_timestamp(timestamp)
        return timestamp

    def signed_payload(self) -> dict:
        """The JSON object the signature covers."""
        return self.model_dump(mode="json")


class SignedVote(BaseModel):
    """A vote body with the voter's base64 Ed25519 signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    body: VoteBody
    signature: str = ""


def sign_proposal(
    key: Ed25519PrivateKey,
    proposer: str,
    spec: ProposalSpec,
    *,
    title: str = "",
    deadline: datetime | None = None,
    nonce: str | None = None,
    timestamp: datetime | None = None,
) -> SignedProposal:
    """A proposal signed by ``proposer``'s ``key`` (fresh nonce and current time unless given)."""
    document = ProposalDocument(
        proposer=proposer,
        nonce=nonce or new_nonce(),
        timestamp=format_timestamp(timestamp),
        title=title,
        deadline=format_timestamp(deadline) if deadline is not None else "",
        spec=spec,
    )
    return SignedProposal(document=document, signature=sign_document(key, document.signed_payload()))


def sign_vote(
    key: Ed25519PrivateKey,
    proposal_id: str,
    voter: str,
    choice: Choice,
    *,
    nonce: str | None = None,
    timestamp: datetime | None = None,
) -> SignedVote:
    """A vote signed by ``voter``'s ``key`` (fresh nonce and current time unless given)."""
    body = VoteBody(
        proposal_id=proposal_id, voter=voter, choice=choice, nonce=nonce or new_nonce(), timestamp=format_timestamp(timestamp)
    )
    return SignedVote(body=body, signature=sign_document(key, body.signed_payload()))


class Tally(BaseModel):
    """Votes counted against the electorate, with the thresholds they were held to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    yes: int = 0
    no: int = 0
    abstain: int = 0
    eligible: int = 0
    quorum: float
    majority: float

    @property
    def cast(self) -> int:
        """Votes cast, abstentions included."""
        return self.yes + self.no + self.abstain

    @property
    def quorum_reached(self) -> bool:
        """At least ``quorum`` of the electorate voted."""
        return self.eligible > 0 and self.cast >= self.quorum * self.eligible

    @property
    def majority_reached(self) -> bool:
        """yes / (yes + no) is above ``majority``."""
        return self.yes + self.no > 0 and self.yes > self.majority * (self.yes + self.no)


def tally_votes(choices: Iterable[Choice], *, eligible: int, quorum: float, majority: float) -> Tally:
    """Count ``choices`` for an electorate of ``eligible`` nodes."""
    counts = {c: 0 for c in CHOICES}
    for choice in choices:
        counts[choice] += 1
    return Tally(yes=counts["yes"], no=counts["no"], abstain=counts["abstain"], eligible=eligible, quorum=quorum, majority=majority)


def decide(tally: Tally, *, deadline_passed: bool) -> Literal["passed", "rejected"] | None:
    """The outcome if it is settled: at the deadline always, before it only when no further vote can change it."""
    if deadline_passed:
        return "passed" if tally.quorum_reached and tally.majority_reached else "rejected"
    if tally.eligible == 0:
        return None
    remaining = max(0, tally.eligible - tally.cast)
    decisive_worst = tally.yes + tally.no + remaining
    if tally.quorum_reached and tally.yes > tally.majority * decisive_worst:
        return "passed"
    if tally.yes + remaining <= tally.majority * decisive_worst:
        return "rejected"
    return None


class ProposalRecord(BaseModel):
    """A stored proposal: its signed document, status, deadline and result."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proposal_id: str
    document: ProposalDocument
    signature: str
    status: ProposalStatus = "open"
    created_at: AwareDatetime
    deadline: AwareDatetime
    closed_at: AwareDatetime | None = None
    tally: Tally | None = None
    outcome: str = Field(default="", description="Why it closed as it did (or what execution changed).")

    @property
    def kind(self) -> str:
        """The proposal kind (``grant``, ``revoke``, ...)."""
        return self.document.spec.kind

    @property
    def proposer(self) -> str:
        """The node that signed the proposal."""
        return self.document.proposer


@dataclass
class Effects:
    """What executing a proposal changes (None: that part is unchanged)."""

    contracts: ContractSet | None = None
    node: NodeRecord | None = None
    parameters: FederationParameters | None = None
    changed_components: list[str] = field(default_factory=list)
    summary: str = ""


def resolve_components(patterns: Iterable[str], contracts: ContractSet) -> list[str]:
    """Component ids named by ``patterns`` (exact ids or ``fnmatch`` globs); each pattern must match one."""
    all_ids = contracts.components()
    found: set[str] = set()
    for pattern in patterns:
        matched = [c for c in all_ids if fnmatch.fnmatchcase(c, pattern)]
        if not matched:
            raise InvalidRequestError(f"`components` pattern {pattern!r} matches no component of model {contracts.model!r}")
        found.update(matched)
    return sorted(found)


def execute_spec(
    spec: ProposalSpec,
    contracts: ContractSet,
    registry: NodeRegistry,
    parameters: FederationParameters,
    *,
    at: datetime,
) -> Effects:
    """The state after ``spec`` takes effect at ``at``; :class:`InvalidRequestError` if it cannot."""
    if isinstance(spec, ContractChangeSpec):
        return _change_grants(spec, contracts)
    if isinstance(spec, SetAgencySpec):
        agency = AgencyState(state=spec.state, reason=spec.reason, since=at, source="governance")
        revised = [contracts.get(c).revised(agency=agency) for c in resolve_components(spec.components, contracts)]  # type: ignore[union-attr]
        return Effects(
            contracts=contracts.with_contracts(revised),
            changed_components=[c.component for c in revised],
            summary=f"agency of {len(revised)} component(s) set to {spec.state}",
        )
    if isinstance(spec, RegisterNodeSpec):
        existing = registry.get(spec.node_id)
        if existing is not None and existing.active:
            raise InvalidRequestError(f"node {spec.node_id!r} is already registered")
        node = NodeRecord(
            node_id=spec.node_id, role=spec.role, organisation=spec.organisation,
            public_key=spec.public_key or None, status="active", registered_at=at,
        )
        return Effects(node=node, summary=f"node {spec.node_id} registered as {spec.role}")
    if isinstance(spec, RemoveNodeSpec):
        existing = registry.get(spec.node_id)
        if existing is None or not existing.active:
            raise InvalidRequestError(f"node {spec.node_id!r} is not an active registered node")
        node = existing.model_copy(update={"status": "removed", "removed_at": at})
        return Effects(node=node, summary=f"node {spec.node_id} removed")
    new_parameters = parameters.with_value(spec.name, spec.value)
    return Effects(parameters=new_parameters, summary=f"parameter {spec.name} set to {spec.value}")


def _change_grants(spec: ContractChangeSpec, contracts: ContractSet) -> Effects:
    delta = spec.as_grant()
    revised: list[ConsentContract] = []
    for component in resolve_components(spec.components, contracts):
        contract = contracts.get(component)
        assert contract is not None  # resolve_components only returns ids of the set
        old = contract.grant(spec.operation)
        new = old.union(delta) if spec.kind == "grant" else old.minus(delta)
        if new == old:
            continue
        operations = {op: g for op, g in contract.operations.items() if op != spec.operation}
        if not new.is_empty():
            operations[spec.operation] = new
        revised.append(contract.revised(operations=operations))
    if not revised:
        return Effects(summary=f"{spec.kind} of {spec.operation} changed no contract (already in that state)")
    return Effects(
        contracts=contracts.with_contracts(revised),
        changed_components=[c.component for c in revised],
        summary=f"{spec.kind} {spec.operation} on {len(revised)} component(s)",
    )
