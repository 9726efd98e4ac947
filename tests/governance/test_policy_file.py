"""Policy files: the shipped default, pattern syntax, derivation, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sentinel.governance.exceptions import PolicyFileError
from sentinel.governance.policy_file import derive_contracts, load_default_policy, load_policy, parse_policy
from sentinel.protos.vocabulary import standard_components

COMPONENTS = standard_components(4, 2)


def _roles(contracts, component: str, op: str) -> set[str]:  # type: ignore[no-untyped-def]
    return set(contracts.get(component).grant(op).roles)


def test_default_policy_grants_what_the_federation_expects() -> None:
    cs = derive_contracts(load_default_policy(), COMPONENTS, "steward", model="m")
    assert _roles(cs, "layer.2.head.1", "adapt") == {"edge", "gpu", "central"}
    assert _roles(cs, "layer.0.head.0", "adapt") == {"gpu", "central"}  # layers 0-1 not for edge
    assert _roles(cs, "layer.1.head.1", "adapt") == {"gpu", "central"}
    assert _roles(cs, "layer.3.head.0", "prune") == {"gpu", "central"}
    assert _roles(cs, "layer.3.head.0", "grow") == {"gpu", "central"}
    assert _roles(cs, "layer.3.head.0", "distill") == {"central"}
    assert cs.get("classifier").grant("adapt").everyone
    assert cs.get("layer.0.ffn").grant("prune").is_empty()  # only heads are pruned
    assert all(c.agency.state == "active" and c.version == 1 for c in cs)
    assert load_default_policy().agency.entropy_saturation is not None


def test_derivation_is_deterministic() -> None:
    policy = load_default_policy()
    a = derive_contracts(policy, COMPONENTS, "s", model="m")
    b = derive_contracts(policy, COMPONENTS, "s", model="m")
    assert a.content_hash() == b.content_hash()


def test_selectors_globs_ranges_and_kinds() -> None:
    policy = parse_policy(
        """
version: 1
defaults:
  operations:
    adapt: {roles: [gpu]}
rules:
  - match: {components: "layer.[23].head.*"}
    grant: {adapt: {roles: [edge]}}
  - match: {layers: [0, "3-3"], kind: ffn}
    agency: {state: withdrawn, reason: "owner withdrew"}
  - match: {heads: 1}
    replace: {adapt: {nodes: ["42"]}}
    steward: head-one-steward
  - match: {kind: classifier}
    revoke: {adapt: {roles: [gpu]}}
    purposes: [evaluation]
"""
    )
    cs = derive_contracts(policy, COMPONENTS, "s", model="m")
    assert _roles(cs, "layer.2.head.0", "adapt") == {"gpu", "edge"}
    assert _roles(cs, "layer.1.head.0", "adapt") == {"gpu"}
    assert cs.get("layer.0.ffn").agency.state == "withdrawn"
    assert cs.get("layer.0.ffn").agency.reason == "owner withdrew"
    assert cs.get("layer.1.ffn").agency.state == "active"
    assert cs.get("layer.3.ffn").agency.state == "withdrawn"
    one = cs.get("layer.2.head.1")
    assert one.grant("adapt").roles == frozenset() and one.grant("adapt").nodes == {"42"}
    assert one.steward == "head-one-steward" and cs.get("layer.2.head.0").steward == "s"
    assert "adapt" not in cs.get("classifier").operations  # empty grants are dropped
    assert cs.get("classifier").purposes == ["evaluation"]


def test_json_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"version": 1, "defaults": {"operations": {"distill": {"everyone": True}}}}))
    cs = derive_contracts(load_policy(path), ["classifier"], "s")
    assert cs.get("classifier").grant("distill").everyone


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nrules:\n  - match: {layers: '0-1'}\n    revoke:\n      adapt: {roles: [edgy]}\n", r"p\.yaml:5: `rules\[0\]\.revoke\.adapt\.roles\[0\]`: Input should be 'edge', 'gpu' or 'central'"),
        ("version: 1\nrules:\n  - match: {layers: '0-1'}\n    grant:\n      delete: {roles: [edge]}\n", r"p\.yaml:5: `rules\[0\]\.grant\.delete\.\[key\]`"),
        ("version: 1\nrules:\n  - match: {}\n    grant: {adapt: {everyone: true}}\n", r"p\.yaml:3: `rules\[0\]\.match`: .*needs at least one of"),
        ("version: 1\nrules:\n  - match: {layers: 'two'}\n    grant: {adapt: {everyone: true}}\n", r"'two' is not an index"),
        ("version: 1\nrules:\n  - match: {kind: head}\n", r"rule changes nothing"),
        ("version: 1\ndefaults:\n  operation: {}\n", r"p\.yaml:3: `defaults\.operation`: Extra inputs are not permitted"),
        ("version: 2\n", r"p\.yaml:1: `version`"),
        ("version: 1\nagency:\n  entropy_saturation: {threshold: 0.8, rounds: 0}\n", r"`agency\.entropy_saturation\.rounds`"),
        ("version: 1\nagency:\n  entropy_saturation: {threshold: 0.8, rounds: 2, recover_below: 0.9}\n", r"`recover_below` \(0\.9\) must be below `threshold`"),
        ("version: 1\nrules: [\n", r"p\.yaml:\d+: not valid YAML"),
        ("- just\n- a list\n", r"must be a mapping at the top level"),
        ("", r"p\.yaml: the policy file is empty"),
    ],
)
def test_bad_policy_files_name_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(PolicyFileError, match=expected):
        load_policy(path)


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{\n  "version": 1,\n  "rules": [,]\n}')
    with pytest.raises(PolicyFileError, match=r"p\.json:3: not valid JSON"):
        load_policy(path)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")


def test_derive_refuses_bad_component_lists() -> None:
    with pytest.raises(ValueError, match="`components`"):
        derive_contracts(load_default_policy(), ["layer.0.mlp"], "s")
    with pytest.raises(ValueError, match="twice"):
        derive_contracts(load_default_policy(), ["classifier", "classifier"], "s")
