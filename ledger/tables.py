"""The ledger's SQL tables (SQLModel): the entries, and a one-row head record.

``ledger_head`` is the lock writers take (PostgreSQL: ``SELECT ... FOR UPDATE``
on its row), the coordinator key the chain is signed with, and a copy of the
last entry's seq and hash with the coordinator's signature over them
(:mod:`ledger.head`), so a removed tail is noticed by verify and refused by
append, and a rewritten head record does not verify.
"""

from __future__ import annotations

from sentinel.ledger.chain import GENESIS_HASH
from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text
from sqlmodel import Field, SQLModel

# INTEGER PRIMARY KEY on SQLite makes seq the rowid (64-bit there anyway); BIGINT elsewhere.
_SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")


class LedgerEntryRow(SQLModel, table=True):
    """One stored entry; every column but ``node`` is hashed, and ``node`` is re-derived by verify."""

    __tablename__ = "ledger_entry"
    __table_args__ = (
        Index("ix_ledger_entry_kind_seq", "kind", "seq"),
        Index("ix_ledger_entry_node_seq", "node", "seq"),
    )

    seq: int = Field(sa_column=Column(_SEQ_TYPE, primary_key=True, autoincrement=False))
    timestamp: str = Field(sa_type=String(40))
    kind: str = Field(sa_type=String(40))
    actor: str = Field(sa_type=String(128))
    node: str | None = Field(default=None, sa_type=String(128))
    payload: str = Field(sa_type=Text)
    prev_hash: str = Field(sa_type=String(64))
    prev_signature: str | None = Field(default=None, sa_type=String(100))
    hash: str = Field(sa_type=String(64))
    signature: str = Field(sa_type=String(100))
    node_signature: str | None = Field(default=None, sa_type=Text)
    node_public_key: str | None = Field(default=None, sa_type=String(100))


class LedgerHeadRow(SQLModel, table=True):
    """The single head record (``id`` 1): lock row, coordinator key, last entry and its signed head."""

    __tablename__ = "ledger_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = Field(default=-1, sa_type=BigInteger)
    hash: str = Field(default=GENESIS_HASH, sa_type=String(64))
    public_key: str | None = Field(default=None, sa_type=String(100))
    signature: str | None = Field(default=None, sa_type=String(100))


ENTRY_TABLE: Table = LedgerEntryRow.__table__  # type: ignore[assignment]
HEAD_TABLE: Table = LedgerHeadRow.__table__  # type: ignore[assignment]

ENTRY_COLUMNS = (
    "seq",
    "timestamp",
    "kind",
    "actor",
    "node",
    "payload",
    "prev_hash",
    "prev_signature",
    "hash",
    "signature",
    "node_signature",
    "node_public_key",
)
"""Column order used when rows are read as plain tuples (verify, streaming)."""
