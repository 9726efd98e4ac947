"""Verify finds tampering (edits, deletions, reordering, re-signing) at the right entry, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64

import pytest
from sentinel.ledger.chain import Envelope, entry_hash, sign_hash
from sentinel.ledger.crypto import generate_private_key, public_key_b64
from sentinel.ledger.entries import Problem
from sentinel.ledger.exceptions import LedgerStateError
from sentinel.ledger.head import sign_head
from sentinel.ledger.store import Ledger

LAST = 24  # the filled ledger holds seq 0..24; seq 4 is a node-signed submission


def _flip_b64(value: str) -> str:
    """The same length of valid base64, one byte different."""
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("node_signatures", [False, True])
def test_untouched_chain_verifies(filled: Ledger, node_signatures: bool) -> None:
    report = filled.verify(node_signatures=node_signatures)
    assert report.ok and report.checked == filled.count() == LAST + 1
    assert report.first_bad_seq is None and report.reason is None


EDITS = {
    # column: (SQL value expression, expected problem)
    "timestamp": ("'2001-01-01T00:00:00.000000Z'", Problem.HASH_MISMATCH),
    "kind": ("'vote'", Problem.HASH_MISMATCH),
    "actor": ("'999'", Problem.HASH_MISMATCH),
    "payload": ("payload || ' '", Problem.HASH_MISMATCH),
    "hash": ("'" + "f" * 64 + "'", Problem.HASH_MISMATCH),
    "prev_hash": ("'" + "e" * 64 + "'", Problem.BROKEN_LINK),
    "node": ("'12345'", Problem.HASH_MISMATCH),
}


@pytest.mark.parametrize("column", sorted(EDITS))
@pytest.mark.parametrize("seq", [0, 4, LAST])
def test_editing_a_field_is_found_at_that_entry(filled: Ledger, sql, column: str, seq: int) -> None:  # type: ignore[no-untyped-def]
    value, problem = EDITS[column]
    sql(filled, f"UPDATE ledger_entry SET {column} = {value} WHERE seq = :seq", seq=seq)
    report = filled.verify()
    assert not report.ok
    assert (report.first_bad_seq, report.problem) == (seq, problem), report.reason
    assert report.checked == seq
    assert report.reason and report.reason.startswith(problem.value)


@pytest.mark.parametrize("column", ["node_signature", "node_public_key"])
def test_editing_a_node_signature_field_is_a_hash_mismatch(filled: Ledger, sql, column: str) -> None:  # type: ignore[no-untyped-def]
    original = filled.get(4)
    sql(filled, f"UPDATE ledger_entry SET {column} = :v WHERE seq = 4", v=_flip_b64(getattr(original, column)))
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (4, Problem.HASH_MISMATCH)


@pytest.mark.parametrize("seq", [1, 10, LAST])
def test_replacing_a_coordinator_signature_is_a_bad_signature_there(filled: Ledger, sql, seq: int) -> None:  # type: ignore[no-untyped-def]
    sql(filled, "UPDATE ledger_entry SET signature = :v WHERE seq = :seq", v=_flip_b64(filled.get(seq).signature), seq=seq)
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (seq, Problem.BAD_SIGNATURE), report.reason


def test_editing_prev_signature_breaks_the_link(filled: Ledger, sql) -> None:  # type: ignore[no-untyped-def]
    sql(filled, "UPDATE ledger_entry SET prev_signature = :v WHERE seq = 9", v=_flip_b64(filled.get(9).prev_signature))
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (9, Problem.BROKEN_LINK)


@pytest.mark.parametrize("seq", [0, 12, LAST])
def test_deleting_an_entry_is_a_gap(filled: Ledger, sql, seq: int) -> None:  # type: ignore[no-untyped-def]
    sql(filled, "DELETE FROM ledger_entry WHERE seq = :seq", seq=seq)
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (seq, Problem.GAP), report.reason


def test_renumbering_an_entry_is_a_gap(filled: Ledger, sql) -> None:  # type: ignore[no-untyped-def]
    sql(filled, "UPDATE ledger_entry SET seq = 1000 WHERE seq = 6")
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (6, Problem.GAP)


@pytest.mark.parametrize(("a", "b"), [(5, 6), (3, 17), (0, 1), (LAST - 1, LAST)])
def test_swapping_two_entries_is_an_order_problem(filled: Ledger, sql, a: int, b: int) -> None:  # type: ignore[no-untyped-def]
    sql(filled, "UPDATE ledger_entry SET seq = -1 WHERE seq = :a", a=a)
    sql(filled, "UPDATE ledger_entry SET seq = :a WHERE seq = :b", a=a, b=b)
    sql(filled, "UPDATE ledger_entry SET seq = :b WHERE seq = -1", b=b)
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (a, Problem.ORDER), report.reason
    assert f"written as seq {b}" in (report.reason or "")


def _rewrite_from(ledger: Ledger, sql, start: int, key, edit_payload: bool) -> None:  # type: ignore[no-untyped-def]
    """Rewrite entries ``start``.. as an attacker would: consistent hashes and links, entries and head signed with ``key``."""
    prev = ledger.get(start - 1) if start else None
    prev_hash, prev_sig = (prev.hash, prev.signature) if prev else ("0" * 64, None)
    for entry in ledger.entries(start, 1000):
        payload = entry.payload_json
        if edit_payload and entry.seq == start:
            payload = payload.replace('"reason":"loss gate"', '"reason":"accepted after all"')
            assert payload != entry.payload_json
        env = Envelope(entry.seq, entry.timestamp, str(entry.kind), entry.actor, payload, prev_hash, prev_sig,
                       entry.node_signature, entry.node_public_key)
        prev_hash, prev_sig = entry_hash(env), sign_hash(key, entry_hash(env))
        sql(ledger, "UPDATE ledger_entry SET payload = :p, prev_hash = :ph, prev_signature = :ps, hash = :h, "
            "signature = :s WHERE seq = :seq", p=payload, ph=env.prev_hash, ps=env.prev_signature, h=prev_hash,
            s=prev_sig, seq=entry.seq)
    last = ledger.count() - 1
    sql(ledger, "UPDATE ledger_head SET hash = :h, signature = :s", h=prev_hash, s=sign_head(key, last, prev_hash).signature)


def test_rewriting_history_with_another_key_is_found_where_it_starts(filled: Ledger, sql) -> None:  # type: ignore[no-untyped-def]
    _rewrite_from(filled, sql, 9, generate_private_key(), edit_payload=True)
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (9, Problem.BAD_SIGNATURE), report.reason
    assert report.checked == 9


def test_re_signing_one_entry_with_another_key_is_found(filled: Ledger, sql) -> None:  # type: ignore[no-untyped-def]
    entry = filled.get(13)
    sql(filled, "UPDATE ledger_entry SET signature = :s WHERE seq = 13", s=sign_hash(generate_private_key(), entry.hash))
    report = filled.verify()
    assert (report.first_bad_seq, report.problem) == (13, Problem.BAD_SIGNATURE)


def test_verifying_against_another_coordinator_key_fails_at_the_first_entry(filled: Ledger) -> None:
    report = filled.verify(public_key_b64(generate_private_key()))
    assert (report.first_bad_seq, report.problem) == (0, Problem.BAD_SIGNATURE)


def test_a_forged_node_signature_signed_by_the_coordinator_is_found(filled: Ledger, sql, signer) -> None:  # type: ignore[no-untyped-def]
    # A dishonest coordinator stores a submission the node never signed: chain and
    # coordinator signatures are fine, only the node signature check catches it.
    forged = base64.b64encode(generate_private_key().sign(b"x")).decode()
    sql(filled, "UPDATE ledger_entry SET node_signature = :s WHERE seq = 15", s=forged)
    _rewrite_from(filled, sql, 15, signer, edit_payload=False)
    assert filled.verify().ok  # the default trusts node signatures the coordinator checked and signed over
    report = filled.verify(node_signatures=True)
    assert (report.first_bad_seq, report.problem) == (15, Problem.BAD_SIGNATURE)
    assert "node signature" in (report.reason or "")


def test_appending_after_the_tail_was_removed_is_refused(filled: Ledger, sql) -> None:  # type: ignore[no-untyped-def]
    sql(filled, "DELETE FROM ledger_entry WHERE seq = :seq", seq=LAST)
    with pytest.raises(LedgerStateError, match="head"):
        filled.append("round_started", "coordinator", {"round": 3})
    assert filled.count() == LAST

