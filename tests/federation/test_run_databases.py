"""A run keeps its ledger and governance in the database it is given (the coordinator server's), not beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sentinel.ledger.store import Ledger
from sentinel.protos.vocabulary import EntryKind
from sentinel.server.coordinator import GOVERNANCE_FILE, LEDGER_FILE, Coordinator
from sentinel.server.deploy_run import database_urls
from sentinel.server.deploy_server import GOVERNANCE_URL_ENV, LEDGER_URL_ENV, ServerSettings

pytestmark = pytest.mark.slow


def test_a_run_records_on_the_postgresql_ledger_and_governance_it_is_given(tmp_path: Path, pg_url: str, tiny_config, local_grid) -> None:
    config = tiny_config(rounds=1, validation=False)
    out = tmp_path / "run"
    coordinator = Coordinator.build(config, out, ledger_url=pg_url, governance_url=pg_url)
    result = coordinator.run(local_grid(config.nodes))
    assert result.history[-1]["accepted"] == config.nodes
    assert not (out / LEDGER_FILE).exists() and not (out / GOVERNANCE_FILE).exists()
    ledger = Ledger(pg_url)  # what the LedgerService on that database serves
    kinds = [e.kind for e in ledger.iter_entries()]
    assert kinds.count(EntryKind.UPDATE_SUBMITTED) == config.nodes and EntryKind.CHECKPOINT in kinds
    assert coordinator.ledger.verify().ok and coordinator.ledger.count() == ledger.count()


def test_the_run_config_names_the_databases_else_the_servers_else_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(LEDGER_URL_ENV, raising=False)
    monkeypatch.delenv(GOVERNANCE_URL_ENV, raising=False)
    assert database_urls({"ledger-db": "", "governance-db": ""}) == (None, None)
    settings = ServerSettings(data_dir=tmp_path, node_auth=False, ledger_db="postgresql+psycopg://h/l", governance_db="postgresql+psycopg://h/g")
    for key, value in settings.database_env().items():
        monkeypatch.setenv(key, value)
    assert database_urls({"ledger-db": "", "governance-db": ""}) == ("postgresql+psycopg://h/l", "postgresql+psycopg://h/g")
    assert database_urls({"ledger-db": "sqlite:///x.db", "governance-db": ""})[0] == "sqlite:///x.db"  # the run's own wins
    assert ServerSettings(data_dir=tmp_path, node_auth=False).database_env() == {}
