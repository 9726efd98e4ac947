"""Database engines (the ledger's and governance's), and the ledger's one way to write: a serialised transaction.

:func:`make_engine` is the one place a SQLite or PostgreSQL engine is set up;
``governance.store`` opens its database with it too.

Serialisation (documented choice):

* SQLite: writes start with ``BEGIN IMMEDIATE``, which takes the database's write
  lock before the head is read, so two writers (threads or processes) can never
  both extend the same head; others wait (``busy_timeout``). WAL journaling lets
  readers (verify, the API's streams) run while a writer holds the lock.
* PostgreSQL: writes lock the head record with ``SELECT ... FOR UPDATE``; the
  next writer blocks on that row until the first commits, then (READ COMMITTED)
  sees the new head.

Either way the entry rows and the head record change in one transaction, and
``seq`` is the primary key, so a crash leaves each entry there whole or not at
all and a forked chain cannot be stored.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sentinel.ledger.tables import ENTRY_TABLE, HEAD_TABLE
from sqlalchemy import Connection, Engine, create_engine, event, inspect, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

SQLITE_BUSY_TIMEOUT_S = 60.0
_WRITE = "ledger_write"


def _is_memory(database: str | None) -> bool:
    return database in (None, "", ":memory:")


def database_url(url_or_path: str | Path) -> str:
    """A SQLAlchemy URL: paths become SQLite files; ``postgresql://`` uses the psycopg (v3) driver."""
    raw = str(url_or_path)
    if "://" not in raw:
        return f"sqlite:///{Path(raw).expanduser()}"
    if raw.startswith("postgresql://") or raw.startswith("postgres://"):
        return "postgresql+psycopg://" + raw.split("://", 1)[1]
    return raw


def make_engine(url_or_path: str | Path, *, explicit_begin: bool = False) -> Engine:
    """An engine for a database URL or a SQLite file path (normalised by :func:`database_url`).

    ``sqlite:///FILE`` (or a plain path): the file's folder is created, connections
    wait up to ``SQLITE_BUSY_TIMEOUT_S`` for a lock and use WAL journaling, so
    readers (verify, the API servers) never block the writer and vice versa;
    ``sqlite://`` is one in-memory database shared by every thread. Anything
    else (``postgresql+psycopg://...``) gets a pool that pings before use.

    ``explicit_begin`` (SQLite only) turns off pysqlite's own transaction
    handling: the engine emits ``BEGIN`` itself, and ``BEGIN IMMEDIATE`` on the
    connections :func:`write_transaction` marks, so a ledger writer holds the
    write lock from before it reads the head. Without it (governance) pysqlite
    begins a transaction at the first write, so a session that only flushes at
    commit takes no write lock before then.
    """
    url = database_url(url_or_path)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    memory = _is_memory(parsed.database)
    if not memory:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        if explicit_begin:
            dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    if explicit_begin:

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def is_sqlite(engine: Engine) -> bool:
    """True for SQLite engines."""
    return engine.dialect.name == "sqlite"


@contextmanager
def _writer_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose transactions start with SQLite's write lock (``BEGIN IMMEDIATE``; see `make_engine`)."""
    with engine.connect() as conn:
        if is_sqlite(engine):
            conn.execution_options(**{_WRITE: True})
        yield conn


def init_schema(engine: Engine) -> None:
    """Create the ledger tables and the head record if missing (safe to race from several processes).

    A ledger written before heads were signed gains the head's ``signature``
    column here (empty until the next append signs it).
    """
    with _writer_connection(engine) as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('sentinel-ledger-init'))"))
        ENTRY_TABLE.metadata.create_all(conn, tables=[ENTRY_TABLE, HEAD_TABLE])
        if "signature" not in {c["name"] for c in inspect(conn).get_columns(HEAD_TABLE.name)}:
            conn.execute(text(f"ALTER TABLE {HEAD_TABLE.name} ADD COLUMN signature VARCHAR(100)"))
        if conn.execute(select(HEAD_TABLE.c.id)).first() is None:
            conn.execute(HEAD_TABLE.insert().values(id=1))


def schema_problem(engine: Engine) -> str | None:
    """Why the database cannot be read as a ledger without changing it (None when it can)."""
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        if not {ENTRY_TABLE.name, HEAD_TABLE.name} <= tables:
            return "it holds no ledger tables"
        if "signature" not in {c["name"] for c in inspect(conn).get_columns(HEAD_TABLE.name)}:
            return "it was written before ledger heads were signed; open it once with the coordinator key to upgrade it"
        if conn.execute(select(HEAD_TABLE.c.id)).first() is None:
            return "its head record is missing"
    return None


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the ledger's write lock from its start to its commit."""
    with _writer_connection(engine) as conn, conn.begin():
        if not is_sqlite(engine):
            conn.execute(select(HEAD_TABLE.c.id).where(HEAD_TABLE.c.id == 1).with_for_update())
        yield conn


@contextmanager
def snapshot_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that sees one consistent state of the chain throughout."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn
