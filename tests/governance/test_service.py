"""Governance through a real GovernanceService on loopback: proposals, signed votes, refusals, ledger entries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sentinel.governance import wire
from sentinel.governance.client import GovernanceClient
from sentinel.governance.exceptions import RemoteGovernanceError
from sentinel.governance.proposals import (
    ContractChangeSpec,
    RegisterNodeSpec,
    RemoveNodeSpec,
    SetAgencySpec,
    SetParameterSpec,
    sign_vote,
)
from sentinel.governance.service import GovernanceServer, TLSConfig, serve
from sentinel.ledger.crypto import Ed25519PrivateKey, canonical_json, generate_private_key, public_key_b64, verify_b64
from sentinel.ledger.store import Ledger
from sentinel.protos import governance_pb2 as pb

pytestmark = pytest.mark.slow

EDGE, GPU, CENTRAL = "101", "202", "303"  # the founding nodes the `bootstrap` fixture registers
ROLES = {EDGE: "edge", GPU: "gpu", CENTRAL: "central"}
GRANT_EDGE_EARLY = ContractChangeSpec(kind="grant", operation="adapt", components=["layer.0.head.*"], roles=["edge"])


@pytest.fixture
def server(sqlite_url, ledger, contracts, keys, clock, bootstrap) -> Iterator[GovernanceServer]:  # type: ignore[no-untyped-def]
    srv = serve(sqlite_url, ledger, host="127.0.0.1", port=0, clock=clock)
    try:
        bootstrap(srv.governor, contracts, keys)
        yield srv
    finally:
        srv.stop(grace=None)


@pytest.fixture
def clients(server: GovernanceServer, keys: dict[str, Ed25519PrivateKey]) -> Iterator[dict[str, GovernanceClient]]:
    made = {node: GovernanceClient(server.target, node, keys[node]) for node in ROLES}
    yield made
    for client in made.values():
        client.close()


def _refused(call, status: str, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RemoteGovernanceError, match=match) as info:
        call()
    assert info.value.status == status


def test_passing_proposal_changes_what_may_answers_and_the_permitted_sets(
    server: GovernanceServer, clients: dict[str, GovernanceClient], ledger: Ledger
) -> None:
    gov = server.governor
    before = clients[EDGE].list_contracts()
    assert not clients[EDGE].check_permission(EDGE, "adapt", "layer.0.head.1").allowed
    assert "layer.0.head.1" not in gov.permitted_set(EDGE, "adapt")

    proposal = clients[GPU].submit_proposal(GRANT_EDGE_EARLY, title="let edge adapt layer 0")
    assert proposal.status == "open" and proposal.kind == "grant" and proposal.tally.eligible == 3
    assert clients[GPU].cast_vote(proposal.proposal_id, "yes").status == "open"
    final = clients[CENTRAL].cast_vote(proposal.proposal_id, "yes")
    assert final.status == "executed" and (final.tally.yes, final.tally.no) == (2, 0)

    decision = clients[EDGE].check_permission(EDGE, "adapt", "layer.0.head.1")
    assert decision.allowed and decision.reason == "granted to role edge"
    assert {f"layer.0.head.{h}" for h in range(4)} <= gov.permitted_set(EDGE, "adapt")
    assert "layer.1.head.0" not in gov.permitted_set(EDGE, "adapt")  # only what was proposed
    after = clients[EDGE].list_contracts()
    assert after.version == before.version + 1
    contract, set_version = clients[EDGE].get_contract("layer.0.head.1")
    assert contract.version == 2 and set_version == after.version and "edge" in contract.grant("adapt").roles

    kinds = [e.kind.value for e in ledger.entries(start=0, limit=100)]
    assert kinds[-5:] == ["proposal", "vote", "vote", "contract_changed", "execution"]
    votes = ledger.entries(kind="vote")
    for entry, voter in zip(votes, (GPU, CENTRAL), strict=True):
        assert entry.actor == voter and entry.payload["proposal_id"] == proposal.proposal_id
        assert verify_b64(gov.nodes()[voter].public_key, entry.node_signature, canonical_json(entry.payload))  # type: ignore[arg-type]
    execution = ledger.entries(kind="execution")[-1].payload
    assert execution["status"] == "executed" and execution["set_version"] == after.version
    assert execution["content_hash"] == gov.contracts().content_hash()
    assert ledger.verify().ok


def test_failing_proposal_changes_nothing(server: GovernanceServer, clients: dict[str, GovernanceClient], ledger: Ledger) -> None:
    gov = server.governor
    before_hash, before_version = gov.contracts().content_hash(), gov.contracts().version
    before_permitted = gov.permitted_set(GPU, "adapt")
    spec = ContractChangeSpec(kind="revoke", operation="adapt", components=["layer.2.head.*"], roles=["gpu"])
    proposal = clients[GPU].submit_proposal(spec)
    clients[GPU].cast_vote(proposal.proposal_id, "yes")
    clients[EDGE].cast_vote(proposal.proposal_id, "no")
    final = clients[CENTRAL].cast_vote(proposal.proposal_id, "no")
    assert final.status == "rejected" and final.outcome == "majority not reached"
    assert gov.contracts().content_hash() == before_hash and gov.contracts().version == before_version
    assert gov.permitted_set(GPU, "adapt") == before_permitted
    assert clients[GPU].check_permission(GPU, "adapt", "layer.2.head.0").allowed
    assert ledger.entries(kind="execution")[-1].payload["status"] == "rejected"
    assert ledger.entries(kind="contract_changed")[-1].payload["cause"] == "derived from policy"
    _refused(lambda: clients[EDGE].cast_vote(proposal.proposal_id, "yes"), "FAILED_PRECONDITION", "closed")


def test_proposal_without_quorum_is_rejected_at_its_deadline(
    server: GovernanceServer, clients: dict[str, GovernanceClient], clock
) -> None:
    proposal = clients[GPU].submit_proposal(GRANT_EDGE_EARLY)
    clients[GPU].cast_vote(proposal.proposal_id, "yes")  # 1 of 3 voted: below the 0.5 quorum
    clock.advance(days=8)  # past the default 7-day voting period
    (listed,) = clients[EDGE].list_proposals()
    assert listed.status == "rejected" and listed.outcome == "quorum not reached"
    assert not server.governor.may(EDGE, "adapt", "layer.0.head.0")


def test_forged_unsigned_tampered_and_unknown_votes_are_refused(
    server: GovernanceServer, clients: dict[str, GovernanceClient], ledger: Ledger
) -> None:
    proposal_id = clients[GPU].submit_proposal(GRANT_EDGE_EARLY).proposal_id
    stub = clients[EDGE].stub
    forged = wire.vote_request(sign_vote(generate_private_key(), proposal_id, EDGE, "yes"))  # not EDGE's key
    _refused(lambda: clients[EDGE].send_vote(forged), "UNAUTHENTICATED", "does not verify against node '101'")
    unsigned = clients[EDGE].vote_request(proposal_id, "yes")
    unsigned.auth.signature = ""
    _refused(lambda: clients[EDGE].send_vote(unsigned), "UNAUTHENTICATED", "not signed")
    tampered = clients[EDGE].vote_request(proposal_id, "no")
    tampered.choice = "yes"
    _refused(lambda: clients[EDGE].send_vote(tampered), "UNAUTHENTICATED", "forged or altered")
    stranger_key = generate_private_key()
    stranger = wire.vote_request(sign_vote(stranger_key, proposal_id, "999", "yes"))
    _refused(lambda: clients[EDGE].send_vote(stranger), "UNAUTHENTICATED", "node '999' is not registered")
    with pytest.raises(grpc.RpcError) as info:  # the raw gRPC status, as any client sees it
        stub.CastVote(forged)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server.governor.votes(proposal_id) == [] and ledger.entries(kind="vote") == []


def test_duplicate_replayed_and_stale_votes_are_refused(
    server: GovernanceServer, clients: dict[str, GovernanceClient], keys: dict[str, Ed25519PrivateKey], ledger: Ledger, clock
) -> None:
    proposal_id = clients[GPU].submit_proposal(GRANT_EDGE_EARLY).proposal_id
    request = clients[EDGE].vote_request(proposal_id, "no")
    assert clients[EDGE].send_vote(request).status == "open"
    _refused(lambda: clients[EDGE].send_vote(request), "ALREADY_EXISTS", "replayed request refused")
    _refused(lambda: clients[EDGE].cast_vote(proposal_id, "yes"), "ALREADY_EXISTS", "already voted on proposal")
    stale = sign_vote(keys[CENTRAL], proposal_id, CENTRAL, "yes", timestamp=clock.now - timedelta(minutes=10))
    _refused(lambda: clients[CENTRAL].cast_signed_vote(stale), "UNAUTHENTICATED", "outside|away from the server clock")
    assert [v.body.voter for v in server.governor.votes(proposal_id)] == [EDGE]
    assert len(ledger.entries(kind="vote")) == 1


def test_bad_requests_get_clear_statuses(server: GovernanceServer, clients: dict[str, GovernanceClient]) -> None:
    c = clients[GPU]
    nowhere = ContractChangeSpec(kind="grant", operation="adapt", components=["layer.7.*"], roles=["edge"])
    _refused(lambda: c.submit_proposal(nowhere), "INVALID_ARGUMENT", "matches no component")
    _refused(lambda: c.submit_proposal(SetParameterSpec(name="colour", value=1)), "INVALID_ARGUMENT", "not a federation parameter")
    _refused(lambda: c.submit_proposal(SetParameterSpec(name="validator_quorum", value=2)), "INVALID_ARGUMENT", "validator_quorum")
    _refused(lambda: c.submit_proposal(RemoveNodeSpec(node_id="404")), "INVALID_ARGUMENT", "not an active registered node")
    empty = pb.SubmitProposalRequest(auth=pb.SignedEnvelope(node_id=GPU, nonce="x" * 16, timestamp="2030-01-01T00:00:00+00:00", signature="AA=="))
    _refused(lambda: c._call(c.stub.SubmitProposal, empty), "INVALID_ARGUMENT", "`spec` is empty")
    _refused(lambda: c.proposal("nope"), "NOT_FOUND", "no proposal with id 'nope'")
    _refused(lambda: c.get_contract("layer.9.ffn"), "NOT_FOUND", "layer.9.ffn")
    _refused(lambda: c.check_permission(GPU, "delete", "classifier"), "INVALID_ARGUMENT", "`operation` 'delete'")  # type: ignore[arg-type]
    _refused(lambda: c.list_proposals("maybe"), "INVALID_ARGUMENT", "`status`")
    with pytest.raises(ValueError, match="no `node_id` and `key`"):
        GovernanceClient(server.target).cast_vote("x", "yes")


def test_node_registration_removal_and_parameters_by_proposal(
    server: GovernanceServer, clients: dict[str, GovernanceClient], ledger: Ledger
) -> None:
    gov = server.governor
    newcomer_key = generate_private_key()
    reg = RegisterNodeSpec(node_id="404", role="gpu", organisation="new-org", public_key=public_key_b64(newcomer_key))
    p = clients[GPU].submit_proposal(reg)
    clients[GPU].cast_vote(p.proposal_id, "yes")
    assert clients[CENTRAL].cast_vote(p.proposal_id, "yes").status == "executed"
    assert {n.node_id for n in clients[EDGE].list_nodes()} == {EDGE, GPU, CENTRAL, "404"}
    assert ledger.entries(kind="node_registered")[-1].payload["node_id"] == "404"
    newcomer = GovernanceClient(server.target, "404", newcomer_key)

    p = clients[CENTRAL].submit_proposal(SetParameterSpec(name="validator_quorum", value=0.75))
    for voter in (clients[CENTRAL], newcomer, clients[GPU]):  # the newcomer's signed vote is accepted
        status = voter.cast_vote(p.proposal_id, "yes").status
    assert status == "executed"
    assert gov.parameters().validator_quorum == 0.75 and gov.parameters().version == 2

    p = clients[GPU].submit_proposal(RemoveNodeSpec(node_id=EDGE, reason="left the consortium"))
    for voter in (clients[GPU], clients[CENTRAL], newcomer):
        status = voter.cast_vote(p.proposal_id, "yes").status
    assert status == "executed"
    assert EDGE not in {n.node_id for n in clients[GPU].list_nodes()}
    assert EDGE in {n.node_id for n in clients[GPU].list_nodes(include_removed=True)}
    assert gov.may(EDGE, "adapt", "classifier").reason == f"node removed: {EDGE}"
    p = clients[GPU].submit_proposal(GRANT_EDGE_EARLY)
    _refused(lambda: clients[EDGE].cast_vote(p.proposal_id, "yes"), "PERMISSION_DENIED", "removed")
    assert ledger.entries(kind="node_removed")[-1].payload["node_id"] == EDGE
    newcomer.close()


def test_withdrawn_component_is_restored_only_by_a_governance_act(
    server: GovernanceServer, clients: dict[str, GovernanceClient]
) -> None:
    gov = server.governor

    def decide(spec) -> None:  # type: ignore[no-untyped-def]
        p = clients[GPU].submit_proposal(spec)
        clients[GPU].cast_vote(p.proposal_id, "yes")
        assert clients[CENTRAL].cast_vote(p.proposal_id, "yes").status == "executed"

    decide(SetAgencySpec(components=["classifier"], state="withdrawn", reason="data owner withdrew"))
    for node in ROLES:
        for op in ("adapt", "prune", "grow", "distill"):
            assert not gov.may(node, op, "classifier").allowed  # type: ignore[arg-type]
    assert gov.may(EDGE, "adapt", "classifier").reason == "withdrawn: data owner withdrew"
    decide(SetAgencySpec(components=["classifier"], state="active", reason="consent restored"))
    assert gov.may(EDGE, "adapt", "classifier").allowed
    assert gov.contracts().get("classifier").agency.source == "governance"  # type: ignore[union-attr]


def _self_signed(tmp_path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    import ipaddress
    from datetime import datetime, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sentinel-governance-test")])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_tls_service_serves_tls_clients_only(tmp_path, ledger, contracts, keys, bootstrap) -> None:  # type: ignore[no-untyped-def]
    cert, key = _self_signed(tmp_path)
    with serve(tmp_path / "gov.db", ledger, port=0, tls=TLSConfig(cert, key)) as srv:
        bootstrap(srv.governor, contracts, keys)
        assert srv.tls
        with GovernanceClient(srv.target, GPU, keys[GPU], root_cert=cert) as client:
            assert client.list_contracts().version == 1
            assert client.submit_proposal(GRANT_EDGE_EARLY).status == "open"
        with GovernanceClient(srv.target, timeout=2) as plaintext:
            _refused(plaintext.list_nodes, "UNAVAILABLE", ".")
