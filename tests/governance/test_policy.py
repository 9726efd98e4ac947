"""The policy engine: allowed and denied cases for every operation, role and node rule, expiry and agency."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sentinel.governance.contracts import AgencyState, ConsentContract, ContractSet, Grant
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.policy import PolicyEngine
from sentinel.governance.registry import NodeRecord, NodeRegistry
from sentinel.protos.vocabulary import standard_components

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
NODES = {"e1": "edge", "g1": "gpu", "c1": "central"}


def _set(*contracts: ConsentContract) -> ContractSet:
    return ContractSet(model="m", contracts={c.component: c for c in contracts})


def _contract(component: str = "layer.2.head.0", **kwargs) -> ConsentContract:  # type: ignore[no-untyped-def]
    return ConsentContract(component=component, steward="s", **kwargs)


@pytest.mark.parametrize(
    ("operation", "node", "allowed"),
    [
        ("adapt", "e1", True), ("adapt", "g1", True), ("adapt", "c1", True),
        ("prune", "e1", False), ("prune", "g1", True), ("prune", "c1", True),
        ("grow", "e1", False), ("grow", "g1", True), ("grow", "c1", True),
        ("distill", "e1", False), ("distill", "g1", False), ("distill", "c1", True),
    ],
)
def test_default_policy_per_operation_and_role(contracts: ContractSet, operation: str, node: str, allowed: bool) -> None:
    engine = PolicyEngine(contracts, NODES)
    decision = engine.may(node, operation, "layer.2.head.3", T0)  # type: ignore[arg-type]
    assert decision.allowed is allowed
    role = NODES[node]
    assert decision.reason == (f"granted to role {role}" if allowed else f"role {role} not granted {operation}")
    assert ("layer.2.head.3" in engine.permitted_set(node, operation, T0)) is allowed  # type: ignore[arg-type]


def test_edge_may_not_adapt_early_layers_but_may_adapt_the_classifier(contracts: ContractSet) -> None:
    engine = PolicyEngine(contracts, NODES)
    assert not engine.may("e1", "adapt", "layer.0.head.0", T0)
    assert not engine.may("e1", "adapt", "layer.1.head.3", T0)
    assert engine.may("g1", "adapt", "layer.0.head.0", T0)
    clf = engine.may("e1", "adapt", "classifier", T0)
    assert clf.allowed and clf.reason in ("granted to role edge", "granted to everyone")
    permitted = engine.permitted_set("e1", "adapt", T0)
    assert "classifier" in permitted and not any(c.startswith(("layer.0.head", "layer.1.head")) for c in permitted)


def test_node_grant_and_everyone_grant() -> None:
    cs = _set(
        _contract("layer.0.head.0", operations={"prune": Grant(nodes=frozenset({"e1"}))}),
        _contract("classifier", operations={"adapt": Grant(everyone=True)}),
    )
    engine = PolicyEngine(cs, NODES)
    assert engine.may("e1", "prune", "layer.0.head.0", T0).reason == "granted to node e1"
    assert not engine.may("g1", "prune", "layer.0.head.0", T0)
    assert engine.permitted_set("e1", "prune", T0) == {"layer.0.head.0"}
    assert engine.permitted_set("g1", "prune", T0) == frozenset()
    for node in NODES:
        assert engine.may(node, "adapt", "classifier", T0).reason == "granted to everyone"
    assert not engine.may("e1", "distill", "classifier", T0)


def test_unknown_and_removed_nodes_are_denied() -> None:
    cs = _set(_contract("classifier", operations={"adapt": Grant(everyone=True)}))
    registry = NodeRegistry([NodeRecord(node_id="g1", role="gpu"), NodeRecord(node_id="g2", role="gpu", status="removed")])
    engine = PolicyEngine(cs, registry)
    assert engine.may("g1", "adapt", "classifier", T0)
    assert engine.may("nobody", "adapt", "classifier", T0).reason == "node unknown: nobody"
    assert engine.may("g2", "adapt", "classifier", T0).reason == "node removed: g2"
    assert engine.permitted_set("g2", "adapt", T0) == frozenset()
    assert engine.permitted_set("nobody", "adapt", T0) == frozenset()
    assert set(engine.permitted_sets("adapt", T0)) == {"g1"}


def test_flower_integer_node_ids_are_accepted() -> None:
    big = 2**63 + 5
    cs = _set(_contract("classifier", operations={"adapt": Grant(nodes=frozenset({str(big)}))}))
    engine = PolicyEngine(cs, {str(big): "edge"})
    assert engine.may(big, "adapt", "classifier", T0)
    assert engine.permitted_set(big, "adapt", T0) == {"classifier"}


def test_expiry_denies_everything_from_the_expiry_time_on() -> None:
    grant = Grant(roles=frozenset({"gpu"}))
    cs = _set(
        _contract("layer.0.head.0", operations={"adapt": grant}, expires_at=T0 + timedelta(days=1)),
        _contract("layer.0.head.1", operations={"adapt": grant}),
    )
    engine = PolicyEngine(cs, NODES)
    before, at, after = T0, T0 + timedelta(days=1), T0 + timedelta(days=2)
    assert engine.may("g1", "adapt", "layer.0.head.0", before)
    assert engine.may("g1", "adapt", "layer.0.head.0", at).reason == f"expired at {(T0 + timedelta(days=1)).isoformat()}"
    assert not engine.may("g1", "adapt", "layer.0.head.0", after)
    assert engine.permitted_set("g1", "adapt", before) == {"layer.0.head.0", "layer.0.head.1"}
    assert engine.permitted_set("g1", "adapt", after) == {"layer.0.head.1"}
    assert engine.may("g1", "adapt", "layer.0.head.1", after)


@pytest.mark.parametrize(
    ("operation", "allowed"), [("adapt", False), ("grow", False), ("prune", True), ("distill", True)]
)
def test_resting_component_is_not_trained_but_may_be_pruned_or_distilled(operation: str, allowed: bool) -> None:
    everyone = Grant(everyone=True)
    agency = AgencyState(state="resting", reason="entropy saturated", since=T0, source="measurement")
    cs = _set(_contract(operations={op: everyone for op in ("adapt", "prune", "grow", "distill")}, agency=agency))
    engine = PolicyEngine(cs, NODES)
    decision = engine.may("c1", operation, "layer.2.head.0", T0)  # type: ignore[arg-type]
    assert decision.allowed is allowed
    if not allowed:
        assert decision.reason == "resting: entropy saturated"
    assert ("layer.2.head.0" in engine.permitted_set("c1", operation, T0)) is allowed  # type: ignore[arg-type]


@pytest.mark.parametrize("operation", ["adapt", "prune", "grow", "distill"])
def test_withdrawn_component_is_never_changed_even_by_explicit_grants(operation: str) -> None:
    grant = Grant(roles=frozenset({"edge", "gpu", "central"}), nodes=frozenset({"c1"}), everyone=True)
    agency = AgencyState(state="withdrawn", reason="steward withdrew consent", since=T0, source="governance")
    cs = _set(_contract(operations={op: grant for op in ("adapt", "prune", "grow", "distill")}, agency=agency))
    engine = PolicyEngine(cs, NODES)
    for node in NODES:
        decision = engine.may(node, operation, "layer.2.head.0", T0)  # type: ignore[arg-type]
        assert not decision.allowed and decision.reason == "withdrawn: steward withdrew consent"
        assert engine.permitted_set(node, operation, T0) == frozenset()  # type: ignore[arg-type]


def test_unknown_component_and_bad_arguments(contracts: ContractSet) -> None:
    engine = PolicyEngine(contracts, NODES)
    assert engine.may("g1", "adapt", "layer.9.head.0", T0).reason == "no contract for component 'layer.9.head.0'"
    with pytest.raises(InvalidRequestError, match="`operation` 'delete'"):
        engine.may("g1", "delete", "classifier", T0)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="timezone-aware"):
        engine.may("g1", "adapt", "classifier", datetime(2030, 1, 1))


def test_permitted_set_agrees_with_may_everywhere(contracts: ContractSet) -> None:
    engine = PolicyEngine(contracts, NODES)
    for node in NODES:
        for op in ("adapt", "prune", "grow", "distill"):
            expected = {c for c in contracts.components() if engine.may(node, op, c, T0).allowed}  # type: ignore[arg-type]
            assert engine.permitted_set(node, op, T0) == expected  # type: ignore[arg-type]


def test_permitted_sets_for_a_large_federation_are_fast() -> None:
    """Micro-benchmark (printed, not asserted): 12 layers x 12 heads, 200 nodes, every round."""
    from sentinel.governance.policy_file import derive_contracts, load_default_policy

    cs = derive_contracts(load_default_policy(), standard_components(12, 12), "s", model="m")
    nodes = {str(i): ("edge", "gpu", "central")[i % 3] for i in range(200)}
    engine = PolicyEngine(cs, nodes)
    engine.permitted_sets("adapt", T0)  # warm
    start = time.perf_counter()
    rounds = 20
    for _ in range(rounds):
        sets = engine.permitted_sets("adapt", T0)
    per_node_us = (time.perf_counter() - start) / (rounds * len(nodes)) * 1e6
    print(f"\npermitted_set: {per_node_us:.2f} us per node per round ({len(cs)} components, {len(nodes)} nodes)")
    assert len(sets) == 200 and len(sets["1"]) > 100
