"""The ledger: an append-only, hash-chained, coordinator-signed log in a SQL database.

Appends are serialised and atomic (:mod:`ledger.engine`); entries are never
updated or deleted; everything else (summaries, balances) is derived from them.
Every append also signs the new head (:mod:`ledger.head`), and verification
trusts only a key given to it, the signer's own, or the trust anchor published
beside the database (:mod:`ledger.anchor`), never the key the database stores.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sentinel.ledger import anchor, summary
from sentinel.ledger.chain import GENESIS_HASH, Envelope, entry_hash, payload_text, sign_hash, signature_valid
from sentinel.ledger.crypto import (
    CanonicalJSONError,
    Ed25519PrivateKey,
    load_or_create_private_key,
    public_key_b64,
    public_key_from_b64,
)
from sentinel.ledger.engine import (
    database_url,
    init_schema,
    make_engine,
    schema_problem,
    snapshot_transaction,
    write_transaction,
)
from sentinel.ledger.entries import AppendRequest, LedgerEntry, LedgerInfo, NodeSummary, VerifyReport
from sentinel.ledger.exceptions import (
    EntryNotFoundError,
    InvalidEntryError,
    LedgerNotFoundError,
    LedgerStateError,
    NodeSignatureError,
    ReadOnlyLedgerError,
    SignerMismatchError,
)
from sentinel.ledger.head import MAX_SEQ, SignedHead, head_message, sign_head
from sentinel.ledger.kinds import check_actor, check_payload, parse_kind, payload_node
from sentinel.ledger.node_keys import NodeKeys
from sentinel.ledger.tables import ENTRY_COLUMNS, ENTRY_TABLE, HEAD_TABLE
from sentinel.ledger.verify import verify_chain
from sentinel.protos.vocabulary import COORDINATOR, EntryKind
from sqlalchemy import Connection, Engine, func, make_url, select

DEFAULT_URL = "sqlite:///ledger.db"
_E = ENTRY_TABLE.c


def check_seq(value: int, name: str = "seq") -> int:
    """``value`` if it is a sequence number a ledger can hold (0 to 2**63 - 1); ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise ValueError(f"`{name}` must be an integer from 0 to {MAX_SEQ}, got {value!r}")
    return value


