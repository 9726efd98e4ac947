"""Verify a stored chain: one streaming pass over the entries in seq order.

Per entry (cheap): the seq follows the previous one, ``prev_hash`` and
``prev_signature`` repeat the previous entry's hash and signature, the hash
matches the content, the ``node`` column matches the payload, and (optionally)
the node signature verifies. Coordinator signatures are checked only where it
matters: because every hash also covers the previous signature, a valid
signature on entry *j* vouches for all entries before it, signatures included,
so signature validity can only go from good to bad along a consistent chain.
Verify therefore checks the last consistent entry's signature and, if it is
bad, binary-searches the first bad one: O(n) hashing but O(log n) Ed25519
verifications, which is what keeps 100k entries under a few seconds.

Then the head: the ``ledger_head`` record must name the last entry and carry
the coordinator's signature over it (:mod:`ledger.head`), and a *published*
signed head (:mod:`ledger.anchor`), when given, must be signed by the trusted
key and name an entry of this chain with that very hash, so a removed tail or
a rewritten head record is found even though every entry signature verifies.

Node signatures (``node_signatures=True``) verify only against the key of a
node registered by an earlier ``node_registered`` entry (and not removed since):
a key the entry supplies for itself proves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sentinel.ledger.chain import GENESIS_HASH, Envelope, entry_hash, signature_valid
from sentinel.ledger.crypto import Ed25519PublicKey, public_key_from_b64
from sentinel.ledger.entries import Problem, VerifyReport
from sentinel.ledger.head import SignedHead, head_message
from sentinel.ledger.kinds import payload_node
from sentinel.ledger.tables import ENTRY_COLUMNS, ENTRY_TABLE, HEAD_TABLE
from sentinel.protos.vocabulary import EntryKind
from sqlalchemy import Connection, select

_E = ENTRY_TABLE.c
_COLS = ENTRY_TABLE.c[ENTRY_COLUMNS]
_REGISTERED = EntryKind.NODE_REGISTERED.value
_REMOVED = EntryKind.NODE_REMOVED.value
# Row tuple positions, in ENTRY_COLUMNS order.
SEQ, TS, KIND, ACTOR, NODE, PAYLOAD, PREV_HASH, PREV_SIG, HASH, SIG, NODE_SIG, NODE_KEY = range(12)


def _envelope(row: Sequence[Any], seq: int | None = None) -> Envelope:
    return Envelope(
        row[SEQ] if seq is None else seq,
        row[TS], row[KIND], row[ACTOR], row[PAYLOAD], row[PREV_HASH], row[PREV_SIG], row[NODE_SIG], row[NODE_KEY],
    )


class _Bad(Exception):
    """Raised inside the scan at the first bad entry."""

    def __init__(self, seq: int, problem: Problem, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.problem, self.reason = seq, problem, reason


def verify_chain(
    conn: Connection,
    coordinator_key: Ed25519PublicKey,
    *,
    node_signatures: bool = False,
    published: SignedHead | None = None,
    batch: int = 5000,
) -> VerifyReport:
    """Verify the chain visible to ``conn`` (inside one snapshot transaction) against ``coordinator_key``.

    ``published`` is a signed head published outside the database (the chain must
    reach it, with the same hash at its seq).
    """
    head_seq, head_hash, head_signature = conn.execute(
        select(HEAD_TABLE.c.seq, HEAD_TABLE.c.hash, HEAD_TABLE.c.signature)
    ).one()
    result = conn.execute(select(*_COLS).order_by(_E.seq).execution_options(yield_per=batch))
    registered: dict[str, str | None] = {}
    expected, prev_hash, prev_sig = 0, GENESIS_HASH, None
    try:
        for row in result:
            _check_entry(row, expected, prev_hash, prev_sig, registered if node_signatures else None)
            expected, prev_hash, prev_sig = expected + 1, row[HASH], row[SIG]
        result.close()
        if expected and not _signed(conn, coordinator_key, expected - 1):
            raise _Bad(_first_unsigned(conn, coordinator_key, expected - 1), Problem.BAD_SIGNATURE, "")
        _check_head_record(expected, prev_hash, head_seq, head_hash)
    except _Bad as bad:
        result.close()
        return _report_first_bad(conn, coordinator_key, bad)
    problem = _published_head_problem(conn, coordinator_key, published, expected)
    if problem is None:
        problem = _head_signature_problem(coordinator_key, expected, head_seq, head_hash, head_signature)
    if problem is not None:
        first_bad, kind, reason = problem
        return VerifyReport(ok=False, checked=expected if first_bad is None else min(first_bad, expected),
                            first_bad_seq=first_bad, reason=f"{kind.value}: {reason}", problem=kind)
    return VerifyReport(ok=True, checked=expected)


_HeadProblem = tuple[int | None, Problem, str]


def _published_head_problem(
    conn: Connection, key: Ed25519PublicKey, published: SignedHead | None, count: int
) -> _HeadProblem | None:
    """Why the (otherwise good) chain of ``count`` entries does not reach ``published`` (None when it does)."""
    if published is None:
        return None
    if not published.is_valid(key):
        return None, Problem.HEAD, f"the published head (seq {published.seq}) is not signed by the trusted coordinator key"
    if published.seq >= count:
        return count, Problem.TRUNCATED, (
            f"the chain ends at seq {count - 1} but the published head is seq {published.seq}: "
            f"entries {count}..{published.seq} were removed"
        )
    if published.seq < 0:
        return None
    stored = conn.execute(select(_E.hash).where(_E.seq == published.seq)).scalar_one()
    if stored != published.hash:
        return published.seq, Problem.HEAD, (
            f"entry {published.seq}'s hash differs from the published head's: the chain was rewritten after it was published"
        )
    return None


def _head_signature_problem(
    key: Ed25519PublicKey, count: int, head_seq: int, head_hash: str, signature: str | None
) -> _HeadProblem | None:
    """Why the ``ledger_head`` record's signature does not vouch for it (None when it does)."""
    if signature is None:
        if count == 0:
            return None  # a fresh ledger: nothing appended, nothing signed yet
        return None, Problem.HEAD, f"the head record (seq {head_seq}) is not signed by the coordinator"
    if not signature_valid(key, signature, head_message(head_seq, head_hash)):
        return None, Problem.HEAD, f"the head record's signature (seq {head_seq}) does not verify with the trusted key"
    return None


