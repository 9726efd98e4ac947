"""Consent contracts and component ids: validation, JSON round trip, content hash."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError
from sentinel.governance.contracts import AgencyState, ConsentContract, ContractSet, Grant
from sentinel.protos.vocabulary import parse_component, standard_components


@pytest.mark.parametrize(
    ("component", "kind", "layer", "head"),
    [
        ("layer.0.head.0", "head", 0, 0),
        ("layer.11.head.7", "head", 11, 7),
        ("layer.3.ffn", "ffn", 3, None),
        ("embeddings", "embeddings", None, None),
        ("classifier", "classifier", None, None),
        ("lm_head", "lm_head", None, None),
    ],
)
def test_component_ids_parse(component: str, kind: str, layer: int | None, head: int | None) -> None:
    ref = parse_component(component)
    assert (ref.kind, ref.layer, ref.head) == (kind, layer, head)


@pytest.mark.parametrize("bad", ["layer.01.head.1", "layer.1.head", "layer.-1.ffn", "head.1", "Classifier", "layer.1.attn", ""])
def test_malformed_component_ids_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not a component id"):
        parse_component(bad)
    with pytest.raises(ValidationError, match="not a component id"):
        ConsentContract(component=bad, steward="s")


def test_standard_components_lists_every_head() -> None:
    ids = standard_components(2, 3)
    assert ids[0] == "embeddings" and ids[-1] == "classifier"
    assert sum(1 for c in ids if ".head." in c) == 6
    assert "layer.1.ffn" in ids


def test_contract_set_round_trips_through_json(contracts: ContractSet) -> None:
    restored = ContractSet.from_json(contracts.to_json())
    assert restored == contracts
    assert restored.content_hash() == contracts.content_hash()
    assert restored.get("classifier") == contracts.get("classifier")
    assert restored.get("layer.99.ffn") is None


def test_content_hash_changes_with_any_contract(contracts: ContractSet) -> None:
    head = contracts.get("layer.2.head.1")
    assert head is not None
    rested = head.revised(agency=AgencyState(state="resting", reason="r", since=datetime(2030, 1, 1, tzinfo=timezone.utc)))
    changed = contracts.with_contracts([rested])
    assert rested.version == head.version + 1
    assert changed.version == contracts.version + 1
    assert changed.content_hash() != contracts.content_hash()


def test_content_hash_does_not_depend_on_set_order() -> None:
    a = Grant(roles=frozenset({"edge", "gpu"}), nodes=frozenset({"9", "1"}))
    b = Grant(roles=frozenset({"gpu", "edge"}), nodes=frozenset({"1", "9"}))
    c1 = ContractSet(model="m", contracts={"classifier": ConsentContract(component="classifier", steward="s", operations={"adapt": a})})
    c2 = ContractSet(model="m", contracts={"classifier": ConsentContract(component="classifier", steward="s", operations={"adapt": b})})
    assert c1.content_hash() == c2.content_hash()
    assert c1.model_dump(mode="json")["contracts"]["classifier"]["operations"]["adapt"]["roles"] == ["edge", "gpu"]


def test_naive_expiry_is_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        ConsentContract(component="classifier", steward="s", expires_at=datetime(2030, 1, 1))


def test_unknown_operation_or_role_is_refused() -> None:
    with pytest.raises(ValidationError):
        ConsentContract(component="classifier", steward="s", operations={"delete": Grant()})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        Grant(roles=frozenset({"admin"}))  # type: ignore[arg-type]


def test_contract_key_must_match_component(contracts: ContractSet) -> None:
    clf = contracts.get("classifier")
    with pytest.raises(ValidationError, match="holds the contract of"):
        ContractSet(model="m", contracts={"embeddings": clf})  # type: ignore[dict-item]


def test_governance_imports_neither_flower_nor_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, governance.service, governance.client, governance.cli, governance.governor, governance.agency;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'flwr', 'transformers', 'peft'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
