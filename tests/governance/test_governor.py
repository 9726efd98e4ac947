"""The governor's own acts: bootstrap and restart, deadlines, proposals that pass but cannot execute."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sentinel.governance.contracts import ContractSet
from sentinel.governance.exceptions import (
    InvalidRequestError,
    NodeAlreadyRegisteredError,
    PermissionDeniedError,
    ProposalClosedError,
    UnknownSignerError,
)
from sentinel.governance.governor import Governor
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.proposals import ContractChangeSpec, RegisterNodeSpec, sign_proposal, sign_vote
from sentinel.governance.store import GovernanceStore
from sentinel.ledger.crypto import Ed25519PrivateKey, generate_private_key, public_key_b64
from sentinel.ledger.store import Ledger

GRANT = ContractChangeSpec(kind="grant", operation="distill", components=["classifier"], roles=["gpu"])


def test_restart_keeps_installed_contracts_and_nodes(governor: Governor, ledger: Ledger, contracts: ContractSet) -> None:
    restarted = Governor(GovernanceStore(governor.store.url), ledger)
    entries = ledger.count()
    assert restarted.ensure_contracts(contracts) == governor.contracts()
    assert restarted.ensure_node("202", "gpu").role == "gpu"
    assert ledger.count() == entries  # nothing re-recorded
    with pytest.raises(InvalidRequestError, match="holds contracts for model 'tiny-bert', not 'other'"):
        restarted.ensure_contracts(contracts.model_copy(update={"model": "other"}))
    with pytest.raises(PermissionDeniedError, match="already installed"):
        restarted.install_contracts(contracts)
    with pytest.raises(NodeAlreadyRegisteredError):
        restarted.bootstrap_node("202", "gpu")
    fresh = restarted.ensure_node(2**64 - 1, "edge")  # a Flower node joining: registered on first sight
    assert restarted.nodes()[str(2**64 - 1)] == fresh
    restarted.store.close()


def test_parameters_are_installed_once(governor: Governor, ledger: Ledger) -> None:
    assert governor.parameters() == FederationParameters()
    governor.install_parameters(FederationParameters(token_budget=50))
    assert governor.parameters().token_budget == 50
    assert ledger.entries(kind="execution")[-1].payload["act"] == "install_parameters"
    with pytest.raises(PermissionDeniedError, match="through a proposal"):
        governor.install_parameters(FederationParameters())


def test_deadline_settles_by_the_votes_cast(governor: Governor, keys: dict[str, Ed25519PrivateKey], clock) -> None:  # type: ignore[no-untyped-def]
    proposal = governor.submit_proposal(sign_proposal(keys["202"], "202", GRANT, deadline=clock.now + timedelta(hours=1)))
    governor.cast_vote(sign_vote(keys["202"], proposal.proposal_id, "202", "yes"))
    governor.cast_vote(sign_vote(keys["101"], proposal.proposal_id, "101", "abstain"))
    assert governor.proposal(proposal.proposal_id).status == "open"  # 303 could still tip it
    assert governor.close_expired() == []
    closed = governor.close_expired(clock.now + timedelta(hours=1))
    assert [(p.proposal_id, p.status) for p in closed] == [(proposal.proposal_id, "executed")]
    assert governor.may("202", "distill", "classifier")
    late = sign_vote(keys["303"], proposal.proposal_id, "303", "no")
    with pytest.raises(ProposalClosedError, match="closed"):
        governor.cast_vote(late)


def test_passed_proposal_that_cannot_execute_fails_and_changes_nothing(
    governor: Governor, keys: dict[str, Ed25519PrivateKey], ledger: Ledger
) -> None:
    spec = RegisterNodeSpec(node_id="404", role="edge", public_key=public_key_b64(generate_private_key()))
    first = governor.submit_proposal(sign_proposal(keys["202"], "202", spec))
    second = governor.submit_proposal(sign_proposal(keys["303"], "303", spec))  # same change, proposed twice
    for node in ("202", "303"):
        governor.cast_vote(sign_vote(keys[node], first.proposal_id, node, "yes"))
    registry = governor.nodes()  # now with 404, a fourth voter
    for node in ("202", "303", "101"):
        governor.cast_vote(sign_vote(keys[node], second.proposal_id, node, "yes"))
    record = governor.proposal(second.proposal_id)
    assert record.status == "failed" and "already registered" in record.outcome
    assert dict(governor.nodes()) == dict(registry)
    assert ledger.entries(kind="execution")[-1].payload["status"] == "failed"


def test_direct_api_refuses_unregistered_proposers(governor: Governor) -> None:
    with pytest.raises(UnknownSignerError, match="not registered"):
        governor.submit_proposal(sign_proposal(generate_private_key(), "777", GRANT))
