"""What governance needs from the ledger: somewhere to append signed entries.

Governance records every act (registration, proposal, vote, execution, contract
change) through this protocol, so it does not depend on the ledger's storage;
``ledger.store.Ledger`` satisfies it. The entry kinds are
:class:`sentinel.protos.vocabulary.EntryKind` members, and entries an act appends
together are ``ledger.entries.AppendRequest`` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from sentinel.ledger.entries import AppendRequest


@runtime_checkable
class LedgerSink(Protocol):
    """Appends one entry to the ledger and returns it (or raises, leaving the ledger unchanged).

    ``node_signature`` is a node's base64 Ed25519 signature over
    ``canonical_json(payload)``; the ledger verifies it against the node's
    registered key before appending (``node_public_key``, when given, must be
    that key: an unregistered node cannot sign).
    """

    def append(
        self,
        kind: str,
        actor: str,
        payload: dict[str, Any],
        *,
        node_signature: str | None = None,
        node_public_key: str | None = None,
    ) -> object:
        """Append an entry of ``kind`` by ``actor`` carrying ``payload``."""
        ...


def append_entries(ledger: LedgerSink, entries: Sequence[AppendRequest]) -> list[object]:
    """Append ``entries`` in order: in one ledger transaction when the ledger has ``append_many``
    (``ledger.store.Ledger`` does), else one by one."""
    if not entries:
        return []
    append_many = getattr(ledger, "append_many", None)
    if callable(append_many):
        return list(append_many(list(entries)))
    return [
        ledger.append(e.kind, e.actor, e.payload, node_signature=e.node_signature, node_public_key=e.node_public_key)
        for e in entries
    ]
