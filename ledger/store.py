"""The ledger: an append-only, hash-chained, coordinator-signed log in a SQL database.

Appends are serialised and atomic (:mod:`ledger.engine`); entries are never
updated or deleted; everything else (summaries, balances) is derived from them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentinel.ledger import summary
from sentinel.ledger.chain import GENESIS_HASH, Envelope, entry_hash, payload_text, sign_hash, signature_valid
from sentinel.ledger.crypto import (
    CanonicalJSONError,
    Ed25519PrivateKey,
    generate_private_key,
    load_private_key,
    public_key_b64,
    public_key_from_b64,
    save_private_key,
)
from sentinel.ledger.engine import init_schema, make_engine, snapshot_transaction, write_transaction
from sentinel.ledger.entries import AppendRequest, LedgerEntry, LedgerInfo, NodeSummary, VerifyReport
from sentinel.ledger.exceptions import (
    EntryNotFoundError,
    InvalidEntryError,
    LedgerStateError,
    NodeSignatureError,
    ReadOnlyLedgerError,
    SignerMismatchError,
)
from sentinel.ledger.kinds import check_actor, check_payload, parse_kind, payload_node
from sentinel.ledger.tables import ENTRY_COLUMNS, ENTRY_TABLE, HEAD_TABLE
from sentinel.ledger.verify import verify_chain
from sentinel.protos.vocabulary import COORDINATOR, EntryKind
from sqlalchemy import Connection, Engine, func, select

DEFAULT_URL = "sqlite:///ledger.db"
_E = ENTRY_TABLE.c


def utc_timestamp() -> str:
    """Now, as the fixed-width UTC ISO-8601 string entries carry (sorts as it reads)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def row_to_entry(row: Sequence[Any]) -> LedgerEntry:
    """A :class:`LedgerEntry` from a row in :data:`ledger.tables.ENTRY_COLUMNS` order."""
    values = dict(zip(ENTRY_COLUMNS, row, strict=True))
    values["payload_json"] = values.pop("payload")
    try:
        values["kind"] = EntryKind(values["kind"])
    except ValueError:
        pass  # a tampered kind still reads; verify reports it
    return LedgerEntry(**values)


class _Prepared:
    """An append request after the checks that need no lock."""

    __slots__ = ("kind", "actor", "payload", "text", "node", "node_signature", "node_public_key")

    def __init__(self, item: AppendRequest) -> None:
        self.kind = parse_kind(str(item.kind))
        self.actor = check_actor(item.actor)
        check_payload(self.kind, item.payload)
        try:
            self.text = payload_text(dict(item.payload))
        except CanonicalJSONError as e:
            raise InvalidEntryError(f"`payload` of a {self.kind.value} entry cannot be hashed: {e}") from e
        self.payload = item.payload
        self.node = payload_node(item.payload, self.actor)
        self.node_signature = item.node_signature
        self.node_public_key = item.node_public_key
        if item.node_signature is not None and self.actor == COORDINATOR:
            raise NodeSignatureError(f"a `node_signature` needs a node `actor`, not {COORDINATOR!r}")


