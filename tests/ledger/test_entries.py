"""Entries: payload schemas, canonical hashing, reads, filters, node summaries and balances."""

from __future__ import annotations

import json
import random

import pytest
from sentinel.ledger.chain import GENESIS_HASH, Envelope, envelope_bytes, payload_text
from sentinel.ledger.crypto import canonical_json, generate_private_key, public_key_b64
from sentinel.ledger.entries import AppendRequest
from sentinel.ledger.exceptions import EntryNotFoundError, InvalidEntryError
from sentinel.ledger.kinds import EntryKind, score_text
from sentinel.ledger.store import Ledger


@pytest.fixture
def led(sqlite_url: str, signer) -> Ledger:  # type: ignore[no-untyped-def]
    return Ledger(sqlite_url, signer)


def _random_text(rng: random.Random) -> str:
    alphabet = ['"', "\\", "\n", "\t", "\x00", "\x1f", "\x7f", "é", "€", "\u2028", "😀", "a", "/", "<"]
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))


def test_envelope_bytes_are_rfc8785_canonical_json() -> None:
    rng = random.Random(1)
    for _ in range(300):
        env = Envelope(
            seq=rng.randint(0, 2**53 - 1),
            timestamp=_random_text(rng),
            kind=_random_text(rng),
            actor=_random_text(rng),
            payload=json.dumps({"k": _random_text(rng)}, ensure_ascii=False),
            prev_hash=GENESIS_HASH,
            prev_signature=rng.choice([None, _random_text(rng)]),
            node_signature=rng.choice([None, _random_text(rng)]),
            node_public_key=rng.choice([None, _random_text(rng)]),
        )
        as_dict = {name: getattr(env, name) for name in env.__slots__}
        assert envelope_bytes(env) == canonical_json(as_dict)


@pytest.mark.parametrize(
    "payload",
    [
        {"node": "7", "round": 1, "nested": {"b": [1, 2, {"z": None, "a": True}], "a": "é\n\"\\\x01😀"}},
        {"big": 2**53 - 1, "small": -(2**53) + 1, "empty": {}, "list": []},
        {"float": 0.1, "exp": 1e21, "neg": -0.0},  # floats: the rfc8785 path
        {"ключ": 1, "\ue000": 2, "😀": 3},  # non-ASCII keys: the rfc8785 path (UTF-16 key order)
    ],
)
def test_payload_text_is_rfc8785_canonical_json(payload: dict) -> None:
    assert payload_text(payload).encode() == canonical_json(payload)


def test_payload_text_refuses_what_rfc8785_cannot_represent() -> None:
    for bad in ({"n": 2**53}, {"x": float("nan")}, {"s": "\ud800"}):
        with pytest.raises(ValueError):
            payload_text(bad)


def test_first_entry_links_to_genesis_and_seqs_are_contiguous(led: Ledger) -> None:
    entries = led.append_many([AppendRequest("round_started", "coordinator", {"round": r}) for r in range(3)])
    assert [e.seq for e in entries] == [0, 1, 2]
    assert entries[0].prev_hash == GENESIS_HASH and entries[0].prev_signature is None
    assert entries[1].prev_hash == entries[0].hash and entries[1].prev_signature == entries[0].signature
    assert all(e.timestamp.endswith("Z") for e in entries)
    key = generate_private_key()
    assert all(e.is_authentic(led_key) for e in entries for led_key in [_pub(led)])
    assert not entries[0].is_authentic(key.public_key())


