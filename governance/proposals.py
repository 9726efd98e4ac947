"""Proposals and votes: what can be proposed, how it is signed, counted and executed.

A proposal is a :class:`ProposalDocument` signed by its proposer; its id is
derived from the signed bytes. A vote is a :class:`VoteBody` —
``{proposal_id, voter, choice, nonce, timestamp}`` — signed by the voter; the
ledger entry of a vote is exactly that body, so anyone can verify it.

Counting is in :mod:`governance.voting`, execution in :mod:`governance.execution`.
Every field is bounded (:mod:`governance.limits`), so a proposal that passes
validation can be stored, recorded and listed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from sentinel.governance.contracts import AgencyStateName, Grant, Operation
from sentinel.governance.limits import (
    MAX_COMPONENTS,
    MAX_NODES,
    MAX_ORGANISATION,
    MAX_PARAMETER_NAME,
    MAX_PROPOSAL_ID,
    MAX_REASON,
    MAX_ROLES,
    MAX_TIMESTAMP,
    MAX_TITLE,
)
from sentinel.governance.patterns import ComponentPattern
from sentinel.governance.registry import NodeIdText, validate_public_key
from sentinel.governance.signing import Nonce, Timestamp, format_timestamp, new_nonce, parse_timestamp, sign_document
from sentinel.governance.voting import Choice, Tally
from sentinel.ledger.crypto import Ed25519PrivateKey, canonical_json, sha256_hex
from sentinel.protos.vocabulary import Role

ProposalStatus = Literal["open", "executed", "rejected", "failed"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ContractChangeSpec(_Spec):
    """``grant`` or ``revoke`` ``operation`` on ``components`` (ids or glob patterns) for roles, nodes or everyone."""

    kind: Literal["grant", "revoke"]
    operation: Operation
    components: list[ComponentPattern] = Field(min_length=1, max_length=MAX_COMPONENTS)
    roles: list[Role] = Field(default_factory=list, max_length=MAX_ROLES)
    nodes: list[NodeIdText] = Field(default_factory=list, max_length=MAX_NODES)
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
    components: list[ComponentPattern] = Field(min_length=1, max_length=MAX_COMPONENTS)
    state: AgencyStateName
    reason: str = Field(default="", max_length=MAX_REASON)


class RegisterNodeSpec(_Spec):
    """Register a node (``public_key``: base64 raw Ed25519; empty: the node cannot vote)."""

    kind: Literal["register_node"] = "register_node"
    node_id: NodeIdText
    role: Role
    organisation: str = Field(default="", max_length=MAX_ORGANISATION)
    public_key: str = Field(default="", max_length=100)

    @field_validator("public_key")
    @classmethod
    def _key(cls, public_key: str) -> str:
        validate_public_key(public_key)
        return public_key


class RemoveNodeSpec(_Spec):
    """Remove a node from the federation."""

    kind: Literal["remove_node"] = "remove_node"
    node_id: NodeIdText
    reason: str = Field(default="", max_length=MAX_REASON)


class SetParameterSpec(_Spec):
    """Set one :class:`~governance.parameters.FederationParameters` field."""

    kind: Literal["set_parameter"] = "set_parameter"
    name: str = Field(min_length=1, max_length=MAX_PARAMETER_NAME)
    value: float = Field(allow_inf_nan=False)


ProposalSpec = Annotated[
    ContractChangeSpec | SetAgencySpec | RegisterNodeSpec | RemoveNodeSpec | SetParameterSpec,
    Field(discriminator="kind"),
]
PROPOSAL_KINDS = ("grant", "revoke", "set_agency", "register_node", "remove_node", "set_parameter")


class ProposalDocument(BaseModel):
    """What a proposer signs: the change, a title, an optional deadline, and replay protection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proposer: NodeIdText
    nonce: Nonce
    timestamp: Timestamp
    title: str = Field(default="", max_length=MAX_TITLE)
    deadline: str = Field(
        default="", max_length=MAX_TIMESTAMP, description="ISO 8601; empty: the federation's default voting period."
    )
    spec: ProposalSpec

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
    signature: str = Field(default="", max_length=200)


class VoteBody(BaseModel):
    """What a voter signs; also, verbatim, the ledger payload of the vote."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    proposal_id: str = Field(min_length=1, max_length=MAX_PROPOSAL_ID)
    voter: NodeIdText
    choice: Choice
    nonce: Nonce
    timestamp: Timestamp

    def signed_payload(self) -> dict:
        """The JSON object the signature covers."""
        return self.model_dump(mode="json")


class SignedVote(BaseModel):
    """A vote body with the voter's base64 Ed25519 signature."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    body: VoteBody
    signature: str = Field(default="", max_length=200)


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


