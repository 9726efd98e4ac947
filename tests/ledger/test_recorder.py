"""The coordinator's facade: content hashes of arrays and one entry per federation event."""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.ledger.contribution import leave_one_out
from sentinel.ledger.crypto import generate_private_key, public_key_b64
from sentinel.ledger.kinds import EntryKind
from sentinel.ledger.recorder import LedgerRecorder, content_hash_of_arrays, update_submitted_payload
from sentinel.ledger.signing import sign_payload
from sentinel.ledger.store import Ledger
from sentinel.ledger.tokens import distribute_tokens

ARRAYS = {"lora_A/q": np.arange(6, dtype=np.float32).reshape(2, 3), "lora_B/q": np.ones((3, 2), dtype=np.float32)}


def test_content_hash_depends_on_content_not_on_key_order_or_memory_layout() -> None:
    digest = content_hash_of_arrays(ARRAYS)
    assert len(digest) == 64
    assert content_hash_of_arrays(dict(reversed(list(ARRAYS.items())))) == digest
    fortran = {k: np.asfortranarray(v) for k, v in ARRAYS.items()}
    assert content_hash_of_arrays(fortran) == digest


@pytest.mark.parametrize(
    "change",
    [
        lambda a: {**a, "lora_A/q": a["lora_A/q"].reshape(3, 2)},
        lambda a: {**a, "lora_A/q": a["lora_A/q"].astype(np.float64)},
        lambda a: {**a, "lora_A/q": a["lora_A/q"] + np.float32(1e-6)},
        lambda a: {"lora_A/k": a["lora_A/q"], "lora_B/q": a["lora_B/q"]},
        lambda a: {"lora_A/q": a["lora_A/q"]},
    ],
)
def test_content_hash_changes_with_shape_dtype_values_and_names(change) -> None:  # type: ignore[no-untyped-def]
    assert content_hash_of_arrays(change(ARRAYS)) != content_hash_of_arrays(ARRAYS)


def test_content_hash_refuses_object_arrays() -> None:
    with pytest.raises(ValueError, match="numeric"):
        content_hash_of_arrays({"x": np.array([object()])})


def test_a_round_recorded_through_the_facade(sqlite_url: str, signer) -> None:  # type: ignore[no-untyped-def]
    led = Ledger(sqlite_url, signer)
    rec = LedgerRecorder(led)
    keys = {7: generate_private_key(), 2**64 - 59: generate_private_key()}
    for node, key in keys.items():
        rec.node_registered(node, "edge", public_key_b64(key))
    rec.round_started(1, {"local-steps": 5, "learning-rate": 0.0005})
    for node, key in keys.items():
        digest = content_hash_of_arrays(ARRAYS)
        signature = sign_payload(key, update_submitted_payload(node, 1, digest, 32))
        entry = rec.update_submitted(node, 1, digest, 32, node_signature=signature)
        assert entry.actor == str(node) and entry.payload["node"] == str(node)
    rec.validation_verdict(7, 1, validator=2**64 - 59, accept=True)
    rec.update_accepted(7, 1)
    rec.consent_violation(2**64 - 59, 1, ["layer.1.head.0", "embeddings"])
    rec.update_rejected(2**64 - 59, 1, "consent violation")
    scores = leave_one_out(lambda s: 0.5 + 0.1 * ("7" in s), ["7"])
    contributions = rec.contribution(1, scores, "loo")
    assert [c.payload for c in contributions] == [{"method": "loo", "node": "7", "round": 1, "score": repr(scores["7"])}]
    rec.tokens(1, distribute_tokens(scores, 10), budget=10)
    rec.checkpoint(1, content_hash_of_arrays(ARRAYS))

    assert led.verify().ok
    assert led.balances() == {"7": 10}
    big = led.node_summary(str(2**64 - 59))
    assert (big.submitted, big.rejected, big.consent_violations, big.token_balance) == (1, 1, 1, 0)
    assert led.entries(kind=EntryKind.CONSENT_VIOLATION)[0].payload["components"] == ["embeddings", "layer.1.head.0"]
    assert led.node_summary("7").contribution_total == pytest.approx(0.1)
