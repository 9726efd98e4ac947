"""The GovernanceService under abuse, on a real server on loopback: clear statuses, bounded time, others still served.

Requests are built by hand (signed like a client would, but past the client's
own checks), as an attacker or a buggy client would send them.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from sentinel.governance import wire
from sentinel.governance.client import GovernanceClient
from sentinel.governance.exceptions import InvalidRequestError, RemoteGovernanceError
from sentinel.governance.limits import MAX_NODES, MAX_TITLE
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.proposals import ContractChangeSpec, SetParameterSpec
from sentinel.governance.service import GovernanceServer, serve
from sentinel.governance.signing import format_timestamp, new_nonce, sign_document, utcnow
from sentinel.ledger.crypto import Ed25519PrivateKey
from sentinel.ledger.store import Ledger
from sentinel.protos import governance_pb2 as pb
from sentinel.protos import governance_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

GPU, CENTRAL = "202", "303"
GRANT = ContractChangeSpec(kind="grant", operation="adapt", components=["layer.0.head.*"], roles=["edge"])


@pytest.fixture
def server(sqlite_url, ledger, contracts, keys, clock, bootstrap) -> Iterator[GovernanceServer]:  # type: ignore[no-untyped-def]
    srv = serve(sqlite_url, ledger, host="127.0.0.1", port=0, clock=clock)
    try:
        bootstrap(srv.governor, contracts, keys)
        yield srv
    finally:
        srv.stop(grace=None)


@pytest.fixture
def stub(server: GovernanceServer) -> Iterator[pb_grpc.GovernanceServiceStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield pb_grpc.GovernanceServiceStub(channel)


def _submit_request(
    key: Ed25519PrivateKey, proposer: str, spec_kind: str, spec_fields: dict, *, title: str = "", deadline: str = "", nonce: str | None = None
) -> pb.SubmitProposalRequest:
    """A SubmitProposal request signed by ``key`` exactly as a client signs one, with no client-side checks."""
    nonce, timestamp = nonce or new_nonce(), format_timestamp(utcnow())
    document = {"proposer": proposer, "nonce": nonce, "timestamp": timestamp, "title": title, "deadline": deadline,
                "spec": {"kind": spec_kind, **spec_fields}}
    message = {"grant": pb.ContractChange, "revoke": pb.ContractChange, "set_parameter": pb.SetParameter}[spec_kind]
    return pb.SubmitProposalRequest(
        title=title, deadline=deadline, spec=pb.ProposalSpec(**{spec_kind: message(**spec_fields)}),
        auth=wire.envelope_to_pb(proposer, nonce, timestamp, sign_document(key, document)),
    )


def _grant_fields(nodes: list[str] | None = None, components: list[str] | None = None) -> dict:
    return {"operation": "adapt", "components": components or ["layer.0.head.*"], "roles": [] if nodes else ["edge"],
            "nodes": nodes or [], "everyone": False}


def _code(call) -> tuple[grpc.StatusCode, float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), time.monotonic() - started


def test_a_pathological_pattern_is_refused_at_once_and_the_server_keeps_serving(
    server: GovernanceServer, stub: pb_grpc.GovernanceServiceStub
) -> None:
    for pattern, expected in (("[" * 1_000_000, grpc.StatusCode.RESOURCE_EXHAUSTED), ("[" * 16_000, grpc.StatusCode.INVALID_ARGUMENT),
                              ("layer.[01].*", grpc.StatusCode.INVALID_ARGUMENT)):
        code, took = _code(lambda: stub.ListContracts(pb.ListContractsRequest(pattern=pattern), timeout=20))
        assert code == expected and took < 20
    assert len(stub.ListContracts(pb.ListContractsRequest(pattern="*" * 128), timeout=10).contracts) > 0
    with GovernanceClient(server.target, timeout=10) as other:
        assert {n.node_id for n in other.list_nodes()} == {"101", GPU, CENTRAL}
        assert "layer.0.head.1" in other.list_contracts("layer.0.*").components()


def test_oversized_proposals_are_refused_and_listing_keeps_working(
    server: GovernanceServer, stub: pb_grpc.GovernanceServiceStub, keys: dict[str, Ed25519PrivateKey], ledger: Ledger
) -> None:
    before = ledger.count()
    key = keys[GPU]
    cases = [
        (_submit_request(key, GPU, "grant", _grant_fields(), title="t" * 3_500_000), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (_submit_request(key, GPU, "grant", _grant_fields([f"n{i}" for i in range(200_000)])), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (_submit_request(key, GPU, "grant", _grant_fields(), title="t" * (MAX_TITLE + 1)), grpc.StatusCode.INVALID_ARGUMENT),
        (_submit_request(key, GPU, "grant", _grant_fields([f"n{i}" for i in range(MAX_NODES + 1)])), grpc.StatusCode.INVALID_ARGUMENT),
        (_submit_request(key, GPU, "grant", _grant_fields(["x" * 129])), grpc.StatusCode.INVALID_ARGUMENT),
        (_submit_request(key, GPU, "grant", _grant_fields(components=[f"layer.{i}.ffn" for i in range(65)])), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, expected in cases:
        code, took = _code(lambda: stub.SubmitProposal(request, timeout=30))  # noqa: B023 - called at once
        assert code == expected and took < 30
    assert ledger.count() == before and server.governor.proposals() == []
    ok = stub.SubmitProposal(_submit_request(key, GPU, "grant", _grant_fields(), title="t" * MAX_TITLE), timeout=10)
    assert ok.proposal.status == "open"
    with GovernanceClient(server.target, timeout=10) as other:
        assert [p.proposal_id for p in other.list_proposals()] == [ok.proposal.proposal_id]


def test_every_list_is_paginated(server: GovernanceServer, stub: pb_grpc.GovernanceServiceStub, keys: dict[str, Ed25519PrivateKey]) -> None:
    with GovernanceClient(server.target, GPU, keys[GPU], timeout=10) as gpu:
        submitted = [gpu.submit_proposal(GRANT, title=f"p{i}").proposal_id for i in range(12)]
        ids, token, pages = [], "", 0
        while True:
            reply = stub.ListProposals(pb.ListProposalsRequest(page_size=5, page_token=token), timeout=10)
            ids += [p.proposal_id for p in reply.proposals]
            pages, token = pages + 1, reply.next_page_token
            if not token:
                break
        assert pages == 3 and sorted(ids) == sorted(submitted) and len(set(ids)) == 12
        assert [p.proposal_id for p in gpu.list_proposals(page_size=5)] == ids == [p.proposal_id for p in gpu.list_proposals()]
        assert len(stub.ListProposals(pb.ListProposalsRequest(page_size=100_000), timeout=10).proposals) == 12  # capped, not refused

        nodes = [n.node_id for n in gpu.list_nodes(page_size=2)]
        assert nodes == ["101", GPU, CENTRAL] and stub.ListNodes(pb.ListNodesRequest(page_size=2), timeout=10).next_page_token

        full = gpu.list_contracts()
        first = stub.ListContracts(pb.ListContractsRequest(page_size=5), timeout=10)
        assert len(first.contracts) == 5 and first.next_page_token
        assert gpu.list_contracts(page_size=5) == full and gpu.list_contracts("layer.1.*", page_size=2) == gpu.list_contracts("layer.1.*")
        for rpc, request in ((stub.ListProposals, pb.ListProposalsRequest), (stub.ListNodes, pb.ListNodesRequest),
                             (stub.ListContracts, pb.ListContractsRequest)):
            assert _code(lambda: rpc(request(page_token="bm90IGEgdG9rZW4="), timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT  # noqa: B023


def test_parameters_are_bounded_and_an_absurd_voting_period_is_refused(
    server: GovernanceServer, stub: pb_grpc.GovernanceServiceStub, keys: dict[str, Ed25519PrivateKey]
) -> None:
    for name, field in FederationParameters.model_fields.items():
        bounds = {type(m).__name__ for m in field.metadata}
        assert bounds & {"Ge", "Gt"} and bounds & {"Le", "Lt"}, f"{name} is unbounded"
    for name in FederationParameters.settable():
        for value in (1e300, -1e300, float("inf"), float("nan")):
            with pytest.raises(InvalidRequestError, match=name):
                FederationParameters().with_value(name, value)
    with GovernanceClient(server.target, GPU, keys[GPU], timeout=10) as gpu:
        with pytest.raises(RemoteGovernanceError, match="proposal_ttl_s") as info:
            gpu.submit_proposal(SetParameterSpec(name="proposal_ttl_s", value=1e300))
        assert info.value.status == "INVALID_ARGUMENT"
        for value in (float("inf"), float("nan")):
            request = _submit_request(keys[GPU], GPU, "set_parameter", {"name": "token_budget", "value": 1.0})
            request.spec.set_parameter.value = value  # past the signature check: refused before it is even verified
            assert _code(lambda: stub.SubmitProposal(request, timeout=10))[0] == grpc.StatusCode.INVALID_ARGUMENT  # noqa: B023
        assert gpu.submit_proposal(GRANT).status == "open"  # later proposals are unaffected


@pytest.mark.parametrize(
    ("deadline", "why"),
    [("9999-12-31T23:59:59-23:59", "outside the years"), ("2001-01-01T00:00:00+00:00", "not in the future"), ("far", "ISO 8601")],
)
def test_a_bad_deadline_is_refused_before_anything_is_written(  # type: ignore[no-untyped-def]
    server: GovernanceServer, stub: pb_grpc.GovernanceServiceStub, keys, ledger: Ledger, deadline: str, why: str
) -> None:
    before, nonce = ledger.count(), new_nonce()
    request = _submit_request(keys[GPU], GPU, "grant", _grant_fields(), deadline=deadline, nonce=nonce)
    with pytest.raises(grpc.RpcError) as info:
        stub.SubmitProposal(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and why in info.value.details()
    assert ledger.count() == before and server.governor.proposals() == []
    # Nothing was written, not even the nonce: the same nonce is still good.
    ok = stub.SubmitProposal(_submit_request(keys[GPU], GPU, "grant", _grant_fields(), nonce=nonce), timeout=10)
    assert ok.proposal.status == "open" and ledger.count() == before + 1


def test_a_deadline_beyond_the_longest_voting_period_is_refused(server: GovernanceServer, keys) -> None:  # type: ignore[no-untyped-def]
    with GovernanceClient(server.target, GPU, keys[GPU], timeout=10) as gpu:
        with pytest.raises(RemoteGovernanceError, match="366 days") as info:
            gpu.submit_proposal(GRANT, deadline=utcnow() + timedelta(days=400))
        assert info.value.status == "INVALID_ARGUMENT"
        assert gpu.submit_proposal(GRANT, deadline=utcnow() + timedelta(days=300)).status == "open"


def test_a_second_server_on_the_same_port_is_refused(server: GovernanceServer, ledger: Ledger, tmp_path: Path) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        serve(tmp_path / "other.db", ledger, port=server.port)
    from sentinel.governance.cli import app as governance_app
    from typer.testing import CliRunner

    result = CliRunner().invoke(governance_app, [
        "serve", "--db", str(tmp_path / "other.db"), "--ledger-db", f"sqlite:///{tmp_path / 'l2.db'}",
        "--ledger-key", str(tmp_path / "k2.pem"), "--port", str(server.port),
    ])
    assert result.exit_code == 1 and "cannot listen" in result.output and "Traceback" not in result.output, result.output
    with GovernanceClient(server.target, timeout=10) as other:
        assert len(other.list_nodes()) == 3


def _start_cli_server(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    code = "from sentinel.governance.cli import app; app()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--db", str(tmp_path / "gov.db"), "--ledger-db", f"sqlite:///{tmp_path / 'ledger.db'}",
         "--ledger-key", str(tmp_path / "coordinator.key"), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"(127\.0\.0\.1:\d+)", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
    return proc, match.group(1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_promptly_on_a_signal_under_load(tmp_path: Path, sig: signal.Signals) -> None:
    proc, target = _start_cli_server(tmp_path)
    stop = threading.Event()
    try:
        def hammer() -> None:
            with GovernanceClient(target, timeout=5) as client:
                while not stop.is_set():
                    try:
                        client.list_nodes()
                        client._call(client.stub.ListContracts, pb.ListContractsRequest(pattern="[" * 16_000))
                    except Exception:  # noqa: BLE001 - refusals and a server going away are expected
                        if proc.poll() is not None:
                            return

        workers = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
        for w in workers:
            w.start()
        time.sleep(1.0)
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(60) == 0, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_errors_are_one_line(tmp_path: Path, governor, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    from sentinel.governance.cli import app as governance_app
    from typer.testing import CliRunner

    other_key = tmp_path / "other.pem"
    from sentinel.ledger.crypto import generate_private_key, save_private_key

    save_private_key(generate_private_key(), other_key)
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"  # the `ledger` fixture's file, signed by another key
    cases = [
        (["contracts", "--db", sqlite_url, "--pattern", "layer.[0].*"], "character sets"),
        (["check", "101", "adapt", "classifier", "--db", sqlite_url, "--at", "yesterday"], "isoformat"),
        (["register", "9", "--role", "edge", "--db", sqlite_url, "--ledger-db", ledger_url, "--ledger-key", str(other_key)], "signed by key"),
        (["nodes", "--target", "127.0.0.1:1"], "UNAVAILABLE"),
    ]
    for args, expected in cases:
        result = CliRunner().invoke(governance_app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)
        assert expected in result.output, (args, result.output)


def test_huge_strings_in_any_field_get_a_short_clear_refusal(server: GovernanceServer, stub: pb_grpc.GovernanceServiceStub) -> None:
    huge = "x" * 200_000  # under the request limit: the handler itself must refuse it, and must not echo it back whole
    calls = [
        lambda: stub.CheckPermission(pb.CheckPermissionRequest(node_id="101", operation=huge, component="classifier"), timeout=10),
        lambda: stub.CheckPermission(pb.CheckPermissionRequest(node_id=huge, operation="adapt", component="classifier"), timeout=10),
        lambda: stub.ListProposals(pb.ListProposalsRequest(status=huge), timeout=10),
        lambda: stub.GetProposal(pb.GetProposalRequest(proposal_id=huge), timeout=10),
        lambda: stub.ListNodes(pb.ListNodesRequest(page_token=huge), timeout=10),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
        assert len(info.value.details()) <= 1000
    assert _code(lambda: stub.GetContract(pb.GetContractRequest(component=huge), timeout=10))[0] == grpc.StatusCode.NOT_FOUND