def _check_entry(
    row: Sequence[Any], expected: int, prev_hash: str, prev_sig: str | None, registered: dict[str, str | None] | None
) -> None:
    seq = row[SEQ]
    if seq != expected:
        where = f"the chain starts at seq {seq}" if expected == 0 else f"seq {expected - 1} is followed by {seq}"
        raise _Bad(expected, Problem.GAP, f"entry {expected} is missing: {where}")
    if row[PREV_HASH] != prev_hash or row[PREV_SIG] != prev_sig:
        what = "prev_hash" if row[PREV_HASH] != prev_hash else "prev_signature"
        raise _Bad(seq, Problem.BROKEN_LINK, f"entry {seq}'s {what} does not match entry {seq - 1}")
    if entry_hash(_envelope(row)) != row[HASH]:
        raise _Bad(seq, Problem.HASH_MISMATCH, f"entry {seq}'s content does not hash to its stored hash")
    payload = json.loads(row[PAYLOAD])
    if payload_node(payload, row[ACTOR]) != row[NODE]:
        raise _Bad(seq, Problem.HASH_MISMATCH, f"entry {seq}'s `node` column {row[NODE]!r} does not match its payload")
    if registered is None:
        return
    if row[KIND] == _REGISTERED and row[NODE] is not None:
        registered[row[NODE]] = payload.get("public_key") or None
    elif row[KIND] == _REMOVED and row[NODE] is not None:
        registered.pop(row[NODE], None)
    if row[NODE_SIG] is not None:
        _check_node_signature(row, registered)


def _check_node_signature(row: Sequence[Any], registered: dict[str, str | None]) -> None:
    """The node signature must verify against the key an earlier ``node_registered`` entry gave its actor."""
    seq, actor, key = row[SEQ], row[ACTOR], row[NODE_KEY]
    expected_key = registered.get(actor)
    if not expected_key:
        raise _Bad(seq, Problem.BAD_SIGNATURE, f"entry {seq} carries a node signature by {actor!r}, which no earlier "
                   "node_registered entry registers with a key")
    if key != expected_key:
        raise _Bad(seq, Problem.BAD_SIGNATURE, f"entry {seq}'s node signature uses a key that is not node {actor!r}'s registered key")
    try:
        valid = signature_valid(public_key_from_b64(key), row[NODE_SIG], row[PAYLOAD].encode("utf-8"))
    except ValueError:
        valid = False
    if not valid:
        raise _Bad(seq, Problem.BAD_SIGNATURE, f"entry {seq}'s node signature by {actor!r} does not verify")


