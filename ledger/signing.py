"""Node-side signing of ledger payloads: what a node signs so the coordinator can record it as signed.

A node signs the RFC 8785 canonical JSON of the exact payload the coordinator
will append (for a submission: :func:`ledger.recorder.update_submitted_payload`),
and the ledger verifies that signature against the node's registered key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sentinel.ledger.crypto import Ed25519PrivateKey, canonical_json, sign_b64, verify_b64


def sign_payload(key: Ed25519PrivateKey, payload: Mapping[str, Any]) -> str:
    """A node's base64 Ed25519 signature over ``canonical_json(payload)``."""
    return sign_b64(key, canonical_json(dict(payload)))


def payload_signature_valid(public_key_b64: str, signature_b64: str, payload: Mapping[str, Any]) -> bool:
    """True iff ``signature_b64`` is ``public_key_b64``'s signature over ``canonical_json(payload)``."""
    return verify_b64(public_key_b64, signature_b64, canonical_json(dict(payload)))