class Ledger:
    """A signed hash-chained ledger stored at ``url``; pass ``signer`` (the coordinator key) to append.

    Opened without a signer it is read-only (the API server, the CLI, auditors).
    """

    def __init__(self, url: str = DEFAULT_URL, signer: Ed25519PrivateKey | None = None) -> None:
        self.url = url
        self._signer = signer
        self._engine = make_engine(url, explicit_begin=True)
        self._lock = threading.Lock()  # keeps this process's threads off one SQLite connection's toes
        init_schema(self._engine)
        stored = self._stored_public_key()
        if signer is not None and stored is not None and stored != public_key_b64(signer):
            raise SignerMismatchError(
                f"the ledger at {url} is signed by key {stored}; the given signer's key is {public_key_b64(signer)}"
            )

    @classmethod
    def open(cls, url: str = DEFAULT_URL, key_path: str | Path | None = None) -> Ledger:
        """Open the ledger at ``url`` signing with the PEM key at ``key_path`` (created there if missing)."""
        if key_path is None:
            return cls(url)
        path = Path(key_path)
        if not path.exists():
            save_private_key(generate_private_key(), path)
        return cls(url, load_private_key(path))

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tooling and tests)."""
        return self._engine

    @property
    def public_key_b64(self) -> str | None:
        """The coordinator key that signs this chain: the signer's, else the one the ledger recorded."""
        return public_key_b64(self._signer) if self._signer is not None else self._stored_public_key()

    def close(self) -> None:
        """Release the database connections."""
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    def append(
        self,
        kind: EntryKind | str,
        actor: str,
        payload: dict[str, Any],
        *,
        node_signature: str | None = None,
        node_public_key: str | None = None,
    ) -> LedgerEntry:
        """Append one entry and return it as stored.

        ``actor`` is ``"coordinator"`` or a node id string. ``node_signature`` is that
        node's base64 Ed25519 signature over ``canonical_json(payload)``, checked
        against the key of the node's latest ``node_registered`` entry, else
        ``node_public_key``; a missing key or a bad signature raises
        :class:`NodeSignatureError` and stores nothing.
        """
        request = AppendRequest(kind, actor, payload, node_signature, node_public_key)
        return self.append_many([request])[0]

    def append_many(self, items: Sequence[AppendRequest]) -> list[LedgerEntry]:
        """Append several entries in one transaction: all of them, in order, or none."""
        if self._signer is None:
            raise ReadOnlyLedgerError("this ledger was opened without a signing key; pass `signer` to append")
        prepared = [_Prepared(item) for item in items]
        if not prepared:
            return []
        with self._lock, write_transaction(self._engine) as conn:
            prev_seq, prev_hash, prev_sig, prev_ts = self._locked_tail(conn)
            timestamp = max(utc_timestamp(), prev_ts)  # never earlier than the entry before
            registered: dict[str, str | None] = {}
            rows: list[dict[str, Any]] = []
            for seq, item in enumerate(prepared, start=prev_seq + 1):
                row = self._signed_row(seq, timestamp, item, prev_hash, prev_sig, self._node_key(conn, item, registered))
                rows.append(row)
                prev_hash, prev_sig = row["hash"], row["signature"]
                if item.kind is EntryKind.NODE_REGISTERED and item.node is not None:
                    registered[item.node] = item.payload.get("public_key") or None
            conn.execute(ENTRY_TABLE.insert(), rows)
            conn.execute(HEAD_TABLE.update().where(HEAD_TABLE.c.id == 1).values(seq=rows[-1]["seq"], hash=prev_hash))
        return [row_to_entry([row[c] for c in ENTRY_COLUMNS]) for row in rows]

    def _locked_tail(self, conn: Connection) -> tuple[int, str, str | None, str]:
        """Seq, hash, signature and time of the last entry, once the head record agrees and names our key."""
        head = conn.execute(select(HEAD_TABLE.c.seq, HEAD_TABLE.c.hash, HEAD_TABLE.c.public_key)).one()
        last = conn.execute(select(_E.seq, _E.hash, _E.signature, _E.timestamp).order_by(_E.seq.desc()).limit(1)).first()
        tail = tuple(last) if last is not None else (-1, GENESIS_HASH, None, "")
        if tail[:2] != (head.seq, head.hash):
            raise LedgerStateError(
                f"the last stored entry (seq {tail[0]}) is not the recorded head (seq {head.seq}); "
                "entries were removed or added outside the ledger: run `sentinel ledger verify`"
            )
        key_b64 = public_key_b64(self._signer)  # type: ignore[arg-type]
        if head.public_key is None:
            conn.execute(HEAD_TABLE.update().where(HEAD_TABLE.c.id == 1).values(public_key=key_b64))
        elif head.public_key != key_b64:
            raise SignerMismatchError(f"the ledger is signed by key {head.public_key}, not {key_b64}")
        return tail  # type: ignore[return-value]

    def _signed_row(
        self, seq: int, timestamp: str, item: _Prepared, prev_hash: str, prev_sig: str | None, node_key: str | None
    ) -> dict[str, Any]:
        """The stored row of ``item`` at ``seq``: hashed over its envelope and signed by the coordinator."""
        env = Envelope(
            seq, timestamp, item.kind.value, item.actor, item.text, prev_hash, prev_sig, item.node_signature, node_key
        )
        hash_hex = entry_hash(env)
        return dict(
            seq=seq, timestamp=timestamp, kind=env.kind, actor=env.actor, node=item.node, payload=env.payload,
            prev_hash=prev_hash, prev_signature=prev_sig, hash=hash_hex,
            signature=sign_hash(self._signer, hash_hex),  # type: ignore[arg-type]
            node_signature=item.node_signature, node_public_key=node_key,
        )

    def _node_key(self, conn: Connection, item: _Prepared, registered: dict[str, str | None]) -> str | None:
        """The key that verifies ``item``'s node signature (None when it has none); raises if none does.

        The node's latest registration wins (``registered`` caches lookups and holds
        registrations earlier in the same batch), else the request's ``node_public_key``.
        """
        if item.node_signature is None:
            return None
        node = item.actor
        if node in registered:
            key = registered[node]
        else:
            row = conn.execute(
                select(ENTRY_TABLE.c.payload)
                .where(_E.kind == EntryKind.NODE_REGISTERED.value, _E.node == node)
                .order_by(_E.seq.desc())
                .limit(1)
            ).first()
            key = (json.loads(row[0]).get("public_key") or None) if row is not None else None
            registered[node] = key  # the lock is held: it cannot change during this batch
        key = key or item.node_public_key
        if not key:
            raise NodeSignatureError(
                f"node {node!r} signed its {item.kind.value} entry but has no registered key and no `node_public_key` was given"
            )
        try:
            public_key = public_key_from_b64(key)
        except ValueError as e:
            raise NodeSignatureError(f"node {node!r}'s public key is unusable: {e}") from e
        if not signature_valid(public_key, item.node_signature, item.text.encode("utf-8")):
            raise NodeSignatureError(
                f"node {node!r}'s signature on its {item.kind.value} entry does not verify against key {key}; nothing stored"
            )
        return key

    # ------------------------------------------------------------------ reads
    def get(self, seq: int) -> LedgerEntry:
        """The entry with sequence number ``seq``; :class:`EntryNotFoundError` if there is none."""
        with self._engine.connect() as conn:
            row = conn.execute(select(*ENTRY_TABLE.c[ENTRY_COLUMNS]).where(_E.seq == seq)).first()
        if row is None:
            raise EntryNotFoundError(f"no ledger entry has seq {seq}")
        return row_to_entry(row)

    def entries(
        self,
        start: int = 0,
        limit: int = 100,
        kind: EntryKind | str | None = None,
        node: str | None = None,
        *,
        stop: int | None = None,
    ) -> list[LedgerEntry]:
        """Up to ``limit`` entries with ``start <= seq`` (``< stop``), in seq order, optionally of one kind or node."""
        if start < 0 or limit < 0:
            raise ValueError(f"`start` ({start}) and `limit` ({limit}) must be >= 0")
        query = select(*ENTRY_TABLE.c[ENTRY_COLUMNS]).where(_E.seq >= start)
        if stop is not None:
            query = query.where(_E.seq < stop)
        if kind:
            query = query.where(_E.kind == parse_kind(str(kind)).value)
        if node:
            query = query.where(_E.node == str(node))
        with self._engine.connect() as conn:
            rows = conn.execute(query.order_by(_E.seq).limit(limit)).all()
        return [row_to_entry(row) for row in rows]

    def iter_entries(
        self, start: int = 0, kind: EntryKind | str | None = None, node: str | None = None, *, page: int = 1000
    ) -> Iterator[LedgerEntry]:
        """Every entry from ``start`` on (optionally filtered), fetched ``page`` at a time."""
        while batch := self.entries(start, page, kind, node):
            yield from batch
            start = batch[-1].seq + 1

    def head(self) -> LedgerEntry | None:
        """The last entry, or None for an empty ledger."""
        with self._engine.connect() as conn:
            row = conn.execute(select(*ENTRY_TABLE.c[ENTRY_COLUMNS]).order_by(_E.seq.desc()).limit(1)).first()
        return row_to_entry(row) if row is not None else None

    def count(self) -> int:
        """How many entries are stored."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(ENTRY_TABLE)).scalar_one())

    def info(self) -> LedgerInfo:
        """Count, head and coordinator key in one call."""
        head = self.head()
        return LedgerInfo(
            count=self.count(),
            head_seq=head.seq if head else None,
            head_hash=head.hash if head else None,
            public_key=self.public_key_b64,
        )

    def verify(self, public_key: str | None = None, *, node_signatures: bool = False) -> VerifyReport:
        """Check the whole chain against the coordinator's ``public_key`` (base64; default: this ledger's).

        Reports the first bad entry and why (hash mismatch, broken link, bad
        signature, gap in sequence, order). Node signatures were checked on append
        and are covered by the coordinator-signed hashes; ``node_signatures=True``
        re-checks each one as well (an audit of the coordinator itself, at one
        Ed25519 verification per signed entry).
        """
        key = public_key or self.public_key_b64
        with snapshot_transaction(self._engine) as conn:
            if key is None:
                has_rows = conn.execute(select(_E.seq).limit(1)).first() is not None
                if not has_rows:
                    return VerifyReport(ok=True, checked=0)
                raise ValueError("no coordinator `public_key` given and none recorded in the ledger")
            return verify_chain(conn, public_key_from_b64(key), node_signatures=node_signatures)

    def node_summary(self, node: str) -> NodeSummary:
        """Registration, submissions, decisions, contributions and token balance of ``node``."""
        node = str(node)
        return summary.summarise_node(node, self.iter_entries(node=node), self.balances().get(node, 0))

    def balances(self) -> dict[str, int]:
        """Token balance per node: the sum of its allocations over all ``tokens`` entries."""
        return summary.balances(self.iter_entries(kind=EntryKind.TOKENS))

    def _stored_public_key(self) -> str | None:
        with self._engine.connect() as conn:
            return conn.execute(select(HEAD_TABLE.c.public_key).where(HEAD_TABLE.c.id == 1)).scalar_one_or_none()

