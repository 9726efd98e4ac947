"""Conversions between the ledger's records and the LedgerService's protobuf messages."""

from __future__ import annotations

from pydantic import ValidationError
from sentinel.ledger.entries import ContributionRecord, LedgerEntry, LedgerInfo, NodeSummary, Problem, VerifyReport
from sentinel.ledger.head import SignedHead
from sentinel.protos import ledger_pb2 as pb
from sentinel.protos.vocabulary import EntryKind


def entry_to_pb(entry: LedgerEntry) -> pb.Entry:
    """The wire form of an entry (optional fields left unset when None)."""
    message = pb.Entry(
        seq=entry.seq,
        timestamp=entry.timestamp,
        kind=str(entry.kind),
        actor=entry.actor,
        payload_json=entry.payload_json,
        prev_hash=entry.prev_hash,
        hash=entry.hash,
        signature=entry.signature,
    )
    for name in ("prev_signature", "node_signature", "node_public_key", "node"):
        value = getattr(entry, name)
        if value is not None:
            setattr(message, name, value)
    return message


def entry_from_pb(message: pb.Entry) -> LedgerEntry:
    """An entry received from the API (check it with :meth:`LedgerEntry.is_authentic`)."""
    try:
        kind: EntryKind | str = EntryKind(message.kind)
    except ValueError:
        kind = message.kind
    optional = {
        name: getattr(message, name) if message.HasField(name) else None
        for name in ("prev_signature", "node_signature", "node_public_key", "node")
    }
    return LedgerEntry(
        seq=message.seq,
        timestamp=message.timestamp,
        kind=kind,
        actor=message.actor,
        payload_json=message.payload_json,
        prev_hash=message.prev_hash,
        hash=message.hash,
        signature=message.signature,
        **optional,
    )


def summary_to_pb(summary: NodeSummary) -> pb.NodeSummary:
    """The wire form of a node summary (scores as decimal text)."""
    return pb.NodeSummary(
        node=summary.node,
        registered=summary.registered,
        role=summary.role or "",
        public_key=summary.public_key or "",
        submitted=summary.submitted,
        accepted=summary.accepted,
        rejected=summary.rejected,
        consent_violations=summary.consent_violations,
        contributions=[
            pb.Contribution(seq=c.seq, round=c.round, score=repr(c.score), method=c.method)
            for c in summary.contributions
        ],
        contribution_total=repr(summary.contribution_total),
        token_balance=summary.token_balance,
    )


def summary_from_pb(message: pb.NodeSummary) -> NodeSummary:
    """A node summary received from the API."""
    return NodeSummary(
        node=message.node,
        registered=message.registered,
        role=message.role or None,
        public_key=message.public_key or None,
        submitted=message.submitted,
        accepted=message.accepted,
        rejected=message.rejected,
        consent_violations=message.consent_violations,
        contributions=tuple(
            ContributionRecord(seq=c.seq, round=c.round, score=float(c.score), method=c.method)
            for c in message.contributions
        ),
        token_balance=message.token_balance,
    )


def report_to_pb(report: VerifyReport) -> pb.VerifyChainResponse:
    """The wire form of a verify report."""
    message = pb.VerifyChainResponse(
        ok=report.ok,
        checked=report.checked,
        reason=report.reason or "",
        problem=report.problem.value if report.problem else "",
        public_key=report.public_key or "",
    )
    if report.first_bad_seq is not None:
        message.first_bad_seq = report.first_bad_seq
    if report.head_seq is not None:
        message.head_seq = report.head_seq
    return message


def report_from_pb(message: pb.VerifyChainResponse) -> VerifyReport:
    """A verify report received from the API."""
    return VerifyReport(
        ok=message.ok,
        checked=message.checked,
        first_bad_seq=message.first_bad_seq if message.HasField("first_bad_seq") else None,
        reason=message.reason or None,
        problem=Problem(message.problem) if message.problem else None,
        public_key=message.public_key or None,
        head_seq=message.head_seq if message.HasField("head_seq") else None,
    )


def head_to_pb(head: SignedHead) -> pb.SignedHead:
    """The wire form of a signed head."""
    return pb.SignedHead(seq=head.seq, hash=head.hash, signature=head.signature)


def head_from_pb(message: pb.SignedHead) -> SignedHead:
    """A signed head received over the API; ``ValueError`` (INVALID_ARGUMENT) if malformed."""
    try:
        return SignedHead(seq=message.seq, hash=message.hash, signature=message.signature)
    except ValidationError as e:
        raise ValueError(f"`head` is not a signed ledger head: {e.errors()[0]['msg']}") from e


def info_to_pb(info: LedgerInfo) -> pb.GetInfoResponse:
    """The wire form of a ledger's size and head."""
    message = pb.GetInfoResponse(count=info.count, head_hash=info.head_hash or "", public_key=info.public_key or "")
    if info.head_seq is not None:
        message.head_seq = info.head_seq
    return message


def info_from_pb(message: pb.GetInfoResponse) -> LedgerInfo:
    """A ledger's size and head received from the API."""
    return LedgerInfo(
        count=message.count,
        head_seq=message.head_seq if message.HasField("head_seq") else None,
        head_hash=message.head_hash or None,
        public_key=message.public_key or None,
    )
