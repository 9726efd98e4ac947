"""A Python client of the GovernanceService that signs write requests with the node's key."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sentinel.governance import wire
from sentinel.governance.contracts import ConsentContract, ContractSet, Operation
from sentinel.governance.exceptions import RemoteGovernanceError
from sentinel.governance.policy import Decision
from sentinel.governance.proposals import ProposalRecord, ProposalSpec, SignedVote, sign_proposal, sign_vote
from sentinel.governance.registry import NodeRecord
from sentinel.governance.signing import format_timestamp
from sentinel.governance.voting import Choice
from sentinel.ledger.crypto import Ed25519PrivateKey, load_private_key
from sentinel.protos import governance_pb2 as pb
from sentinel.protos import governance_pb2_grpc as pb_grpc

_T = TypeVar("_T")
_RESTARTS = 3


class GovernanceClient:
    """Talks to a GovernanceService at ``target`` (``host:port``).

    ``node_id`` and ``key`` (an Ed25519 private key or the path of its PEM file)
    are needed only for writes (proposals and votes). ``root_cert`` (PEM bytes or
    a path) switches the channel to TLS, trusting that certificate authority.
    """

    def __init__(
        self,
        target: str,
        node_id: str | None = None,
        key: Ed25519PrivateKey | str | Path | None = None,
        root_cert: bytes | str | Path | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.target = target
        self.node_id = node_id
        self.key = load_private_key(key) if isinstance(key, (str, Path)) else key
        self.timeout = timeout
        if root_cert is not None:
            pem = root_cert if isinstance(root_cert, bytes) else Path(root_cert).read_bytes()
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=pem))
        else:
            self._channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GovernanceServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> GovernanceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, rpc: Callable[..., _T], request: Any) -> _T:
        try:
            return rpc(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            details = e.details() if hasattr(e, "details") else str(e)  # type: ignore[attr-defined]
            raise RemoteGovernanceError(code.name, details or "") from e

    def _signer(self) -> tuple[str, Ed25519PrivateKey]:
        if self.node_id is None or self.key is None:
            raise ValueError("this client has no `node_id` and `key`; writes must be signed by a registered node")
        return self.node_id, self.key

    # ------------------------------------------------------------------ reads
    def list_contracts(self, pattern: str = "", *, page_size: int = 0) -> ContractSet:
        """The current contract set (only components matching the glob ``pattern`` when given), all pages of it.

        If the set changes while its pages are read (its version moves), reading
        starts over, a few times at most.
        """
        for _ in range(_RESTARTS):
            request = pb.ListContractsRequest(pattern=pattern, page_size=page_size)
            first = self._call(self.stub.ListContracts, request)
            more: list[pb.ConsentContract] = []
            reply = first
            while reply.next_page_token and reply.set_version == first.set_version:
                request.page_token = reply.next_page_token
                reply = self._call(self.stub.ListContracts, request)
                more.extend(reply.contracts)
            if reply.set_version == first.set_version:
                return wire.contract_set_from_pb(first, more)
        raise RemoteGovernanceError("ABORTED", f"the contract set kept changing while its pages were read ({_RESTARTS} tries)")

    def get_contract(self, component: str) -> tuple[ConsentContract, int]:
        """One component's contract and the set version it belongs to."""
        reply = self._call(self.stub.GetContract, pb.GetContractRequest(component=component))
        return wire.contract_from_pb(reply.contract), reply.set_version

    def check_permission(
        self, node_id: str, operation: Operation, component: str, at_time: datetime | None = None
    ) -> Decision:
        """The server's answer to "may ``node_id`` perform ``operation`` on ``component``?"."""
        request = pb.CheckPermissionRequest(
            node_id=str(node_id), operation=operation, component=component,
            at_time=format_timestamp(at_time) if at_time is not None else "",
        )
        reply = self._call(self.stub.CheckPermission, request)
        return Decision(reply.allowed, reply.reason)

    def list_nodes(self, include_removed: bool = False, *, page_size: int = 0) -> list[NodeRecord]:
        """Registered nodes (active only unless ``include_removed``), all pages."""
        request = pb.ListNodesRequest(include_removed=include_removed, page_size=page_size)
        return [wire.node_from_pb(n) for n in self._pages(self.stub.ListNodes, request, "nodes")]

    def list_proposals(self, status: str = "", *, page_size: int = 0) -> list[pb.Proposal]:
        """Proposals (optionally one status), oldest first, as protobuf messages (their ``tally`` included), all pages."""
        request = pb.ListProposalsRequest(status=status, page_size=page_size)
        return list(self._pages(self.stub.ListProposals, request, "proposals"))

    def _pages(self, rpc: Callable[..., Any], request: Any, field: str) -> Iterator[Any]:
        """The items of every page of a list RPC, following ``next_page_token``."""
        while True:
            reply = self._call(rpc, request)
            yield from getattr(reply, field)
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    def get_proposal(self, proposal_id: str) -> pb.GetProposalResponse:
        """A proposal with its signed votes."""
        return self._call(self.stub.GetProposal, pb.GetProposalRequest(proposal_id=proposal_id))

    def proposal(self, proposal_id: str) -> ProposalRecord:
        """A proposal as a validated record."""
        return wire.proposal_from_pb(self.get_proposal(proposal_id).proposal)

    # ------------------------------------------------------------------ writes
    def submit_proposal(self, spec: ProposalSpec, *, title: str = "", deadline: datetime | None = None) -> pb.Proposal:
        """Sign and submit a proposal; returns it as stored (its id included)."""
        node_id, key = self._signer()
        signed = sign_proposal(key, node_id, spec, title=title, deadline=deadline)
        return self._call(self.stub.SubmitProposal, wire.submit_request(signed)).proposal

    def vote_request(self, proposal_id: str, choice: Choice) -> pb.CastVoteRequest:
        """A signed CastVote request (fresh nonce and timestamp), not yet sent."""
        node_id, key = self._signer()
        return wire.vote_request(sign_vote(key, proposal_id, node_id, choice))

    def send_vote(self, request: pb.CastVoteRequest) -> pb.Proposal:
        """Send a CastVote request as it is; returns the proposal after the vote."""
        return self._call(self.stub.CastVote, request).proposal

    def cast_vote(self, proposal_id: str, choice: Choice) -> pb.Proposal:
        """Sign and cast a vote; returns the proposal after it (executed or rejected if the vote decided it)."""
        return self.send_vote(self.vote_request(proposal_id, choice))

    def cast_signed_vote(self, vote: SignedVote) -> pb.Proposal:
        """Send a vote signed elsewhere (e.g. by a node's own tooling)."""
        return self.send_vote(wire.vote_request(vote))