def _missing_sqlite_file(url: str) -> str | None:
    """The path of a SQLite file ``url`` names that does not exist (None: not SQLite, in memory, or present)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return None if Path(parsed.database).exists() else str(parsed.database)


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

    Opened without a signer it is read-only (the API server, the CLI, auditors)
    and never creates anything: a database that does not exist, or holds no
    ledger, raises :class:`LedgerNotFoundError`. ``create`` overrides that
    (default: create the schema only when signing).
    """

    def __init__(self, url: str = DEFAULT_URL, signer: Ed25519PrivateKey | None = None, *, create: bool | None = None) -> None:
        self.url = url
        self._signer = signer
        create = signer is not None if create is None else create
        if not create and (missing := _missing_sqlite_file(database_url(url))) is not None:
            raise LedgerNotFoundError(f"no ledger database at {missing}")
        self._engine = make_engine(url, explicit_begin=True)
        self._lock = threading.Lock()  # keeps this process's threads off one SQLite connection's toes
        if create:
            init_schema(self._engine)
        elif (problem := schema_problem(self._engine)) is not None:
            self._engine.dispose()
            raise LedgerNotFoundError(f"{url} is not a readable ledger: {problem}")
        stored = self._stored_public_key()
        if signer is not None and stored is not None and stored != public_key_b64(signer):
            raise SignerMismatchError(
                f"the ledger at {url} is signed by key {stored}; the given signer's key is {public_key_b64(signer)}"
            )

    @classmethod
    def open(cls, url: str = DEFAULT_URL, key_path: str | Path | None = None) -> Ledger:
        """Open the ledger at ``url`` signing with the PEM key at ``key_path``.

        A missing key file is created with a fresh key, atomically and exclusively:
        processes racing to open a fresh ledger all end up with the one key that won.
        """
        if key_path is None:
            return cls(url)
        return cls(url, load_or_create_private_key(key_path))

    @property
    def read_only(self) -> bool:
        """True when opened without a signer (no appends, no head signing)."""
        return self._signer is None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tooling and tests)."""
        return self._engine

    @property
    def public_key_b64(self) -> str | None:
        """The coordinator key that signs this chain: the signer's, else the one the ledger recorded.

        The recorded key is information, not trust: :meth:`verify` never uses it.
        """
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
        against the key of the node's latest ``node_registered`` entry (not
        revoked by a ``node_removed`` one; see :mod:`ledger.node_keys`);
        ``node_public_key``, if given, must be that key. An unregistered node, a
        bad signature or another key raises :class:`NodeSignatureError` and
        stores nothing.
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
            keys = NodeKeys(conn)
            rows: list[dict[str, Any]] = []
            for seq, item in enumerate(prepared, start=prev_seq + 1):
                node_key = (
                    keys.check(item.actor, item.kind, item.text, item.node_signature, item.node_public_key)
                    if item.node_signature is not None else None
                )
                row = self._signed_row(seq, timestamp, item, prev_hash, prev_sig, node_key)
                rows.append(row)
                prev_hash, prev_sig = row["hash"], row["signature"]
                keys.record(item.kind, item.node, item.payload)
            conn.execute(ENTRY_TABLE.insert(), rows)
            head = sign_head(self._signer, rows[-1]["seq"], prev_hash)
            conn.execute(
                HEAD_TABLE.update().where(HEAD_TABLE.c.id == 1).values(seq=head.seq, hash=head.hash, signature=head.signature)
            )
        return [row_to_entry([row[c] for c in ENTRY_COLUMNS]) for row in rows]

    def _locked_tail(self, conn: Connection) -> tuple[int, str, str | None, str]:
        """Seq, hash, signature and time of the last entry, once the head record agrees, is ours and names our key."""
        head = conn.execute(select(HEAD_TABLE.c.seq, HEAD_TABLE.c.hash, HEAD_TABLE.c.public_key, HEAD_TABLE.c.signature)).one()
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
        if head.signature is not None and not signature_valid(
            self._signer.public_key(), head.signature, head_message(head.seq, head.hash)  # type: ignore[union-attr]
        ):
            raise LedgerStateError(
                f"the head record (seq {head.seq}) is not signed by this coordinator: it was rewritten outside the "
                "ledger; run `sentinel ledger verify`"
            )
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

    # ------------------------------------------------------------------ reads
    def get(self, seq: int) -> LedgerEntry:
        """The entry with sequence number ``seq``; :class:`EntryNotFoundError` if there is none."""
        check_seq(seq)
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
        check_seq(start, "start")
        if limit < 0:
            raise ValueError(f"`limit` ({limit}) must be >= 0")
        if stop is not None:
            check_seq(stop, "stop")
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

    def signed_head(self) -> SignedHead:
        """The chain's head (seq and hash of the last entry; seq -1 when empty) with the coordinator's signature.

        Read from the head record in one snapshot, after checking that it names
        the last stored entry. A signing ledger checks the stored signature is its
        own and signs a head that has none yet (a fresh ledger, or one written
        before heads were signed); a read-only ledger returns the stored one
        (check it with :meth:`SignedHead.is_valid`) and raises
        :class:`LedgerStateError` if there is none.
        """
        with snapshot_transaction(self._engine) as conn:
            head = conn.execute(select(HEAD_TABLE.c.seq, HEAD_TABLE.c.hash, HEAD_TABLE.c.signature)).one()
            last = conn.execute(select(_E.seq, _E.hash).order_by(_E.seq.desc()).limit(1)).first()
        tail = tuple(last) if last is not None else (-1, GENESIS_HASH)
        if tail != (head.seq, head.hash):
            raise LedgerStateError(
                f"the last stored entry (seq {tail[0]}) is not the recorded head (seq {head.seq}); run `sentinel ledger verify`"
            )
        if head.signature is None:
            if self._signer is None:
                raise LedgerStateError(f"the head record of {self.url} (seq {head.seq}) is not signed")
            return sign_head(self._signer, head.seq, head.hash)
        signed = SignedHead(seq=head.seq, hash=head.hash, signature=head.signature)
        if self._signer is not None and not signed.is_valid(self._signer.public_key()):
            raise LedgerStateError(f"the head record of {self.url} (seq {head.seq}) is not signed by this coordinator")
        return signed

    def verify(
        self, public_key: str | None = None, *, node_signatures: bool = False, head: SignedHead | None = None
    ) -> VerifyReport:
        """Check the whole chain against a trusted coordinator key.

        The key is ``public_key`` (base64) when given, else the signer's own, else
        the trust anchor published beside the database (``coordinator.pub`` next
        to a SQLite file, see :mod:`ledger.anchor`); the key the database records
        is never used, and with none of these :class:`UntrustedKeyError` is
        raised. ``head`` is a published :class:`SignedHead` the chain must reach
        (default: the anchor's ``ledger_head.json`` when there is one).

        Reports the first bad entry and why (hash mismatch, broken link, bad
        signature, gap in sequence, order, truncated, head mismatch). Node
        signatures were checked on append and are covered by the
        coordinator-signed hashes; ``node_signatures=True`` re-checks each one as
        well (an audit of the coordinator itself, at one Ed25519 verification per
        signed entry), against the keys of registered nodes only.
        """
        signer_key = public_key_b64(self._signer) if self._signer is not None else None
        key, head = anchor.trusted_key(self.url, public_key, signer_key, head)
        with snapshot_transaction(self._engine) as conn:
            report = verify_chain(conn, public_key_from_b64(key), node_signatures=node_signatures, published=head)
        return dataclasses.replace(report, public_key=key, head_seq=head.seq if head is not None else None)

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

