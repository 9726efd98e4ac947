"""Fixtures for governance tests: a small model's contracts, node keys, a real ledger, a governor, a gRPC server.

PostgreSQL tests take the server from ``SENTINEL_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and skip, saying why, when
none answers; each test gets its own schema, dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from sentinel.governance.contracts import ContractSet
from sentinel.governance.governor import Governor
from sentinel.governance.policy_file import derive_contracts, load_default_policy
from sentinel.governance.store import GovernanceStore
from sentinel.ledger.crypto import Ed25519PrivateKey, generate_private_key, public_key_b64
from sentinel.ledger.store import Ledger
from sentinel.protos.vocabulary import standard_components

NUM_LAYERS, NUM_HEADS = 3, 4
ROLES = {"101": "edge", "202": "gpu", "303": "central"}
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """URL of a new SQLite file."""
    return f"sqlite:///{tmp_path / 'governance.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on a SQLite file and on PostgreSQL."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


@pytest.fixture
def contracts() -> ContractSet:
    """The default policy's contracts for a 3-layer, 4-head classifier."""
    return derive_contracts(
        load_default_policy(), standard_components(NUM_LAYERS, NUM_HEADS), "test-steward", model="tiny-bert"
    )


@pytest.fixture
def keys() -> dict[str, Ed25519PrivateKey]:
    """One Ed25519 key per founding node."""
    return {node: generate_private_key() for node in ROLES}


@pytest.fixture
def ledger(tmp_path) -> Iterator[Ledger]:  # type: ignore[no-untyped-def]
    """A real ledger on a SQLite file, signed by a fresh coordinator key."""
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", generate_private_key()) as led:
        yield led


@dataclass
class Clock:
    """A settable clock for the governor (deadlines, agency times)."""

    now: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        """Move time forward."""
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    """A clock starting at the real now (so client-signed timestamps stay in the window)."""
    return Clock()


def _bootstrap(governor: Governor, contracts: ContractSet, keys: dict[str, Ed25519PrivateKey]) -> None:
    """Install the contracts and register the founding nodes (edge 101, gpu 202, central 303), as the coordinator does."""
    governor.install_contracts(contracts)
    for node, role in ROLES.items():
        governor.bootstrap_node(node, role, organisation=f"org-{node}", public_key=public_key_b64(keys[node]))  # type: ignore[arg-type]


@pytest.fixture
def bootstrap():  # type: ignore[no-untyped-def]
    """The bootstrap function: ``bootstrap(governor, contracts, keys)``."""
    return _bootstrap


@pytest.fixture
def governor(sqlite_url: str, ledger: Ledger, contracts: ContractSet, keys: dict[str, Ed25519PrivateKey], clock: Clock) -> Iterator[Governor]:
    """A bootstrapped governor on a SQLite file, recording on the real ledger."""
    store = GovernanceStore(sqlite_url)
    gov = Governor(store, ledger, clock=clock)
    _bootstrap(gov, contracts, keys)
    yield gov
    store.close()
