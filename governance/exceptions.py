"""Domain errors of the governance package.

Every error carries ``status``: the name of the gRPC status code the
GovernanceService answers with when the error reaches it, so the mapping lives
next to the error and the core package never imports gRPC.
"""

from __future__ import annotations


class GovernanceError(Exception):
    """Base class of every governance error; ``status`` names its gRPC status code."""

    status: str = "FAILED_PRECONDITION"


class PolicyFileError(GovernanceError, ValueError):
    """A policy file cannot be read or does not follow the schema (message names file and line)."""

    status = "INVALID_ARGUMENT"


class InvalidRequestError(GovernanceError, ValueError):
    """A request or proposal is malformed or refers to something that does not exist."""

    status = "INVALID_ARGUMENT"


class UnknownComponentError(GovernanceError, LookupError):
    """A component id has no consent contract in the contract set."""

    status = "NOT_FOUND"


class ContractsNotInstalledError(GovernanceError):
    """The governance store holds no contract set yet (derive and install one first)."""

    status = "FAILED_PRECONDITION"


class NodeAlreadyRegisteredError(GovernanceError):
    """A node id is already registered and active."""

    status = "ALREADY_EXISTS"


class NodeNotFoundError(GovernanceError, LookupError):
    """A node id is not in the registry."""

    status = "NOT_FOUND"


class AuthenticationError(GovernanceError):
    """A signed request could not be authenticated."""

    status = "UNAUTHENTICATED"


class UnsignedRequestError(AuthenticationError):
    """A write request carries no signature."""


class UnknownSignerError(AuthenticationError):
    """A write request names a node that is not registered."""


class InvalidSignatureError(AuthenticationError):
    """A signature does not verify against the signer's registered public key (forged or corrupted)."""


class StaleRequestError(AuthenticationError):
    """A request's timestamp lies outside the accepted window (replayed later, or a skewed clock)."""


class ReplayedRequestError(GovernanceError):
    """A request reuses a nonce the signer already used: a replay."""

    status = "ALREADY_EXISTS"


class PermissionDeniedError(GovernanceError):
    """The signer is known but may not perform the act (removed, or has no key)."""

    status = "PERMISSION_DENIED"


class DuplicateVoteError(GovernanceError):
    """The node already voted on this proposal; one vote per node per proposal."""

    status = "ALREADY_EXISTS"


class ProposalNotFoundError(GovernanceError, LookupError):
    """No proposal has this id."""

    status = "NOT_FOUND"


class ProposalClosedError(GovernanceError):
    """The proposal is no longer open for votes (decided, or past its deadline)."""

    status = "FAILED_PRECONDITION"


class StoreError(GovernanceError):
    """The governance database could not be opened or written."""

    status = "UNAVAILABLE"


class RemoteGovernanceError(GovernanceError):
    """A GovernanceService call failed; ``status`` is the gRPC status code name it answered with."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
