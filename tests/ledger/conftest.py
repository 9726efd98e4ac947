"""Fixtures for ledger tests: databases (SQLite file and PostgreSQL), keys, a filled ledger.

PostgreSQL tests take the server from ``SENTINEL_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and skip, saying why, when
no server answers. Each test gets a fresh schema (via ``search_path`` in the URL),
dropped afterwards, so runs are repeatable and never see each other's tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sentinel.ledger.crypto import Ed25519PrivateKey, generate_private_key, public_key_b64
from sentinel.ledger.recorder import LedgerRecorder, update_submitted_payload
from sentinel.ledger.signing import sign_payload
from sentinel.ledger.store import Ledger
from sqlalchemy import text


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """URL of a new SQLite file."""
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on a SQLite file and on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def signer() -> Ed25519PrivateKey:
    """The coordinator's key."""
    return generate_private_key()


@pytest.fixture
def node_keys() -> dict[str, Ed25519PrivateKey]:
    """Keys of three nodes with Flower-style (uint64) ids."""
    return {node: generate_private_key() for node in ("7", "18446744073709551557", "42")}


@pytest.fixture
def ledger(db_url: str, signer: Ed25519PrivateKey) -> Iterator[Ledger]:
    """An empty signing ledger on each backend."""
    with Ledger(db_url, signer) as led:
        yield led


def fill(ledger: Ledger, node_keys: dict[str, Ed25519PrivateKey], rounds: int = 2) -> None:
    """A small federation's history: registrations, rounds with signed submissions, decisions, scores, tokens."""
    rec = LedgerRecorder(ledger)
    for node, key in node_keys.items():
        rec.node_registered(node, "edge", public_key_b64(key))
    for rnd in range(1, rounds + 1):
        rec.round_started(rnd, {"lr": 0.001, "local-steps": 5})
        for i, (node, key) in enumerate(node_keys.items()):
            payload = update_submitted_payload(node, rnd, f"{i + rnd:064x}", 10 * (i + 1))
            rec.update_submitted(node, rnd, payload["content_hash"], payload["examples"], sign_payload(key, payload))
        nodes = list(node_keys)
        rec.update_accepted(nodes[0], rnd)
        rec.update_accepted(nodes[1], rnd)
        rec.update_rejected(nodes[2], rnd, "loss gate")
        rec.contribution(rnd, {nodes[0]: 0.25, nodes[1]: 0.75}, "loo")
        rec.tokens(rnd, {nodes[0]: 25, nodes[1]: 75}, budget=100)
        rec.checkpoint(rnd, f"{rnd:064x}")


@pytest.fixture
def filled(ledger: Ledger, node_keys: dict[str, Ed25519PrivateKey]) -> Ledger:
    """A signing ledger holding :func:`fill`'s history (25 entries; seq 4 is a node-signed submission)."""
    fill(ledger, node_keys)
    return ledger


def run_sql(ledger: Ledger, sql: str, **params: Any) -> None:
    """Change the database behind the ledger's back (what an attacker with DB access does)."""
    with ledger.engine.connect() as conn:
        with conn.begin():
            conn.execute(text(sql), params)


@pytest.fixture
def sql():  # type: ignore[no-untyped-def]
    """:func:`run_sql`, for tests (test modules cannot import conftest)."""
    return run_sql


@pytest.fixture
def history():  # type: ignore[no-untyped-def]
    """:func:`fill`, for tests that build their own ledgers."""
    return fill
