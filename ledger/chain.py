"""What an entry's hash and signatures cover: pure functions shared by append, verify and clients.

An entry's **hash** is the SHA-256 of the RFC 8785 canonical JSON of its envelope::

    {"actor", "kind", "node_public_key", "node_signature", "payload",
     "prev_hash", "prev_signature", "seq", "timestamp"}

where ``payload`` is the payload's canonical JSON *text* (a string, so a verifier
never re-parses it), ``prev_hash`` is the previous entry's hash (64 zeros for
entry 0) and ``prev_signature`` the previous entry's coordinator signature (null
for entry 0). The coordinator's **signature** is Ed25519 over the hash's 64 hex
characters (ASCII). A node's **signature** is Ed25519 over the payload text.

Chaining the previous signature as well as the previous hash means one valid
coordinator signature vouches for every entry before it, signatures included, so
:mod:`ledger.verify` checks all hashes but only O(log n) signatures.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass

from sentinel.ledger.crypto import Ed25519PrivateKey, Ed25519PublicKey, canonical_json, sign_b64

GENESIS_HASH = "0" * 64
"""``prev_hash`` of entry 0."""

_ENVELOPE_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_PAYLOAD_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The hashed content of one entry."""

    seq: int
    timestamp: str
    kind: str
    actor: str
    payload: str
    prev_hash: str
    prev_signature: str | None
    node_signature: str | None
    node_public_key: str | None


_INT_MIN, _INT_MAX = -(2**53) + 1, 2**53 - 1  # RFC 8785's exact integer range


def _plain(value: object) -> bool:
    """True if ``value`` holds only ASCII-keyed objects, arrays, strings, safe ints, bools and nulls."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return _INT_MIN <= value <= _INT_MAX
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return False


def payload_text(payload: object) -> str:
    """The canonical JSON (RFC 8785) text of a payload: what is stored, what nodes sign.

    Payloads without floats or non-ASCII keys (nearly all) take a fast path whose
    output is byte-identical to :func:`ledger.crypto.canonical_json` (for such
    values RFC 8785 is sorted keys, compact separators and JSON string escapes,
    which ``json.dumps`` produces; a test pins the equality); anything else goes
    through ``canonical_json`` itself.
    """
    if _plain(payload):
        text = _PAYLOAD_ENCODER.encode(payload)
        try:
            text.encode("utf-8")
            return text
        except UnicodeEncodeError:
            pass  # lone surrogates: let canonical_json name the problem
    return canonical_json(payload).decode("utf-8")


def envelope_bytes(env: Envelope) -> bytes:
    """RFC 8785 canonical JSON of the envelope.

    Every value is a string, an int below 2**53 or null and every key is ASCII, and
    for those ``json`` with sorted keys, compact separators and
    ``ensure_ascii=False`` emits exactly the RFC 8785 bytes (same escapes, same
    lowercase ``\\u00xx``), at a fifth of the cost; a test pins the equality.
    """
    return _ENVELOPE_ENCODER.encode(
        {  # keys written in sorted order, so the encoder need not sort them
            "actor": env.actor,
            "kind": env.kind,
            "node_public_key": env.node_public_key,
            "node_signature": env.node_signature,
            "payload": env.payload,
            "prev_hash": env.prev_hash,
            "prev_signature": env.prev_signature,
            "seq": env.seq,
            "timestamp": env.timestamp,
        }
    ).encode("utf-8")


def entry_hash(env: Envelope) -> str:
    """Hex SHA-256 of the envelope's canonical bytes."""
    return hashlib.sha256(envelope_bytes(env)).hexdigest()


def sign_hash(key: Ed25519PrivateKey, hash_hex: str) -> str:
    """The coordinator's base64 signature over an entry hash."""
    return sign_b64(key, hash_hex.encode("ascii"))


def signature_valid(public_key: Ed25519PublicKey, signature_b64: str | None, message: bytes) -> bool:
    """True iff ``signature_b64`` is a valid base64 Ed25519 signature of ``message`` by ``public_key``."""
    if not signature_b64:
        return False
    try:
        raw = base64.b64decode(signature_b64, validate=True)
        public_key.verify(raw, message)
    except Exception:  # bad base64, wrong length, InvalidSignature: all mean "not valid"
        return False
    return True
