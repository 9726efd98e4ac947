"""The ledger's records as callers see them: entries, append requests, reports and summaries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sentinel.ledger.chain import Envelope, entry_hash, signature_valid
from sentinel.ledger.crypto import Ed25519PublicKey
from sentinel.protos.vocabulary import EntryKind


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One entry to append (see :meth:`ledger.store.Ledger.append` for the fields)."""

    kind: EntryKind | str
    actor: str
    payload: dict[str, Any]
    node_signature: str | None = None
    node_public_key: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One stored entry: its hashed content, its hash and the coordinator's signature.

    ``payload_json`` is the canonical JSON text that was hashed (and that a node
    signed); ``payload`` parses it (a fresh dict each time). ``node`` is the node
    the entry is about, derived from the payload, for filtering.
    """

    seq: int
    timestamp: str
    kind: EntryKind
    actor: str
    payload_json: str
    prev_hash: str
    prev_signature: str | None
    hash: str
    signature: str
    node_signature: str | None = None
    node_public_key: str | None = None
    node: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The payload, parsed from ``payload_json``."""
        return json.loads(self.payload_json)  # type: ignore[no-any-return]

    def to_dict(self) -> dict[str, Any]:
        """Every field plus the parsed payload, as JSON-ready values."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        return {**fields, "kind": str(self.kind), "payload": self.payload}

    def envelope(self) -> Envelope:
        """The hashed part of this entry."""
        return Envelope(
            seq=self.seq,
            timestamp=self.timestamp,
            kind=str(self.kind),
            actor=self.actor,
            payload=self.payload_json,
            prev_hash=self.prev_hash,
            prev_signature=self.prev_signature,
            node_signature=self.node_signature,
            node_public_key=self.node_public_key,
        )

    def is_authentic(self, coordinator_key: Ed25519PublicKey) -> bool:
        """True iff this single entry's hash matches its content and the coordinator signed it.

        What a client receiving one entry (a stream, a page) can check on its own;
        links to neighbours are :meth:`ledger.store.Ledger.verify`'s job.
        """
        return self.hash == entry_hash(self.envelope()) and signature_valid(
            coordinator_key, self.signature, self.hash.encode("ascii")
        )


class Problem(StrEnum):
    """Why verification stopped at an entry."""

    HASH_MISMATCH = "hash mismatch"
    BROKEN_LINK = "broken link"
    BAD_SIGNATURE = "bad signature"
    GAP = "gap in sequence"
    ORDER = "order"
    TRUNCATED = "truncated"
    HEAD = "head mismatch"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of verifying a chain.

    ``checked`` counts entries found good before the first bad one (all of them
    when ``ok``); ``first_bad_seq`` and ``reason`` say where and why it broke;
    ``problem`` is the reason's category; ``public_key`` is the coordinator key
    the chain was checked against and ``head_seq`` the seq of the published
    signed head it was checked against (None: none was given).
    """

    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None
    problem: Problem | None = None
    public_key: str | None = None
    head_seq: int | None = None


@dataclass(frozen=True, slots=True)
class ContributionRecord:
    """One contribution score of a node, as recorded."""

    seq: int
    round: int
    score: float
    method: str


@dataclass(frozen=True, slots=True)
class NodeSummary:
    """What the ledger says about one node, derived from its entries."""

    node: str
    registered: bool = False
    role: str | None = None
    public_key: str | None = None
    submitted: int = 0
    accepted: int = 0
    rejected: int = 0
    consent_violations: int = 0
    contributions: tuple[ContributionRecord, ...] = ()
    token_balance: int = 0

    @property
    def contribution_total(self) -> float:
        """Sum of the node's contribution scores over all rounds."""
        return sum(c.score for c in self.contributions)


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    """Size, head and coordinator key of a ledger."""

    count: int
    head_seq: int | None
    head_hash: str | None
    public_key: str | None
