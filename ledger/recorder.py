"""What the coordinator writes to the ledger, one method per event, plus the content hash of arrays.

A thin facade over :class:`ledger.store.Ledger` that builds each kind's payload
the one way the schemas in :mod:`ledger.kinds` expect (node ids as strings,
scores as decimal strings), so the coordinator never spells a payload by hand.
A node that signs its submission signs :func:`update_submitted_payload`'s
canonical JSON (see :func:`ledger.signing.sign_payload`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sentinel.ledger.crypto import canonical_json
from sentinel.ledger.entries import AppendRequest, LedgerEntry
from sentinel.ledger.kinds import ContributionMethod, score_text
from sentinel.protos.vocabulary import COORDINATOR, EntryKind

if TYPE_CHECKING:  # the client imports content_hash_of_arrays; keep SQL out of its imports
    from sentinel.ledger.store import Ledger


def content_hash_of_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 identifying a set of named arrays (an update, a global adapter).

    Covers, for each key in sorted order, a canonical JSON header (name, dtype
    with byte order, shape, byte length) and then the C-order bytes, so equal
    content gives equal hashes on every machine and a reshaped or re-typed array
    does not collide with the original.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        if array.dtype.hasobject:
            raise ValueError(f"array `{name}` has dtype {array.dtype}; only numeric arrays can be hashed")
        data = array.tobytes(order="C")
        header = {"name": str(name), "dtype": array.dtype.str, "shape": list(array.shape), "nbytes": len(data)}
        digest.update(canonical_json(header))
        digest.update(b"\n")
        digest.update(data)
    return digest.hexdigest()


def update_submitted_payload(node: str | int, round: int, content_hash: str, examples: int) -> dict[str, Any]:
    """The payload of an ``update_submitted`` entry: what the submitting node signs."""
    return {"node": str(node), "round": int(round), "content_hash": content_hash, "examples": int(examples)}


def validation_verdict_payload(node: str | int, round: int, validator: str | int, accept: bool, reason: str = "") -> dict[str, object]:
    """The ``validation_verdict`` payload: what a validator signs about ``node``'s update in ``round``."""
    return {"node": str(node), "round": int(round), "validator": str(validator), "accept": bool(accept), "reason": reason}


class LedgerRecorder:
    """Records a federation's events on ``ledger`` (the coordinator's signing ledger)."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def node_registered(self, node: str | int, role: str, public_key: str | None) -> LedgerEntry:
        """A node joined with ``role``; ``public_key`` (base64 Ed25519) will check its signatures."""
        payload = {"node": str(node), "role": role, "public_key": public_key}
        return self.ledger.append(EntryKind.NODE_REGISTERED, COORDINATOR, payload)

    def round_started(self, round: int, config: Mapping[str, Any] | None = None) -> LedgerEntry:
        """Round ``round`` began with ``config`` (JSON values)."""
        return self.ledger.append(EntryKind.ROUND_STARTED, COORDINATOR, {"round": int(round), "config": dict(config or {})})

    def update_submitted(
        self,
        node: str | int,
        round: int,
        content_hash: str,
        examples: int,
        node_signature: str | None = None,
    ) -> LedgerEntry:
        """``node``'s update arrived; with ``node_signature`` (over this payload) the node vouches for it."""
        payload = update_submitted_payload(node, round, content_hash, examples)
        return self.ledger.append(EntryKind.UPDATE_SUBMITTED, str(node), payload, node_signature=node_signature)

    def validation_verdict(
        self,
        node: str | int,
        round: int,
        validator: str | int,
        accept: bool,
        reason: str = "",
        node_signature: str | None = None,
    ) -> LedgerEntry:
        """``validator``'s verdict on ``node``'s update (signed by the validator, if ``node_signature``)."""
        payload = validation_verdict_payload(node, round, validator, accept, reason)
        actor = str(validator) if node_signature is not None else COORDINATOR
        return self.ledger.append(EntryKind.VALIDATION_VERDICT, actor, payload, node_signature=node_signature)

    def update_accepted(self, node: str | int, round: int, reason: str = "") -> LedgerEntry:
        """``node``'s update went into the round's aggregate."""
        return self._decision(EntryKind.UPDATE_ACCEPTED, node, round, reason)

    def update_rejected(self, node: str | int, round: int, reason: str) -> LedgerEntry:
        """``node``'s update was left out, and why."""
        return self._decision(EntryKind.UPDATE_REJECTED, node, round, reason)

    def consent_violation(self, node: str | int, round: int, components: Sequence[str]) -> LedgerEntry:
        """``node``'s update touched ``components`` outside its permitted set."""
        payload = {"node": str(node), "round": int(round), "components": sorted(components)}
        return self.ledger.append(EntryKind.CONSENT_VIOLATION, COORDINATOR, payload)

    def contribution(
        self, round: int, scores: Mapping[str | int, float], method: ContributionMethod
    ) -> list[LedgerEntry]:
        """One ``contribution`` entry per node (one transaction), scores as decimal strings."""
        requests = [
            AppendRequest(
                EntryKind.CONTRIBUTION,
                COORDINATOR,
                {"node": str(node), "round": int(round), "score": score_text(score), "method": method},
            )
            for node, score in sorted(scores.items(), key=lambda item: str(item[0]))
        ]
        return self.ledger.append_many(requests)

    def tokens(self, round: int, allocations: Mapping[str | int, int], budget: int | None = None) -> LedgerEntry:
        """The round's token distribution (see :func:`ledger.tokens.distribute_tokens`)."""
        payload: dict[str, Any] = {"round": int(round), "allocations": {str(n): int(a) for n, a in allocations.items()}}
        if budget is not None:
            payload["budget"] = int(budget)
        return self.ledger.append(EntryKind.TOKENS, COORDINATOR, payload)

    def checkpoint(self, round: int, adapter_hash: str) -> LedgerEntry:
        """The global adapter after ``round``, by its :func:`content_hash_of_arrays`."""
        return self.ledger.append(EntryKind.CHECKPOINT, COORDINATOR, {"round": int(round), "adapter_hash": adapter_hash})

    def _decision(self, kind: EntryKind, node: str | int, round: int, reason: str) -> LedgerEntry:
        return self.ledger.append(kind, COORDINATOR, {"node": str(node), "round": int(round), "reason": reason})
