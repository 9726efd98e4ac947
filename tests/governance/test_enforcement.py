"""Coordinator-side consent check and the ledger record of a violation."""

from __future__ import annotations

import pytest
from sentinel.governance.contracts import ContractSet
from sentinel.governance.enforcement import check_update_consent, record_consent_violation
from sentinel.governance.policy import PolicyEngine
from sentinel.ledger.store import Ledger


def test_update_inside_the_permitted_set_passes(contracts: ContractSet) -> None:
    permitted = PolicyEngine(contracts, {"7": "edge"}).permitted_set("7", "adapt")
    check = check_update_consent({"layer.2.head.0", "classifier"}, permitted)
    assert check.ok and check.offending == [] and bool(check)


def test_update_touching_forbidden_components_names_them_sorted(contracts: ContractSet) -> None:
    permitted = PolicyEngine(contracts, {"7": "edge"}).permitted_set("7", "adapt")
    check = check_update_consent({"layer.1.head.3", "classifier", "layer.0.head.2"}, permitted)
    assert not check.ok
    assert check.offending == ["layer.0.head.2", "layer.1.head.3"]


def test_empty_update_passes() -> None:
    assert check_update_consent(set(), frozenset()).ok


def test_violation_is_recorded_on_the_ledger(ledger: Ledger) -> None:
    check = check_update_consent({"layer.0.head.1"}, frozenset({"classifier"}))
    entry = record_consent_violation(ledger, 2**63 + 1, check, server_round=3, contract_set_version=4)
    stored = ledger.entries(kind="consent_violation")
    assert len(stored) == 1 and stored[0].hash == entry.hash  # type: ignore[attr-defined]
    assert stored[0].node == str(2**63 + 1)
    assert stored[0].payload["offending_components"] == ["layer.0.head.1"]
    assert stored[0].payload["contract_set_version"] == 4
    assert ledger.verify().ok
    with pytest.raises(ValueError, match="passed"):
        record_consent_violation(ledger, "1", check_update_consent(set(), frozenset()), server_round=1, contract_set_version=1)
