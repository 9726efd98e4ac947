"""The gRPC GovernanceService: contracts, nodes, proposals and votes over the network.

Read RPCs are open; SubmitProposal and CastVote must carry a valid node
signature (see ``protos/governance.proto`` for the signed documents, the status
codes and the limits). The servicer only translates messages: every decision is
the :class:`~governance.governor.Governor`'s, and governance (and ledger) errors
become gRPC statuses through their ``status`` attribute.

Every request is bounded (:mod:`governance.limits`: field sizes, patterns,
message size) and every list is paginated, so no caller can keep a handler
busy without limit or make an answer too large to send.
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
from sentinel.governance.limits import (
    CONTRACT_PAGE,
    MAX_NODE_ID,
    MAX_PATTERN,
    MAX_PROPOSAL_ID,
    MAX_REQUEST_BYTES,
    NODE_PAGE,
    PROPOSAL_PAGE,
)
from sentinel.governance.paging import cut_page, decode_token, encode_token, page_size
from sentinel.governance.patterns import check_pattern, matches
from sentinel.governance.policy import check_operation
from sentinel.governance.signing import DEFAULT_WINDOW, parse_timestamp, utcnow
from sentinel.governance.store import GovernanceStore
from sentinel.ledger import serving
from sentinel.ledger.exceptions import LedgerError
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
        except (GovernanceError, LedgerError) as e:  # a ledger refusal (e.g. a node signature) leaves the act unwritten
            context.abort(getattr(grpc.StatusCode, e.status, grpc.StatusCode.UNKNOWN), serving.details(e))
        except Exception as e:  # noqa: BLE001 - the client gets a status, the log the traceback
            log.exception("GovernanceService.%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, serving.details(f"internal error: {type(e).__name__}: {e}"))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return handler


class GovernanceServicer(pb_grpc.GovernanceServiceServicer):
    """Serves one governor's state and acts."""

    def __init__(self, governor: Governor) -> None:
        self.governor = governor

    @_rpc
    def ListContracts(self, request: pb.ListContractsRequest, context: grpc.ServicerContext) -> pb.ListContractsResponse:
        contracts = self.governor.contracts()
        names = contracts.components()
        if request.pattern:
            pattern = check_pattern(request.pattern)
            names = [n for n in names if matches(pattern, n)]
        if request.page_token:
            (after,) = decode_token(request.page_token, 1)
            names = [n for n in names if n > after]  # sorted: the ids after the previous page's last one
        size = page_size(request.page_size, CONTRACT_PAGE)
        page, last = cut_page(names[: size + 1], size, lambda n: wire.contract_to_pb(contracts.contracts[n]))
        return wire.contract_set_to_pb(contracts, page, encode_token(last) if last is not None else "")

    @_rpc
    def GetContract(self, request: pb.GetContractRequest, context: grpc.ServicerContext) -> pb.GetContractResponse:
        contracts = self.governor.contracts()
        contract = contracts.get(request.component)
        if contract is None:
            raise UnknownComponentError(f"no contract for component {request.component[:MAX_PATTERN]!r}")
        return pb.GetContractResponse(contract=wire.contract_to_pb(contract), set_version=contracts.version)

    @_rpc
    def CheckPermission(self, request: pb.CheckPermissionRequest, context: grpc.ServicerContext) -> pb.CheckPermissionResponse:
        if not request.node_id or len(request.node_id) > MAX_NODE_ID:
            raise InvalidRequestError(f"`node_id` is required and at most {MAX_NODE_ID} characters long")
        if len(request.component) > MAX_PATTERN:
            raise InvalidRequestError(f"`component` is at most {MAX_PATTERN} characters long")
        at_time = parse_timestamp(request.at_time, "at_time") if request.at_time else None
        engine = self.governor.policy_engine()
        when = at_time or self.governor.clock()
        decision = engine.may(request.node_id, check_operation(request.operation), request.component, when)
        return pb.CheckPermissionResponse(allowed=decision.allowed, reason=decision.reason, set_version=engine.version)

    @_rpc
    def ListNodes(self, request: pb.ListNodesRequest, context: grpc.ServicerContext) -> pb.ListNodesResponse:
        registry = self.governor.nodes()
        records = [registry[n] for n in sorted(registry)] if request.include_removed else registry.active()
        if request.page_token:
            (after,) = decode_token(request.page_token, 1)
            records = [r for r in records if r.node_id > after]
        size = page_size(request.page_size, NODE_PAGE)
        page, last = cut_page(records[: size + 1], size, wire.node_to_pb)
        return pb.ListNodesResponse(nodes=page, next_page_token=encode_token(last.node_id) if last is not None else "")

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
            raise InvalidRequestError(f"`status` {request.status[:40]!r} is not one of open, executed, rejected, failed")
        after = None
        if request.page_token:
            created, proposal_id = decode_token(request.page_token, 2)
            after = (parse_timestamp(created, "page_token"), proposal_id)
        self.governor.close_expired()
        size = page_size(request.page_size, PROPOSAL_PAGE)
        records = self.governor.proposals(request.status or None, after=after, limit=size + 1)
        page, last = cut_page(records, size, lambda r: wire.proposal_to_pb(r, self.governor.tally(r.proposal_id)))
        token = encode_token(last.created_at.isoformat(), last.proposal_id) if last is not None else ""
        return pb.ListProposalsResponse(proposals=page, next_page_token=token)

    @_rpc
    def GetProposal(self, request: pb.GetProposalRequest, context: grpc.ServicerContext) -> pb.GetProposalResponse:
        if len(request.proposal_id) > MAX_PROPOSAL_ID:
            raise InvalidRequestError(f"`proposal_id` is at most {MAX_PROPOSAL_ID} characters long")
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

    def __init__(
        self, server: grpc.Server, governor: Governor, host: str, port: int, tls: bool, executor: futures.ThreadPoolExecutor
    ) -> None:
        self._server = server
        self._executor = executor
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
        serving.stop_server(self._server, self._executor, grace)
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
    A port already in use (by any process) is refused with :class:`OSError`.
    """
    governor = Governor(GovernanceStore(db_url), ledger, clock=clock, request_window=request_window)
    server, executor = serving.new_server(workers=max_workers, thread_name="governance", max_receive_bytes=MAX_REQUEST_BYTES)
    pb_grpc.add_GovernanceServiceServicer_to_server(GovernanceServicer(governor), server)
    try:
        bound = serving.bind(server, host, port, tls.credentials() if tls is not None else None)
    except (OSError, ValueError):
        executor.shutdown(wait=False)
        governor.store.close()
        raise
    server.start()
    log.info("governance service listening on %s:%d (%s)", host, bound, "TLS" if tls else "plaintext")
    return GovernanceServer(server, governor, host, bound, tls is not None, executor)
