"""Which key may sign for a node: the one its latest registration on the chain gives it.

A node-signed entry proves something only if the key that verifies it is the
node's *registered* key, from a ``node_registered`` entry earlier in the chain
that no later ``node_removed`` entry revoked; a key the entry brings along
proves nothing (anyone can make a key pair). :class:`NodeKeys` answers that for
one append batch, inside its write transaction; :mod:`ledger.verify` applies
the same rule while it scans.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sentinel.ledger.chain import signature_valid
from sentinel.ledger.crypto import public_key_from_b64
from sentinel.ledger.exceptions import NodeSignatureError
from sentinel.ledger.tables import ENTRY_TABLE
from sentinel.protos.vocabulary import EntryKind
from sqlalchemy import Connection, select

_E = ENTRY_TABLE.c
_MEMBERSHIP = (EntryKind.NODE_REGISTERED.value, EntryKind.NODE_REMOVED.value)


class NodeKeys:
    """Registered node keys as of the stored tail (looked up once per node), plus the batch's own registrations."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._keys: dict[str, str | None] = {}

    def key(self, node: str) -> str | None:
        """The key ``node`` signs with now (None: never registered with a key, or removed since)."""
        if node not in self._keys:  # the write lock is held: the stored chain cannot change during the batch
            row = self._conn.execute(
                select(_E.kind, _E.payload).where(_E.kind.in_(_MEMBERSHIP), _E.node == node).order_by(_E.seq.desc()).limit(1)
            ).first()
            registered = row is not None and row[0] == EntryKind.NODE_REGISTERED.value
            self._keys[node] = (json.loads(row[1]).get("public_key") or None) if registered else None  # type: ignore[index]
        return self._keys[node]

    def record(self, kind: EntryKind, node: str | None, payload: Mapping[str, Any]) -> None:
        """Take an entry of the batch into account (a registration sets the node's key, a removal clears it)."""
        if node is None:
            return
        if kind is EntryKind.NODE_REGISTERED:
            self._keys[node] = payload.get("public_key") or None
        elif kind is EntryKind.NODE_REMOVED:
            self._keys[node] = None

    def check(self, node: str, kind: EntryKind, text: str, signature: str, claimed_key: str | None) -> str:
        """The registered key that verifies ``node``'s ``signature`` over ``text``; :class:`NodeSignatureError` otherwise.

        ``claimed_key`` (a request's ``node_public_key``), when given, must be that key.
        """
        key = self.key(node)
        if not key:
            raise NodeSignatureError(
                f"node {node!r} signed its {kind.value} entry but is not registered with a key "
                "(no earlier node_registered entry gives one); nothing stored"
            )
        if claimed_key and claimed_key != key:
            raise NodeSignatureError(f"`node_public_key` {claimed_key} is not node {node!r}'s registered key {key}; nothing stored")
        try:
            public_key = public_key_from_b64(key)
        except ValueError as e:
            raise NodeSignatureError(f"node {node!r}'s public key is unusable: {e}") from e
        if not signature_valid(public_key, signature, text.encode("utf-8")):
            raise NodeSignatureError(
                f"node {node!r}'s signature on its {kind.value} entry does not verify against key {key}; nothing stored"
            )
        return key
