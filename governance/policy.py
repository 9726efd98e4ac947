"""The policy engine: may node N perform operation O on component C, now?

Decisions follow, in order: the component must have a contract; the node must be
registered and active; a ``withdrawn`` component denies everything; an expired
contract denies everything; a ``resting`` component denies ``adapt`` and
``grow``; finally the operation's grant must name the node, its role, or everyone.

The engine is built once per contract-set version and registry snapshot and
precomputes, per operation, the components each role, each named node and
everyone may touch, so :meth:`PolicyEngine.permitted_set` is a few dictionary
lookups per node and round.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sentinel.governance.contracts import OPERATIONS, ConsentContract, ContractSet, Operation
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.registry import NodeRegistry
from sentinel.governance.signing import utcnow
from sentinel.protos.vocabulary import ROLES, Role

_RESTING_DENIES: frozenset[Operation] = frozenset({"adapt", "grow"})
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of the policy engine: ``allowed`` and a human-readable ``reason``."""

    allowed: bool
    reason: str

    def __bool__(self) -> bool:
        return self.allowed


def check_operation(operation: str) -> Operation:
    """``operation`` if it is one of the four operations, else :class:`InvalidRequestError`."""
    if operation not in OPERATIONS:
        raise InvalidRequestError(f"`operation` {operation!r} is not one of {', '.join(OPERATIONS)}")
    return operation  # type: ignore[return-value]


def resolve_time(at_time: datetime | None) -> datetime:
    """``at_time`` (timezone-aware) or now in UTC; naive datetimes are refused as ambiguous."""
    if at_time is None:
        return utcnow()
    if at_time.tzinfo is None:
        raise InvalidRequestError("`at_time` must be timezone-aware (e.g. datetime.now(timezone.utc))")
    return at_time


class PolicyEngine:
    """Answers consent questions for one contract set and one node registry snapshot."""

    def __init__(self, contracts: ContractSet, nodes: NodeRegistry | Mapping[str, Role]) -> None:
        self.contracts = contracts
        self.nodes = nodes if isinstance(nodes, NodeRegistry) else NodeRegistry.from_roles(nodes)
        blocked = {op: self._blocked(contracts, op) for op in OPERATIONS}
        self._by_role: dict[tuple[Operation, Role], frozenset[str]] = {}
        self._by_node: dict[tuple[Operation, str], frozenset[str]] = {}
        for op in OPERATIONS:
            everyone = {c.component for c in contracts if c.grant(op).everyone}
            for role in ROLES:
                granted = {c.component for c in contracts if role in c.grant(op).roles}
                self._by_role[op, role] = frozenset((granted | everyone) - blocked[op])
            named: dict[str, set[str]] = {}
            for contract in contracts:
                for node in contract.grant(op).nodes:
                    named.setdefault(node, set()).add(contract.component)
            for node, comps in named.items():
                self._by_node[op, node] = frozenset(comps - blocked[op])
        expiring = sorted((c.expires_at, c.component) for c in contracts if c.expires_at is not None)
        self._expiry_times = [t for t, _ in expiring]
        self._expiry_components = [c for _, c in expiring]
        self._cache: dict[tuple[str, Operation, int], frozenset[str]] = {}

    @property
    def version(self) -> int:
        """The contract-set version this engine answers for."""
        return self.contracts.version

    @staticmethod
    def _blocked(contracts: ContractSet, op: Operation) -> set[str]:
        denied = {"withdrawn"} | ({"resting"} if op in _RESTING_DENIES else set())
        return {c.component for c in contracts if c.agency.state in denied}

    def permitted_set(self, node: str | int, operation: Operation, at_time: datetime | None = None) -> frozenset[str]:
        """Every component ``node`` may perform ``operation`` on at ``at_time`` (default: now)."""
        op = check_operation(operation)
        node_id = str(node)
        role = self.nodes.role(node_id)
        if role is None:
            return _EMPTY
        n_expired = bisect.bisect_right(self._expiry_times, resolve_time(at_time)) if self._expiry_times else 0
        key = (node_id, op, n_expired)
        cached = self._cache.get(key)
        if cached is None:
            allowed = self._by_role[op, role] | self._by_node.get((op, node_id), _EMPTY)
            if n_expired:
                allowed = allowed - frozenset(self._expiry_components[:n_expired])
            cached = self._cache[key] = frozenset(allowed)
        return cached

    def permitted_sets(self, operation: Operation, at_time: datetime | None = None) -> dict[str, frozenset[str]]:
        """:meth:`permitted_set` of every active node, keyed by node id."""
        when = resolve_time(at_time)
        return {r.node_id: self.permitted_set(r.node_id, operation, when) for r in self.nodes.active()}

    def may(self, node: str | int, operation: Operation, component: str, at_time: datetime | None = None) -> Decision:
        """Whether ``node`` may perform ``operation`` on ``component`` at ``at_time`` (default: now), and why."""
        op = check_operation(operation)
        node_id = str(node)
        contract = self.contracts.get(component)
        if contract is None:
            return Decision(False, f"no contract for component {component!r}")
        record = self.nodes.get(node_id)
        if record is None:
            return Decision(False, f"node unknown: {node_id}")
        if not record.active:
            return Decision(False, f"node removed: {node_id}")
        return _decide(contract, node_id, record.role, op, resolve_time(at_time))


def _decide(contract: ConsentContract, node_id: str, role: Role, op: Operation, when: datetime) -> Decision:
    agency = contract.agency
    if agency.state == "withdrawn":
        return Decision(False, f"withdrawn: {agency.reason or 'no reason given'}")
    if contract.expires_at is not None and when >= contract.expires_at:
        return Decision(False, f"expired at {contract.expires_at.isoformat()}")
    if agency.state == "resting" and op in _RESTING_DENIES:
        return Decision(False, f"resting: {agency.reason or 'no reason given'}")
    grant = contract.grant(op)
    if node_id in grant.nodes:
        return Decision(True, f"granted to node {node_id}")
    if role in grant.roles:
        return Decision(True, f"granted to role {role}")
    if grant.everyone:
        return Decision(True, "granted to everyone")
    return Decision(False, f"role {role} not granted {op}")
