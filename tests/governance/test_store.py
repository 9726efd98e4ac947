"""Governance persistence on SQLite and PostgreSQL: history, round trips, atomic acts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sentinel.governance.contracts import AgencyState, ContractSet
from sentinel.governance.exceptions import ReplayedRequestError
from sentinel.governance.governor import Governor
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.proposals import ContractChangeSpec, ProposalRecord, sign_proposal, sign_vote
from sentinel.governance.registry import NodeRecord
from sentinel.governance.store import GovernanceStore
from sentinel.ledger.crypto import generate_private_key, public_key_b64
from sentinel.ledger.engine import database_url
from sentinel.ledger.exceptions import ReadOnlyLedgerError
from sentinel.ledger.store import Ledger

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
BIG_ID = str(2**64 - 1)  # Flower node ids are uint64


@pytest.fixture
def store(db_url: str):  # type: ignore[no-untyped-def]
    s = GovernanceStore(db_url)
    yield s
    s.close()


def test_contract_sets_keep_their_history(store: GovernanceStore, contracts: ContractSet) -> None:
    assert store.contract_set() is None
    with store.transaction() as tx:
        tx.put_contract_set(contracts, at=T0, cause="derived")
    head = contracts.get("layer.2.head.0")
    rested = head.revised(agency=AgencyState(state="resting", reason="r", since=T0, source="measurement"))  # type: ignore[union-attr]
    v2 = contracts.with_contracts([rested])
    with store.transaction() as tx:
        tx.put_contract_set(v2, at=T0 + timedelta(hours=1), cause="agency", changed=[rested.component])
    assert store.contract_set() == v2
    assert store.contract_set(1) == contracts
    assert store.contract_set(1).content_hash() == contracts.content_hash()  # type: ignore[union-attr]
    history = store.contract_history("layer.2.head.0")
    assert [c.version for c in history] == [1, 2]
    assert [c.agency.state for c in history] == ["active", "resting"]
    assert [c.version for c in store.contract_history("classifier")] == [1]


def test_nodes_parameters_proposals_and_votes_round_trip(store: GovernanceStore) -> None:
    key = generate_private_key()
    node = NodeRecord(node_id=BIG_ID, role="edge", organisation="o", public_key=public_key_b64(key), registered_at=T0)
    params = FederationParameters().with_value("validator_quorum", 0.75)
    signed = sign_proposal(key, BIG_ID, ContractChangeSpec(kind="grant", operation="adapt", components=["classifier"], everyone=True), timestamp=T0)
    record = ProposalRecord(
        proposal_id=signed.document.proposal_id(), document=signed.document, signature=signed.signature,
        created_at=T0, deadline=T0 + timedelta(days=1),
    )
    vote = sign_vote(key, record.proposal_id, BIG_ID, "yes", timestamp=T0)
    with store.transaction() as tx:
        tx.put_node(node)
        tx.put_parameters(params, at=T0, cause="test")
        tx.add_proposal(record)
        tx.add_vote(vote, at=T0)
        tx.record_act("vote", BIG_ID, T0)
    assert store.nodes()[BIG_ID] == node
    assert store.parameters() == params and store.parameters_stored()
    assert store.proposal(record.proposal_id) == record
    assert store.proposals("open") == [record] and store.proposals("executed") == []
    assert store.votes(record.proposal_id) == [vote]
    assert store.revision() == 1
    removed = node.model_copy(update={"status": "removed", "removed_at": T0})
    with store.transaction() as tx:
        tx.put_node(removed)
    assert store.nodes()[BIG_ID].status == "removed"


def test_a_failed_transaction_stores_nothing(store: GovernanceStore, contracts: ContractSet) -> None:
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.put_contract_set(contracts, at=T0, cause="derived")
        tx.put_node(NodeRecord(node_id="1", role="gpu", registered_at=T0))
        tx.record_act("x", "coordinator", T0)
        raise RuntimeError("boom")
    assert store.contract_set() is None and len(store.nodes()) == 0 and store.revision() == 0


def test_nonces_cannot_be_used_twice(store: GovernanceStore) -> None:
    with store.transaction() as tx:
        tx.use_nonce("1", "n" * 16, at=T0)
    with pytest.raises(ReplayedRequestError, match="already used"), store.transaction() as tx:
        tx.use_nonce("1", "n" * 16, at=T0)
    with store.transaction() as tx:
        tx.use_nonce("2", "n" * 16, at=T0)  # nonces are per node
    store.forget_nonces_before(T0 + timedelta(seconds=1))
    with store.transaction() as tx:
        tx.use_nonce("1", "n" * 16, at=T0)


def test_act_refused_by_the_ledger_leaves_the_store_unchanged(db_url: str, tmp_path, contracts: ContractSet) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url, generate_private_key()).close()
    read_only = Ledger(url)  # no signer: every append is refused
    store = GovernanceStore(db_url)
    governor = Governor(store, read_only)
    with pytest.raises(ReadOnlyLedgerError):
        governor.install_contracts(contracts)
    with pytest.raises(ReadOnlyLedgerError):
        governor.bootstrap_node("1", "gpu")
    assert store.contract_set() is None and len(store.nodes()) == 0 and store.revision() == 0
    store.close()
    read_only.close()


def test_governance_flow_on_this_database(db_url: str, ledger: Ledger, contracts: ContractSet) -> None:
    keys = {n: generate_private_key() for n in ("1", "2", "3")}
    store = GovernanceStore(db_url)
    gov = Governor(store, ledger)
    gov.install_contracts(contracts)
    for n, role in zip(keys, ("edge", "gpu", "central"), strict=True):
        gov.bootstrap_node(n, role, public_key=public_key_b64(keys[n]))  # type: ignore[arg-type]
    spec = ContractChangeSpec(kind="revoke", operation="adapt", components=["layer.2.head.*"], roles=["edge"])
    proposal = gov.submit_proposal(sign_proposal(keys["2"], "2", spec))
    for n in ("2", "3"):
        gov.cast_vote(sign_vote(keys[n], proposal.proposal_id, n, "yes"))
    assert gov.proposal(proposal.proposal_id).status == "executed"
    assert not gov.may("1", "adapt", "layer.2.head.0")
    reopened = Governor(GovernanceStore(db_url), ledger)  # survives a restart
    assert reopened.contracts() == gov.contracts() and reopened.contracts().version == 2
    assert not reopened.may("1", "adapt", "layer.2.head.3")
    store.close()
    reopened.store.close()


def test_plain_paths_and_postgres_urls_are_normalised(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert database_url(tmp_path / "g.db") == f"sqlite:///{tmp_path / 'g.db'}"
    assert database_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
