"""Node-originated entries carry the node's signature, checked on append: bad or unverifiable ones store nothing."""

from __future__ import annotations

import pytest
from sentinel.ledger.crypto import generate_private_key, public_key_b64
from sentinel.ledger.entries import AppendRequest
from sentinel.ledger.exceptions import NodeSignatureError
from sentinel.ledger.kinds import EntryKind
from sentinel.ledger.recorder import LedgerRecorder, update_submitted_payload
from sentinel.ledger.signing import payload_signature_valid, sign_payload
from sentinel.ledger.store import Ledger

NODE = "18446744073709551557"  # a uint64 Flower node id, as a string


@pytest.fixture
def led(sqlite_url: str, signer) -> Ledger:  # type: ignore[no-untyped-def]
    return Ledger(sqlite_url, signer)


def _submission(round_: int = 1) -> dict:
    return update_submitted_payload(NODE, round_, "ab" * 32, 12)


def test_signature_by_the_registered_key_is_accepted_and_kept(led: Ledger) -> None:
    key = generate_private_key()
    LedgerRecorder(led).node_registered(NODE, "gpu", public_key_b64(key))
    payload = _submission()
    entry = led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=sign_payload(key, payload))
    assert entry.node_signature and entry.node_public_key == public_key_b64(key)
    assert payload_signature_valid(entry.node_public_key, entry.node_signature, entry.payload)
    assert led.get(entry.seq) == entry
    assert led.verify().ok


def test_signature_by_another_key_is_rejected_and_nothing_stored(led: Ledger) -> None:
    LedgerRecorder(led).node_registered(NODE, "gpu", public_key_b64(generate_private_key()))
    payload = _submission()
    with pytest.raises(NodeSignatureError, match="does not verify"):
        led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=sign_payload(generate_private_key(), payload))
    assert led.count() == 1


def test_payload_changed_after_signing_is_rejected(led: Ledger) -> None:
    key = generate_private_key()
    LedgerRecorder(led).node_registered(NODE, "gpu", public_key_b64(key))
    signature = sign_payload(key, _submission())
    with pytest.raises(NodeSignatureError):
        led.append(EntryKind.UPDATE_SUBMITTED, NODE, {**_submission(), "examples": 10_000}, node_signature=signature)
    assert led.count() == 1


def test_unregistered_node_cannot_sign_even_with_its_own_key(led: Ledger) -> None:
    key = generate_private_key()
    payload = _submission()
    signature = sign_payload(key, payload)
    with pytest.raises(NodeSignatureError, match="not registered"):
        led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=signature)
    with pytest.raises(NodeSignatureError, match="not registered"):  # a self-supplied key proves nothing
        led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=signature, node_public_key=public_key_b64(key))
    assert led.count() == 0
    LedgerRecorder(led).node_registered(NODE, "gpu", public_key_b64(key))
    entry = led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=signature, node_public_key=public_key_b64(key))
    assert entry.node_public_key == public_key_b64(key)
    assert led.verify(node_signatures=True).ok


def test_a_removed_node_can_no_longer_sign(led: Ledger) -> None:
    key = generate_private_key()
    LedgerRecorder(led).node_registered(NODE, "gpu", public_key_b64(key))
    led.append(EntryKind.NODE_REMOVED, "coordinator", {"node": NODE})
    payload = _submission()
    with pytest.raises(NodeSignatureError, match="not registered"):
        led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=sign_payload(key, payload))
    assert led.count() == 2


def test_registered_key_wins_over_an_explicit_one(led: Ledger) -> None:
    LedgerRecorder(led).node_registered(NODE, "gpu", public_key_b64(generate_private_key()))
    impostor = generate_private_key()
    payload = _submission()
    with pytest.raises(NodeSignatureError, match="not node .* registered key"):
        led.append(
            EntryKind.UPDATE_SUBMITTED, NODE, payload,
            node_signature=sign_payload(impostor, payload), node_public_key=public_key_b64(impostor),
        )
    assert led.count() == 1


def test_re_registration_replaces_the_key(led: Ledger) -> None:
    old, new = generate_private_key(), generate_private_key()
    rec = LedgerRecorder(led)
    rec.node_registered(NODE, "gpu", public_key_b64(old))
    rec.node_registered(NODE, "gpu", public_key_b64(new))
    payload = _submission()
    with pytest.raises(NodeSignatureError):
        led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=sign_payload(old, payload))
    led.append(EntryKind.UPDATE_SUBMITTED, NODE, payload, node_signature=sign_payload(new, payload))
    assert led.verify().ok


def test_one_bad_signature_in_a_batch_stores_none_of_it(led: Ledger) -> None:
    key = generate_private_key()
    good = [_submission(r) for r in (1, 2)]
    batch = [
        AppendRequest(EntryKind.NODE_REGISTERED, "coordinator", {"node": NODE, "role": "edge", "public_key": public_key_b64(key)}),
        AppendRequest(EntryKind.UPDATE_SUBMITTED, NODE, good[0], sign_payload(key, good[0])),
        AppendRequest(EntryKind.UPDATE_SUBMITTED, NODE, good[1], sign_payload(generate_private_key(), good[1])),
    ]
    with pytest.raises(NodeSignatureError):
        led.append_many(batch)
    assert led.count() == 0
    led.append_many(batch[:2])  # the key registered earlier in the same batch counts
    assert led.count() == 2 and led.verify().ok


def test_coordinator_entries_cannot_carry_a_node_signature(led: Ledger) -> None:
    with pytest.raises(NodeSignatureError, match="node `actor`"):
        led.append(EntryKind.ROUND_STARTED, "coordinator", {"round": 1}, node_signature="AAAA")
