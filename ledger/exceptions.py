"""Domain errors of the ledger package.

Every error carries ``status``: the name of the gRPC status code the
LedgerService answers with when the error reaches it, so the mapping lives next
to the error and the core modules never import gRPC.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every ledger error; ``status`` names its gRPC status code."""

    status: str = "FAILED_PRECONDITION"


class InvalidEntryError(LedgerError, ValueError):
    """An entry cannot be appended: unknown kind, bad actor, or a payload that breaks its kind's schema."""

    status = "INVALID_ARGUMENT"


class NodeSignatureError(LedgerError, ValueError):
    """A node-originated entry's signature is missing its key or does not verify; nothing was stored."""

    status = "PERMISSION_DENIED"


class SignerMismatchError(LedgerError):
    """The ledger was started by another coordinator key than the one trying to append to it."""


class ReadOnlyLedgerError(LedgerError):
    """An append was attempted on a ledger opened without a signing key."""


class LedgerStateError(LedgerError):
    """The stored chain's tail disagrees with its head record; appending would fork or hide tampering."""

    status = "DATA_LOSS"


class EntryNotFoundError(LedgerError, LookupError):
    """No entry has the requested sequence number."""

    status = "NOT_FOUND"


class LedgerNotFoundError(LedgerError, LookupError):
    """A ledger opened for reading does not exist (no database, or no ledger tables in it); nothing was created."""

    status = "NOT_FOUND"


class UntrustedKeyError(LedgerError):
    """No coordinator key to trust is available: none was given and no trust anchor is published beside the ledger.

    The key a database stores about itself is never trusted: whoever can rewrite
    the chain can rewrite that key too.
    """


class TrustAnchorError(LedgerError):
    """A published trust anchor (``coordinator.pub``, ``ledger_head.json``) is unreadable or contradicts the ledger."""


class StreamLimitError(LedgerError):
    """The service is already serving as many long-lived or expensive calls of this kind as it allows."""

    status = "RESOURCE_EXHAUSTED"
