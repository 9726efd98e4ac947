"""Executing a proposal: the pure function from the current state to the state after it.

The governor writes what :func:`execute_spec` returns in one transaction; a spec
that cannot be executed (a pattern matching nothing, a node already registered,
an invalid parameter value) raises :class:`InvalidRequestError` and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sentinel.governance.contracts import AgencyState, ConsentContract, ContractSet
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.patterns import select
from sentinel.governance.proposals import (
    ContractChangeSpec,
    ProposalSpec,
    RegisterNodeSpec,
    RemoveNodeSpec,
    SetAgencySpec,
)
from sentinel.governance.registry import NodeRecord, NodeRegistry


@dataclass
class Effects:
    """What executing a proposal changes (None: that part is unchanged)."""

    contracts: ContractSet | None = None
    node: NodeRecord | None = None
    parameters: FederationParameters | None = None
    changed_components: list[str] = field(default_factory=list)
    summary: str = ""


def resolve_components(patterns: Iterable[str], contracts: ContractSet) -> list[str]:
    """Component ids named by ``patterns`` (exact ids or globs, :mod:`governance.patterns`); each must match one."""
    all_ids = contracts.components()
    found: set[str] = set()
    for pattern in patterns:
        matched = select(pattern, all_ids)
        if not matched:
            raise InvalidRequestError(f"`components` pattern {pattern!r} matches no component of model {contracts.model!r}")
        found.update(matched)
    return sorted(found)


def execute_spec(
    spec: ProposalSpec,
    contracts: ContractSet,
    registry: NodeRegistry,
    parameters: FederationParameters,
    *,
    at: datetime,
) -> Effects:
    """The state after ``spec`` takes effect at ``at``; :class:`InvalidRequestError` if it cannot."""
    if isinstance(spec, ContractChangeSpec):
        return _change_grants(spec, contracts)
    if isinstance(spec, SetAgencySpec):
        agency = AgencyState(state=spec.state, reason=spec.reason, since=at, source="governance")
        revised = [contracts.get(c).revised(agency=agency) for c in resolve_components(spec.components, contracts)]  # type: ignore[union-attr]
        return Effects(
            contracts=contracts.with_contracts(revised),
            changed_components=[c.component for c in revised],
            summary=f"agency of {len(revised)} component(s) set to {spec.state}",
        )
    if isinstance(spec, RegisterNodeSpec):
        existing = registry.get(spec.node_id)
        if existing is not None and existing.active:
            raise InvalidRequestError(f"node {spec.node_id!r} is already registered")
        node = NodeRecord(
            node_id=spec.node_id, role=spec.role, organisation=spec.organisation,
            public_key=spec.public_key or None, status="active", registered_at=at,
        )
        return Effects(node=node, summary=f"node {spec.node_id} registered as {spec.role}")
    if isinstance(spec, RemoveNodeSpec):
        existing = registry.get(spec.node_id)
        if existing is None or not existing.active:
            raise InvalidRequestError(f"node {spec.node_id!r} is not an active registered node")
        node = existing.model_copy(update={"status": "removed", "removed_at": at})
        return Effects(node=node, summary=f"node {spec.node_id} removed")
    new_parameters = parameters.with_value(spec.name, spec.value)
    return Effects(parameters=new_parameters, summary=f"parameter {spec.name} set to {spec.value}")


def _change_grants(spec: ContractChangeSpec, contracts: ContractSet) -> Effects:
    delta = spec.as_grant()
    revised: list[ConsentContract] = []
    for component in resolve_components(spec.components, contracts):
        contract = contracts.get(component)
        assert contract is not None  # resolve_components only returns ids of the set
        old = contract.grant(spec.operation)
        new = old.union(delta) if spec.kind == "grant" else old.minus(delta)
        if new == old:
            continue
        operations = {op: g for op, g in contract.operations.items() if op != spec.operation}
        if not new.is_empty():
            operations[spec.operation] = new
        revised.append(contract.revised(operations=operations))
    if not revised:
        return Effects(summary=f"{spec.kind} of {spec.operation} changed no contract (already in that state)")
    return Effects(
        contracts=contracts.with_contracts(revised),
        changed_components=[c.component for c in revised],
        summary=f"{spec.kind} {spec.operation} on {len(revised)} component(s)",
    )
