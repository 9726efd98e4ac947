"""Agency from measurements: saturated heads rest themselves, withdrawn ones are untouchable, acts are recorded."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sentinel.governance.agency import AgencyChange, apply_agency_changes, update_agency_from_entropy
from sentinel.governance.contracts import AgencyState, ContractSet
from sentinel.governance.exceptions import UnknownComponentError
from sentinel.governance.governor import Governor
from sentinel.governance.policy_file import EntropySaturationRule
from sentinel.ledger.store import Ledger

RULE = EntropySaturationRule(threshold=0.95, rounds=3, recover_below=0.8)
T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
HEAD = "layer.2.head.1"


def _with_state(contracts: ContractSet, component: str, state: str, source: str = "governance") -> ContractSet:
    contract = contracts.get(component)
    assert contract is not None
    agency = AgencyState(state=state, reason="set in test", since=T0, source=source)  # type: ignore[arg-type]
    return contracts.with_contracts([contract.revised(agency=agency)])


def test_head_saturated_for_n_rounds_rests(contracts: ContractSet) -> None:
    changes = update_agency_from_entropy(contracts, {HEAD: [0.5, 0.96, 0.97, 0.99]}, RULE, at=T0)
    assert [(c.component, c.from_state, c.to_state) for c in changes] == [(HEAD, "active", "resting")]
    assert "0.95" in changes[0].reason and "3 consecutive rounds" in changes[0].reason
    after = apply_agency_changes(contracts, changes)
    assert after.get(HEAD).agency == AgencyState(state="resting", reason=changes[0].reason, since=T0, source="measurement")
    assert after.version == contracts.version + 1 and after.get(HEAD).version == 2


@pytest.mark.parametrize("history", [[0.99, 0.99], [0.99, 0.94, 0.99, 0.99], []])
def test_not_enough_saturated_rounds_changes_nothing(contracts: ContractSet, history: list[float]) -> None:
    assert update_agency_from_entropy(contracts, {HEAD: history}, RULE, at=T0) == []


def test_withdrawn_head_is_never_changed_by_measurements(contracts: ContractSet) -> None:
    withdrawn = _with_state(contracts, HEAD, "withdrawn")
    assert update_agency_from_entropy(withdrawn, {HEAD: [0.99] * 5}, RULE, at=T0) == []
    assert update_agency_from_entropy(withdrawn, {HEAD: [0.1]}, RULE, at=T0) == []
    forced = AgencyChange(component=HEAD, from_state="withdrawn", to_state="active", reason="x", at=T0)
    with pytest.raises(ValueError, match="withdrawn; only a governance act"):
        apply_agency_changes(withdrawn, [forced])


def test_measured_rest_recovers_but_governed_rest_does_not(contracts: ContractSet) -> None:
    measured = _with_state(contracts, HEAD, "resting", source="measurement")
    changes = update_agency_from_entropy(measured, {HEAD: [0.99, 0.7]}, RULE, at=T0)
    assert [(c.from_state, c.to_state) for c in changes] == [("resting", "active")]
    assert update_agency_from_entropy(measured, {HEAD: [0.85]}, RULE, at=T0) == []  # hysteresis band
    governed = _with_state(contracts, HEAD, "resting", source="governance")
    assert update_agency_from_entropy(governed, {HEAD: [0.1]}, RULE, at=T0) == []


def test_bad_histories_are_refused(contracts: ContractSet) -> None:
    with pytest.raises(UnknownComponentError, match="layer.9.head.0"):
        update_agency_from_entropy(contracts, {"layer.9.head.0": [0.5]}, RULE, at=T0)
    with pytest.raises(ValueError, match=r"entropy_history\['layer.2.head.1'\]\[1\]"):
        update_agency_from_entropy(contracts, {HEAD: [0.5, float("nan")]}, RULE, at=T0)


def test_governor_applies_measured_agency_as_a_recorded_act(governor: Governor, ledger: Ledger) -> None:
    version = governor.contracts().version
    assert governor.may("202", "adapt", HEAD)
    changes = governor.update_agency_from_entropy({HEAD: [0.99, 0.99, 0.99], "layer.2.head.0": [0.2] * 3}, RULE)
    assert [c.component for c in changes] == [HEAD]
    assert governor.contracts().version == version + 1
    decision = governor.may("202", "adapt", HEAD)
    assert not decision.allowed and decision.reason.startswith("resting: attention entropy")
    assert HEAD not in governor.permitted_set("202", "adapt")
    assert governor.may("202", "prune", HEAD)  # resting heads may still be pruned
    entry = ledger.entries(kind="contract_changed")[-1]
    assert entry.payload["changed_components"] == [HEAD]
    assert entry.payload["agency_changes"][0]["to_state"] == "resting"
    assert governor.store.contract_history(HEAD)[-1].agency.state == "resting"
    assert governor.update_agency_from_entropy({HEAD: [0.99] * 3}, RULE) == []  # already resting: no new act
