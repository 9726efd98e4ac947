"""The gRPC GovernanceService: contracts, nodes, proposals and votes over the network.

Read RPCs are open; SubmitProposal and CastVote must carry a valid node
signature (see ``protos/governance.proto`` for the signed documents and the
status codes). The servicer only translates messages: every decision is the
:class:`~governance.governor.Governor`'s, and governance errors become gRPC
statuses through their ``status`` attribute.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sentinel.governance import wire
from sentinel.governance.exceptions import GovernanceError, InvalidRequestError, UnknownComponentError
from sentinel.governance.governor import Governor
from sentinel.governance.ledger_sink import LedgerSink
from sentinel.governance.policy import check_operation
from sentinel.governance.signing import DEFAULT_WINDOW, parse_timestamp, utcnow
from sentinel.governance.store import GovernanceStore
from sentinel.protos import governance_pb2 as pb
from sentinel.protos import governance_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
_R = TypeVar("_R")


def _rpc(method: Callable[..., _R]) -> Callable[..., _R]:
    """Turn governance errors raised by an RPC handler into the gRPC status they name."""

    @functools.wraps(method)
    def handler(self: GovernanceServicer, request: Any, context: grpc.ServicerContext) -> _R:
        try:
            return method(self, request, context)
        except GovernanceError as e:
            context.abort(getattr(grpc.StatusCode, e.status, grpc.StatusCode.UNKNOWN), str(e))
        except Exception as e:  # noqa: BLE001 - the client gets a status, the log the traceback
            log.exception("GovernanceService.%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return handler


class GovernanceServicer(pb_grpc.GovernanceServiceServicer):
    """Serves one governor's state and acts."""

    def __init__(self, governor: Governor) -> None:
        self.governor = governor

    @_rpc
    def ListContracts(self, request: pb.ListContractsRequest, context: grpc.ServicerContext) -> pb.ListContractsResponse:
        return wire.contract_set_to_pb(self.governor.contracts(), request.pattern)

    @_rpc
    def GetContract(self, request: pb.GetContractRequest, context: grpc.ServicerContext) -> pb.GetContractResponse:
        contracts = self.governor.contracts()
        contract = contracts.get(request.component)
        if contract is None:
            raise UnknownComponentError(f"no contract for component {request.component!r}")
        return pb.GetContractResponse(contract=wire.contract_to_pb(contract), set_version=contracts.version)

    @_rpc
    def CheckPermission(self, request: pb.CheckPermissionRequest, context: grpc.ServicerContext) -> pb.CheckPermissionResponse:
        if not request.node_id:
            raise InvalidRequestError("`node_id` is required")
        at_time = parse_timestamp(request.at_time, "at_time") if request.at_time else None
        engine = self.governor.policy_engine()
        when = at_time or self.governor.clock()
        decision = engine.may(request.node_id, check_operation(request.operation), request.component, when)
        return pb.CheckPermissionResponse(allowed=decision.allowed, reason=decision.reason, set_version=engine.version)

    @_rpc
    def ListNodes(self, request: pb.ListNodesRequest, context: grpc.ServicerContext) -> pb.ListNodesResponse:
        registry = self.governor.nodes()
        records = [registry[n] for n in sorted(registry)] if request.include_removed else registry.active()
        return pb.ListNodesResponse(nodes=[wire.node_to_pb(r) for r in records])

    @_rpc
    def SubmitProposal(self, request: pb.SubmitProposalRequest, context: grpc.ServicerContext) -> pb.SubmitProposalResponse:
        record = self.governor.submit_proposal(wire.proposal_from_request(request))
        return pb.SubmitProposalResponse(proposal=wire.proposal_to_pb(record, self.governor.tally(record.proposal_id)))

    @_rpc
    def CastVote(self, request: pb.CastVoteRequest, context: grpc.ServicerContext) -> pb.CastVoteResponse:
        record = self.governor.cast_vote(wire.vote_from_request(request))
        return pb.CastVoteResponse(proposal=wire.proposal_to_pb(record, self.governor.tally(record.proposal_id)))

    @_rpc
    def ListProposals(self, request: pb.ListProposalsRequest, context: grpc.ServicerContext) -> pb.ListProposalsResponse:
        if request.status and request.status not in ("open", "executed", "rejected", "failed"):
            raise InvalidRequestError(f"`status` {request.status!r} is not one of open, executed, rejected, failed")
        self.governor.close_expired()
        records = self.governor.proposals(request.status or None)
        return pb.ListProposalsResponse(
            proposals=[wire.proposal_to_pb(r, self.governor.tally(r.proposal_id)) for r in records]
        )

    @_rpc
    def GetProposal(self, request: pb.GetProposalRequest, context: grpc.ServicerContext) -> pb.GetProposalResponse:
        self.governor.close_expired()
        record = self.governor.proposal(request.proposal_id)
        votes = self.governor.votes(record.proposal_id)
        return pb.GetProposalResponse(
            proposal=wire.proposal_to_pb(record, self.governor.tally(record.proposal_id)),
            votes=[wire.vote_to_pb(v) for v in votes],
        )


@dataclass(frozen=True)
class TLSConfig:
    """Server TLS: certificate chain and private key (PEM files); ``client_ca`` also requires client certificates."""

    cert_chain: Path
    private_key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials from the PEM files."""
        try:
            pair = (Path(self.private_key).read_bytes(), Path(self.cert_chain).read_bytes())
            client_ca = Path(self.client_ca).read_bytes() if self.client_ca is not None else None
        except OSError as e:
            raise ValueError(f"cannot read TLS file: {e}") from e
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


class GovernanceServer:
    """A running GovernanceService; stop it with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, server: grpc.Server, governor: Governor, host: str, port: int, tls: bool) -> None:
        self._server = server
        self.governor = governor
        self.host = host
        self.port = port
        self.tls = tls

    @property
    def target(self) -> str:
        """``host:port`` to give a client."""
        return f"{self.host}:{self.port}"

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds) and close the store."""
        self._server.stop(grace).wait()
        self.governor.store.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout`` passes); True if it stopped."""
        return self._server.wait_for_termination(timeout)

    def __enter__(self) -> GovernanceServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    db_url: str | Path,
    ledger: LedgerSink,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TLSConfig | None = None,
    *,
    max_workers: int = 8,
    request_window: timedelta = DEFAULT_WINDOW,
    clock: Callable[[], datetime] = utcnow,
) -> GovernanceServer:
    """Start a GovernanceService on ``host:port`` (port 0: a free one) over the governance database at ``db_url``.

    Every act is recorded on ``ledger``. With ``tls`` the port speaks TLS only.
    """
    governor = Governor(GovernanceStore(db_url), ledger, clock=clock, request_window=request_window)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="governance"))
    pb_grpc.add_GovernanceServiceServicer_to_server(GovernanceServicer(governor), server)
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, tls.credentials()) if tls is not None else server.add_insecure_port(address)
    except RuntimeError as e:  # grpc raises instead of returning 0 in recent versions
        bound, cause = 0, e
    else:
        cause = None
    if bound == 0:
        governor.store.close()
        raise OSError(f"cannot bind the governance service to {address}") from cause
    server.start()
    log.info("governance service listening on %s:%d (%s)", host, bound, "TLS" if tls else "plaintext")
    return GovernanceServer(server, governor, host, bound, tls is not None)