def _check_head_record(count: int, last_hash: str, head_seq: int, head_hash: str) -> None:
    if head_seq >= count:
        raise _Bad(count, Problem.GAP, f"entries {count}..{head_seq} are missing: the head record says the chain ends at seq {head_seq}")
    if head_seq < count - 1:
        raise _Bad(head_seq + 1, Problem.BROKEN_LINK, f"entries from seq {head_seq + 1} on lie beyond the head record (seq {head_seq})")
    if count and head_hash != last_hash:
        raise _Bad(count - 1, Problem.HASH_MISMATCH, f"entry {count - 1}'s hash differs from the head record's")


def _signature_row(conn: Connection, seq: int) -> tuple[str, str]:
    return tuple(conn.execute(select(_E.hash, _E.signature).where(_E.seq == seq)).one())  # type: ignore[return-value]


def _signed(conn: Connection, key: Ed25519PublicKey, seq: int) -> bool:
    hash_hex, signature = _signature_row(conn, seq)
    return signature_valid(key, signature, hash_hex.encode("ascii"))


def _first_unsigned(conn: Connection, key: Ed25519PublicKey, bad: int) -> int:
    """Smallest seq in [0, bad] whose signature fails, given that ``bad``'s fails (validity is monotone)."""
    lo, hi = 0, bad
    while lo < hi:
        mid = (lo + hi) // 2
        if _signed(conn, key, mid):
            lo = mid + 1
        else:
            hi = mid
    return hi


def _report_first_bad(conn: Connection, key: Ed25519PublicKey, bad: _Bad) -> VerifyReport:
    """Turn the scan's first problem into a report, after making sure no earlier signature is bad."""
    searched = bad.problem is Problem.BAD_SIGNATURE and not bad.reason  # came from _first_unsigned
    if not searched and bad.seq > 0 and not _signed(conn, key, bad.seq - 1):
        bad = _Bad(_first_unsigned(conn, key, bad.seq - 1), Problem.BAD_SIGNATURE, "")
    if bad.problem is Problem.BAD_SIGNATURE and not bad.reason:
        bad.reason = f"entry {bad.seq}'s coordinator signature does not verify with the given key"
    elif bad.problem in (Problem.BROKEN_LINK, Problem.HASH_MISMATCH):
        original = _original_seq(conn, bad.seq)
        if original is not None and original != bad.seq:
            bad = _Bad(bad.seq, Problem.ORDER, f"entry stored at seq {bad.seq} was written as seq {original}: entries reordered")
    return VerifyReport(ok=False, checked=bad.seq, first_bad_seq=bad.seq, reason=f"{bad.problem.value}: {bad.reason}", problem=bad.problem)


def _original_seq(conn: Connection, seq: int, depth: int = 3) -> int | None:
    """The seq the entry now stored at ``seq`` was hashed with, found through its ``prev_hash`` (None if unknown)."""
    row = conn.execute(select(*_COLS).where(_E.seq == seq)).first()
    return _original_seq_of_row(conn, row, depth) if row is not None else None


def _original_seq_of_row(conn: Connection, row: Sequence[Any], depth: int) -> int | None:
    if row[PREV_HASH] == GENESIS_HASH:
        candidate: int | None = 0
    else:
        prev = conn.execute(select(*_COLS).where(_E.hash == row[PREV_HASH]).limit(1)).first()
        if prev is None:
            return None
        if entry_hash(_envelope(prev)) == prev[HASH]:
            candidate = prev[SEQ] + 1
        else:
            before = _original_seq_of_row(conn, prev, depth - 1) if depth > 0 else None
            candidate = before + 1 if before is not None else None
    if candidate is not None and entry_hash(_envelope(row, candidate)) == row[HASH]:
        return candidate
    return None
