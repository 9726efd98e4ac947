"""The payload schema of each entry kind, and the checks an append makes.

The kinds themselves (:class:`~sentinel.protos.vocabulary.EntryKind`) and the
coordinator's actor name live in :mod:`sentinel.protos.vocabulary`.

Payloads are stored exactly as given (as canonical JSON), so what a node signs is
what the ledger keeps; the schemas here only *check* them on append. They are
strict (no coercion: a round is an int, a node id a string) and open (extra
fields are kept), and accept the governance package's spellings (``node_id``,
``server_round``, ``offending_components``) next to the ledger's own.

Numbers: JSON floats are allowed in free-form parts (a round's ``config``) since
RFC 8785 formats them deterministically, but the numbers the ledger itself
interprets are never floats: contribution ``score`` is a decimal *string*
(``score_text`` makes one: Python's shortest round-trip repr) or an int, token
amounts are ints. Node ids are strings (Flower's are uint64, beyond JSON's safe
integer range).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, field_validator
from sentinel.ledger.crypto import public_key_from_b64
from sentinel.ledger.exceptions import InvalidEntryError
from sentinel.protos.vocabulary import COORDINATOR, EntryKind

ContributionMethod = Literal["loo", "shapley"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")

NodeId = Annotated[StrictStr, Field(min_length=1, max_length=128)]
Round = Annotated[StrictInt, Field(ge=0)]
_NODE = AliasChoices("node", "node_id")
_ROUND = AliasChoices("round", "server_round")


def score_text(value: float | int) -> str:
    """The payload form of a contribution score: an int's digits or a float's shortest round-trip repr."""
    if isinstance(value, bool):
        raise ValueError("`score` must be a number, not a bool")
    if isinstance(value, int):
        return str(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`score` must be finite, got {value!r}")
    return repr(value)


def _check_hex64(value: str, name: str) -> str:
    if not _HEX64.fullmatch(value):
        raise ValueError(f"`{name}` must be 64 lowercase hex characters (a SHA-256 digest)")
    return value


class _Payload(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class NodeRegisteredPayload(_Payload):
    """A node joined the federation; ``public_key`` (base64 Ed25519) verifies its later signatures."""

    node: NodeId = Field(validation_alias=_NODE)
    role: StrictStr | None = None
    public_key: StrictStr | None = None

    @field_validator("public_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value:
            public_key_from_b64(value)
        return value


class NodeRemovedPayload(_Payload):
    """A node left or was removed."""

    node: NodeId = Field(validation_alias=_NODE)


class RoundStartedPayload(_Payload):
    """A training round began with this configuration."""

    round: Round = Field(validation_alias=_ROUND)
    config: dict[str, Any] = Field(default_factory=dict)


class UpdateSubmittedPayload(_Payload):
    """A node's update reached the coordinator: content hash of its arrays and its example count."""

    node: NodeId = Field(validation_alias=_NODE)
    round: Round = Field(validation_alias=_ROUND)
    content_hash: StrictStr
    examples: Annotated[StrictInt, Field(ge=0)]

    @field_validator("content_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        return _check_hex64(value, "content_hash")


class ValidationVerdictPayload(_Payload):
    """One validator's verdict on a node's update (``node`` is the update's author)."""

    node: NodeId = Field(validation_alias=_NODE)
    round: Round = Field(validation_alias=_ROUND)
    validator: NodeId
    accept: bool
    reason: StrictStr = ""


class UpdateDecisionPayload(_Payload):
    """A node's update was accepted into (or rejected from) the round's aggregate."""

    node: NodeId = Field(validation_alias=_NODE)
    round: Round = Field(validation_alias=_ROUND)
    reason: StrictStr = ""


class ConsentViolationPayload(_Payload):
    """A node's update touched components outside its permitted set."""

    node: NodeId = Field(validation_alias=_NODE)
    round: Round = Field(validation_alias=_ROUND)
    components: list[StrictStr] = Field(
        min_length=1, validation_alias=AliasChoices("components", "offending_components")
    )


class ContributionPayload(_Payload):
    """A node's contribution score for a round, and how it was measured."""

    node: NodeId = Field(validation_alias=_NODE)
    round: Round = Field(validation_alias=_ROUND)
    score: StrictStr | StrictInt
    method: ContributionMethod

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError(f"must be a decimal string or an int, not {type(value).__name__} (use ledger.kinds.score_text)")
        if isinstance(value, str) and not _DECIMAL.fullmatch(value):
            raise ValueError(f"{value!r} is not a decimal number (use ledger.kinds.score_text)")
        return value


class TokensPayload(_Payload):
    """A round's token distribution: integer amounts per node (balances are sums of these)."""

    round: Round = Field(validation_alias=_ROUND)
    allocations: dict[NodeId, Annotated[StrictInt, Field(ge=0)]]
    budget: Annotated[StrictInt, Field(ge=0)] | None = None


class CheckpointPayload(_Payload):
    """The global adapter after a round, by content hash."""

    round: Round = Field(validation_alias=_ROUND)
    adapter_hash: StrictStr

    @field_validator("adapter_hash")
    @classmethod
    def _hash(cls, value: str) -> str:
        return _check_hex64(value, "adapter_hash")


PAYLOAD_SCHEMAS: Mapping[EntryKind, type[BaseModel]] = {
    EntryKind.NODE_REGISTERED: NodeRegisteredPayload,
    EntryKind.NODE_REMOVED: NodeRemovedPayload,
    EntryKind.ROUND_STARTED: RoundStartedPayload,
    EntryKind.UPDATE_SUBMITTED: UpdateSubmittedPayload,
    EntryKind.VALIDATION_VERDICT: ValidationVerdictPayload,
    EntryKind.UPDATE_ACCEPTED: UpdateDecisionPayload,
    EntryKind.UPDATE_REJECTED: UpdateDecisionPayload,
    EntryKind.CONSENT_VIOLATION: ConsentViolationPayload,
    EntryKind.CONTRIBUTION: ContributionPayload,
    EntryKind.TOKENS: TokensPayload,
    EntryKind.CHECKPOINT: CheckpointPayload,
}
"""Kinds with a schema; the governance kinds (proposal, vote, execution, contract change) are free-form objects."""


def parse_kind(kind: str) -> EntryKind:
    """The :class:`EntryKind` named by ``kind``; :class:`InvalidEntryError` lists the valid names."""
    try:
        return EntryKind(kind)
    except ValueError as e:
        valid = ", ".join(k.value for k in EntryKind)
        raise InvalidEntryError(f"unknown entry `kind` {kind!r}; expected one of: {valid}") from e


def check_payload(kind: EntryKind, payload: Mapping[str, Any]) -> None:
    """Raise :class:`InvalidEntryError` naming each problem if ``payload`` breaks ``kind``'s schema."""
    if not isinstance(payload, Mapping):
        raise InvalidEntryError(f"`payload` of a {kind.value} entry must be a JSON object, got {type(payload).__name__}")
    schema = PAYLOAD_SCHEMAS.get(kind)
    if schema is None:
        return
    try:
        schema.model_validate(dict(payload))
    except ValidationError as e:
        problems = "; ".join(
            f"`{'.'.join(str(p) for p in err['loc']) or 'payload'}`: {err['msg']}" for err in e.errors()
        )
        raise InvalidEntryError(f"invalid {kind.value} payload: {problems}") from e


def check_actor(actor: str) -> str:
    """``actor`` itself if it is :data:`COORDINATOR` or a node id string; :class:`InvalidEntryError` otherwise."""
    if not isinstance(actor, str) or not actor or len(actor) > 128 or actor != actor.strip():
        raise InvalidEntryError(
            f"`actor` must be {COORDINATOR!r} or a node id string (1-128 characters, no surrounding spaces), got {actor!r}"
        )
    return actor


def payload_node(payload: Mapping[str, Any], actor: str) -> str | None:
    """The node an entry is about (its payload's ``node``/``node_id``, else a node actor), for filtering."""
    for key in ("node", "node_id"):
        value = payload.get(key)
        if isinstance(value, str) and value:
            return value
    return None if actor == COORDINATOR else actor
