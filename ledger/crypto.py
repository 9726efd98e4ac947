"""Ed25519 keys, signatures and canonical JSON shared by the ledger and governance.

Everything that is hashed or signed in Sentinel Federation is first turned into
canonical JSON (RFC 8785, "JCS"): sorted keys, no insignificant whitespace and
ECMAScript number formatting, so any implementation in any language reproduces
the exact bytes. Keys are Ed25519 (``cryptography``); public keys travel as
base64 of their 32 raw bytes, signatures as base64 of their 64 raw bytes.
"""

from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from sentinel.ledger.files import create_exclusively, read_when_complete, write_atomically

__all__ = [
    "CanonicalJSONError",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "canonical_json",
    "sha256_hex",
    "generate_private_key",
    "public_key_b64",
    "public_key_from_b64",
    "private_key_from_pem",
    "private_key_to_pem",
    "load_or_create_private_key",
    "load_private_key",
    "public_key_from_text",
    "save_private_key",
    "sign",
    "sign_b64",
    "verify",
    "verify_b64",
]


class CanonicalJSONError(ValueError):
    """A value cannot be represented in canonical JSON (NaN, infinity, bytes, ...)."""


def _check_finite(value: Any, path: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise CanonicalJSONError(f"non-finite float {value!r} at `{path}` cannot be hashed or signed")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"non-string key {key!r} at `{path}`")
            _check_finite(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")


def canonical_json(value: Any) -> bytes:
    """Return the RFC 8785 canonical JSON bytes of ``value``.

    These bytes are what hashes and signatures cover, so two parties that hold the
    same logical payload always agree on its hash.
    """
    _check_finite(value, "$")
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError) as e:  # pragma: no cover - message path
        raise CanonicalJSONError(f"value cannot be canonicalised: {e}") from e


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Base64 of the 32 raw public-key bytes (the form stored and sent everywhere)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """Parse a base64 raw Ed25519 public key; ``ValueError`` names what is wrong."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as e:
        raise ValueError(f"public key is not valid base64: {e}") from e
    if len(raw) != 32:
        raise ValueError(f"Ed25519 public key must be 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_key_from_text(text: str | bytes) -> Ed25519PublicKey:
    """Parse a public key written as base64 raw bytes or as a PEM ``PUBLIC KEY`` block; ``ValueError`` if neither."""
    data = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    stripped = data.strip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(stripped)
        except ValueError as e:
            raise ValueError(f"public key PEM cannot be parsed: {e}") from e
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
        return key
    return public_key_from_b64(stripped.decode("ascii", "replace"))


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM bytes of a private key (unencrypted; protect the file instead)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_pem(data: bytes) -> Ed25519PrivateKey:
    """Parse a PKCS#8 PEM Ed25519 private key."""
    key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def save_private_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    """Write a private key as PEM with mode 0600, atomically (never a half-written key).

    The bytes go to a uniquely named temporary file first (:mod:`ledger.files`),
    so concurrent writers never share or remove each other's temporary file.
    """
    return write_atomically(path, private_key_to_pem(key), mode=0o600)


def load_or_create_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The key in the PEM file at ``path``, which is created (mode 0600) with a fresh key if missing.

    Creation is atomic and exclusive (:func:`ledger.files.create_exclusively`):
    of several processes racing to create the key exactly one wins, and every
    other one reads the winner's key, so all of them sign with the same key.
    """
    path = Path(path)
    if path.exists():
        return load_private_key(path)
    key = generate_private_key()
    if create_exclusively(path, private_key_to_pem(key), mode=0o600):
        return key
    return read_when_complete(lambda: load_private_key(path))  # lost the race: the winner's key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM private key written by :func:`save_private_key`."""
    path = Path(path)
    try:
        return private_key_from_pem(path.read_bytes())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"private key file {path} does not exist") from e
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    """Ed25519 signature (64 bytes) over ``data``."""
    return key.sign(data)


def sign_b64(key: Ed25519PrivateKey, data: bytes) -> str:
    """Base64 Ed25519 signature over ``data``."""
    return base64.b64encode(sign(key, data)).decode("ascii")


def verify(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def verify_b64(public_key_b64_text: str, signature_b64: str, data: bytes) -> bool:
    """Like :func:`verify`, with the key and signature in their base64 wire forms."""
    try:
        pub = public_key_from_b64(public_key_b64_text)
        sig = base64.b64decode(signature_b64, validate=True)
    except (ValueError, TypeError):
        return False
    return verify(pub, sig, data)
