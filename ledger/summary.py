"""Views derived from entries: a node's summary and token balances (never stored counters)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sentinel.ledger.entries import ContributionRecord, LedgerEntry, NodeSummary
from sentinel.protos.vocabulary import EntryKind

_COUNTED = {
    EntryKind.UPDATE_SUBMITTED: "submitted",
    EntryKind.UPDATE_ACCEPTED: "accepted",
    EntryKind.UPDATE_REJECTED: "rejected",
    EntryKind.CONSENT_VIOLATION: "consent_violations",
}


def balances(token_entries: Iterable[LedgerEntry]) -> dict[str, int]:
    """Sum of each node's allocations over ``tokens`` entries (other kinds are ignored)."""
    totals: Counter[str] = Counter()
    for entry in token_entries:
        if entry.kind == EntryKind.TOKENS:
            for node, amount in entry.payload.get("allocations", {}).items():
                totals[node] += int(amount)
    return dict(sorted(totals.items()))


def summarise_node(node: str, node_entries: Iterable[LedgerEntry], token_balance: int) -> NodeSummary:
    """A node's summary from the entries about it (``entries(node=...)``) and its derived balance."""
    counts: Counter[str] = Counter()
    contributions: list[ContributionRecord] = []
    registered, role, public_key = False, None, None
    for entry in node_entries:
        payload = entry.payload
        if entry.kind == EntryKind.NODE_REGISTERED:
            registered, role, public_key = True, payload.get("role"), payload.get("public_key") or None
        elif entry.kind == EntryKind.NODE_REMOVED:
            registered = False
        elif entry.kind == EntryKind.CONTRIBUTION:
            contributions.append(
                ContributionRecord(
                    seq=entry.seq,
                    round=int(payload.get("round", payload.get("server_round", 0))),
                    score=float(payload["score"]),
                    method=str(payload.get("method", "")),
                )
            )
        elif entry.kind in _COUNTED:
            counts[_COUNTED[EntryKind(entry.kind)]] += 1
    return NodeSummary(
        node=node,
        registered=registered,
        role=role,
        public_key=public_key,
        contributions=tuple(contributions),
        token_balance=token_balance,
        **counts,
    )
