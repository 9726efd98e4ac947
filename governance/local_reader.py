"""Reading a governance database directly, without a GovernanceService.

For inspecting a run's ``governance.db`` (``sentinel governance contracts --db
runs/X/governance.db``). Offers the read methods of :class:`GovernanceClient`,
so the CLI treats both alike; it never writes, and refuses a SQLite file that
does not exist rather than create an empty database.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sentinel.governance.contracts import ContractSet, Operation
from sentinel.governance.exceptions import ContractsNotInstalledError, StoreError
from sentinel.governance.patterns import select
from sentinel.governance.policy import Decision, PolicyEngine
from sentinel.governance.registry import NodeRecord
from sentinel.governance.store import GovernanceStore
from sentinel.ledger.engine import database_url
from sqlalchemy import make_url


class LocalGovernanceReader:
    """Read-only view of a governance database with the client's read methods."""

    def __init__(self, db: str | Path) -> None:
        url = database_url(db)
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            if not Path(parsed.database).expanduser().exists():
                raise StoreError(f"no governance database at {parsed.database}")
        self.store = GovernanceStore(url)

    def close(self) -> None:
        """Release the database."""
        self.store.close()

    def __enter__(self) -> LocalGovernanceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _contracts(self) -> ContractSet:
        contracts = self.store.contract_set()
        if contracts is None:
            raise ContractsNotInstalledError(f"{self.store.url} holds no consent contracts yet")
        return contracts

    def list_contracts(self, pattern: str = "") -> ContractSet:
        """The contract set (only components matching the glob ``pattern`` when given)."""
        contracts = self._contracts()
        names = select(pattern, contracts.components()) if pattern else contracts.components()
        return ContractSet(model=contracts.model, version=contracts.version, contracts={n: contracts.contracts[n] for n in names})

    def check_permission(self, node_id: str, operation: Operation, component: str, at_time: datetime | None = None) -> Decision:
        """May ``node_id`` perform ``operation`` on ``component``?"""
        return PolicyEngine(self._contracts(), self.store.nodes()).may(node_id, operation, component, at_time)

    def list_nodes(self, include_removed: bool = False) -> list[NodeRecord]:
        """Registered nodes (active only unless ``include_removed``)."""
        registry = self.store.nodes()
        return [registry[n] for n in sorted(registry)] if include_removed else registry.active()
