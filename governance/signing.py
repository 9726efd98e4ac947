"""Signed requests: how nodes authenticate governance writes and how replays are refused.

Every write (a proposal, a vote) is a JSON document that names its signer, a
fresh random ``nonce`` and an ISO 8601 ``timestamp``; the signer's Ed25519 key
signs ``canonical_json(document)`` (RFC 8785). The receiver checks, in order:
signature present, signer registered, signer active and holding a key,
signature valid, timestamp within the window; the nonce store (in the
governance database) then refuses any nonce the signer used before.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import AfterValidator
from sentinel.governance.exceptions import (
    InvalidRequestError,
    InvalidSignatureError,
    PermissionDeniedError,
    StaleRequestError,
    UnknownSignerError,
    UnsignedRequestError,
)
from sentinel.governance.limits import MAX_TIMESTAMP
from sentinel.governance.registry import NodeRecord, NodeRegistry
from sentinel.ledger.crypto import Ed25519PrivateKey, canonical_json, sign_b64, verify_b64

DEFAULT_WINDOW = timedelta(minutes=5)


def utcnow() -> datetime:
    """Now, timezone-aware in UTC: the default clock of the governor and the service."""
    return datetime.now(timezone.utc)


def new_nonce() -> str:
    """A fresh random nonce (128 bits, hex)."""
    return secrets.token_hex(16)


def format_timestamp(when: datetime | None = None) -> str:
    """ISO 8601 text of ``when`` (default: now) in UTC, as signed documents carry it."""
    when = when or utcnow()
    if when.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return when.astimezone(timezone.utc).isoformat()


def parse_timestamp(text: str, field: str = "timestamp") -> datetime:
    """Parse an ISO 8601 timestamp with a timezone, as UTC-representable time; :class:`InvalidRequestError` names ``field`` otherwise.

    ``9999-12-31T23:59:59-23:59`` parses but lies beyond year 9999 in UTC, where
    no date can be stored or compared; it is refused here, before anything uses it.
    """
    if not isinstance(text, str) or len(text) > MAX_TIMESTAMP:
        raise InvalidRequestError(f"`{field}` must be an ISO 8601 timestamp of at most {MAX_TIMESTAMP} characters")
    try:
        when = datetime.fromisoformat(text)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"`{field}` {text!r} is not an ISO 8601 timestamp") from e
    if when.tzinfo is None:
        raise InvalidRequestError(f"`{field}` {text!r} has no timezone")
    try:
        when.astimezone(timezone.utc)
    except OverflowError as e:
        raise InvalidRequestError(f"`{field}` {text!r} lies outside the years 1 to 9999 in UTC") from e
    return when


def check_timestamp(text: str) -> str:
    """``text`` itself if it is an ISO 8601 timestamp with a timezone; :class:`InvalidRequestError` otherwise."""
    parse_timestamp(text)
    return text


def check_nonce_format(nonce: str) -> str:
    """Nonces are 8 to 128 printable characters (so they can be stored and compared)."""
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= 128 or not nonce.isprintable():
        raise InvalidRequestError("`nonce` must be 8 to 128 printable characters")
    return nonce


Nonce = Annotated[str, AfterValidator(check_nonce_format)]
"""A signed document's ``nonce`` field (pydantic): checked by :func:`check_nonce_format`."""
Timestamp = Annotated[str, AfterValidator(check_timestamp)]
"""A signed document's ``timestamp`` field (pydantic): ISO 8601 text with a timezone, kept as signed."""


def sign_document(key: Ed25519PrivateKey, document: Mapping[str, Any]) -> str:
    """Base64 Ed25519 signature over ``canonical_json(document)``."""
    return sign_b64(key, canonical_json(dict(document)))


def authenticate(
    registry: NodeRegistry,
    signer: str,
    document: Mapping[str, Any],
    signature: str,
    timestamp: str,
    *,
    now: datetime,
    window: timedelta = DEFAULT_WINDOW,
) -> NodeRecord:
    """The signer's record if ``signature`` over ``document`` is theirs and fresh; else a clear error.

    Raises :class:`UnsignedRequestError`, :class:`UnknownSignerError`,
    :class:`PermissionDeniedError` (removed node, or one without a key),
    :class:`InvalidSignatureError` or :class:`StaleRequestError`.
    """
    if not signature:
        raise UnsignedRequestError(f"request from node {signer!r} is not signed; governance writes must be signed")
    record = registry.get(signer)
    if record is None:
        raise UnknownSignerError(f"node {signer!r} is not registered")
    if not record.active:
        raise PermissionDeniedError(f"node {signer!r} was removed from the federation")
    if not record.public_key:
        raise PermissionDeniedError(f"node {signer!r} has no registered public key, so it cannot sign")
    if not verify_b64(record.public_key, signature, canonical_json(dict(document))):
        raise InvalidSignatureError(
            f"signature does not verify against node {signer!r}'s registered key (forged or altered request)"
        )
    when = parse_timestamp(timestamp)
    skew = abs((now - when).total_seconds())
    if skew > window.total_seconds():
        raise StaleRequestError(
            f"request timestamp {timestamp} is {skew:.0f} s away from the server clock; "
            f"accepted window is ±{window.total_seconds():.0f} s (replayed request or skewed clock)"
        )
    return record