def _pub(led: Ledger):  # type: ignore[no-untyped-def]
    from sentinel.ledger.crypto import public_key_from_b64

    return public_key_from_b64(led.public_key_b64)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "payload", "problem"),
    [
        ("no_such_kind", {}, "unknown entry `kind`"),
        ("update_submitted", {"node": 7, "round": 1, "content_hash": "a" * 64, "examples": 1}, "`node`"),
        ("update_submitted", {"node": "7", "round": 1, "content_hash": "xyz", "examples": 1}, "content_hash"),
        ("update_submitted", {"node": "7", "round": "1", "content_hash": "a" * 64, "examples": 1}, "`round`"),
        ("update_submitted", {"node": "7", "round": 1, "content_hash": "a" * 64, "examples": -1}, "`examples`"),
        ("contribution", {"node": "7", "round": 1, "score": 0.5, "method": "loo"}, "`score`"),
        ("contribution", {"node": "7", "round": 1, "score": "0.5", "method": "banzhaf"}, "`method`"),
        ("tokens", {"round": 1, "allocations": {"7": 1.5}}, "allocations"),
        ("tokens", {"round": 1, "allocations": {"7": -3}}, "allocations"),
        ("consent_violation", {"node": "7", "round": 1, "components": []}, "components"),
        ("node_registered", {"node": "7", "public_key": "not base64!"}, "public_key"),
        ("checkpoint", {"round": 1}, "adapter_hash"),
        ("round_started", {"round": 1, "config": {"lr": float("nan")}}, "cannot be hashed"),
    ],
)
def test_invalid_payloads_are_rejected_with_the_field_named(led: Ledger, kind: str, payload: dict, problem: str) -> None:
    with pytest.raises(InvalidEntryError, match=problem):
        led.append(kind, "coordinator", payload)
    assert led.count() == 0


def test_governance_spellings_and_free_form_kinds_are_accepted(led: Ledger) -> None:
    led.append("consent_violation", "coordinator",
               {"node_id": "7", "server_round": 2, "offending_components": ["layer.0.head.1"], "operation": "adapt"})
    led.append("proposal", "coordinator", {"anything": ["goes", 1, None]})
    assert led.entries(node="7")[0].kind is EntryKind.CONSENT_VIOLATION


@pytest.mark.parametrize("actor", ["", " 7", 7, "x" * 129])
def test_bad_actor_is_rejected(led: Ledger, actor: object) -> None:
    with pytest.raises(InvalidEntryError, match="`actor`"):
        led.append("round_started", actor, {"round": 1})  # type: ignore[arg-type]


def test_score_text_round_trips_floats_exactly() -> None:
    for value in (0.1, -1e-7, 1 / 3, 12345.678, 5e300):
        assert float(score_text(value)) == value
    assert score_text(3) == "3"
    with pytest.raises(ValueError):
        score_text(float("inf"))


def test_reads_get_entries_filters_head_and_count(filled: Ledger) -> None:
    assert filled.count() == 25 and filled.head().seq == 24  # type: ignore[union-attr]
    assert filled.get(4).kind is EntryKind.UPDATE_SUBMITTED
    with pytest.raises(EntryNotFoundError):
        filled.get(25)
    page = filled.entries(start=10, limit=5)
    assert [e.seq for e in page] == [10, 11, 12, 13, 14]
    submitted = filled.entries(kind="update_submitted", limit=100)
    assert len(submitted) == 6 and all(e.kind == "update_submitted" for e in submitted)
    about_7 = filled.entries(node="7", limit=100)
    assert {e.kind for e in about_7} == {"node_registered", "update_submitted", "update_accepted", "contribution"}
    assert [e.seq for e in filled.iter_entries(start=20, page=2)] == [20, 21, 22, 23, 24]
    with pytest.raises(InvalidEntryError):
        filled.entries(kind="bogus")


def test_node_summary_and_balances_are_derived_from_entries(filled: Ledger, node_keys) -> None:  # type: ignore[no-untyped-def]
    first, second, third = list(node_keys)
    assert filled.balances() == {first: 50, second: 150}
    summary = filled.node_summary(first)
    assert summary.registered and summary.role == "edge"
    assert summary.public_key == public_key_b64(node_keys[first])
    assert (summary.submitted, summary.accepted, summary.rejected) == (2, 2, 0)
    assert [c.score for c in summary.contributions] == [0.25, 0.25] and summary.contribution_total == 0.5
    assert {c.method for c in summary.contributions} == {"loo"} and summary.token_balance == 50
    rejected = filled.node_summary(third)
    assert (rejected.accepted, rejected.rejected, rejected.token_balance) == (0, 2, 0)
    stranger = filled.node_summary("999")
    assert not stranger.registered and stranger.submitted == 0
