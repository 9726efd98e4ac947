"""Agency from measurements: components signalling their own state.

A head whose normalised attention entropy stays saturated (attention close to
uniform: it no longer picks anything out) for several rounds marks itself
``resting``, so nobody trains it until it recovers. The functions here are pure:
:func:`update_agency_from_entropy` says which states change and why,
:func:`apply_agency_changes` produces the new contract set; the
:class:`~governance.governor.Governor` applies them as a recorded governance act.

A ``withdrawn`` component is never changed by a measurement, and a component put
to rest by the policy or by a governance act is never woken by one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict
from sentinel.governance.contracts import AgencyState, AgencyStateName, ContractSet
from sentinel.governance.exceptions import UnknownComponentError
from sentinel.governance.policy import resolve_time
from sentinel.governance.policy_file import EntropySaturationRule


class AgencyChange(BaseModel):
    """One component's agency state changing, with the measured reason."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    component: str
    from_state: AgencyStateName
    to_state: AgencyStateName
    reason: str
    at: AwareDatetime


def _check_history(component: str, values: Sequence[float]) -> None:
    for i, value in enumerate(values):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or not -1e-6 <= value <= 1 + 1e-6:
            raise ValueError(
                f"`entropy_history[{component!r}][{i}]` is {value!r}; normalised entropy must be a finite number in [0, 1]"
            )


def update_agency_from_entropy(
    contracts: ContractSet,
    entropy_history: Mapping[str, Sequence[float]],
    rule: EntropySaturationRule,
    *,
    at: datetime | None = None,
) -> list[AgencyChange]:
    """The agency changes the entropy-saturation ``rule`` calls for (nothing is applied).

    ``entropy_history`` maps components to their normalised attention entropy per
    round, oldest first. An active component whose last ``rule.rounds`` values are
    all >= ``rule.threshold`` rests; a component this rule put to rest becomes
    active when its latest value is below ``rule.recover_below`` (if set).
    """
    when = resolve_time(at)
    changes: list[AgencyChange] = []
    for component in sorted(entropy_history):
        values = entropy_history[component]
        contract = contracts.get(component)
        if contract is None:
            raise UnknownComponentError(f"`entropy_history` names {component!r}, which has no consent contract")
        _check_history(component, values)
        agency = contract.agency
        if agency.state == "active" and len(values) >= rule.rounds:
            recent = values[-rule.rounds:]
            if all(v >= rule.threshold for v in recent):
                reason = (
                    f"attention entropy >= {rule.threshold} for {rule.rounds} consecutive rounds "
                    f"(latest {recent[-1]:.4f})"
                )
                changes.append(AgencyChange(component=component, from_state="active", to_state="resting", reason=reason, at=when))
        elif (
            agency.state == "resting"
            and agency.source == "measurement"
            and rule.recover_below is not None
            and values
            and values[-1] < rule.recover_below
        ):
            reason = f"attention entropy {values[-1]:.4f} fell below {rule.recover_below}"
            changes.append(AgencyChange(component=component, from_state="resting", to_state="active", reason=reason, at=when))
    return changes


def apply_agency_changes(contracts: ContractSet, changes: Iterable[AgencyChange]) -> ContractSet:
    """The contract set after ``changes`` (set version + 1, each changed contract's version + 1).

    Returns ``contracts`` itself when there is nothing to change. A change whose
    ``from_state`` no longer matches, or that would touch a withdrawn component,
    raises ``ValueError``: measurements never override a withdrawal.
    """
    revised = []
    for change in changes:
        contract = contracts.get(change.component)
        if contract is None:
            raise UnknownComponentError(f"agency change names {change.component!r}, which has no consent contract")
        if contract.agency.state == "withdrawn":
            raise ValueError(f"{change.component} is withdrawn; only a governance act may change it")
        if contract.agency.state != change.from_state:
            raise ValueError(
                f"{change.component} is {contract.agency.state}, not {change.from_state} as the change assumes"
            )
        agency = AgencyState(state=change.to_state, reason=change.reason, since=change.at, source="measurement")
        revised.append(contract.revised(agency=agency))
    return contracts.with_contracts(revised) if revised else contracts
