"""The read-only LedgerService over gRPC, and ``serve`` to run it.

Anyone who can reach the port can read and verify; nothing can write (there is no
write RPC). TLS is optional (server certificate and key; with ``client_ca``,
clients must present a certificate signed by it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sentinel.ledger import convert
from sentinel.ledger.entries import LedgerEntry
from sentinel.ledger.exceptions import LedgerError
from sentinel.ledger.store import Ledger
from sentinel.protos import ledger_pb2 as pb
from sentinel.protos import ledger_pb2_grpc as pb_grpc

DEFAULT_PAGE = 100
MAX_PAGE = 1000
STREAM_POLL_S = 0.2
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server TLS material (PEM bytes); ``client_ca`` set means clients must present certificates."""

    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: str | Path, key: str | Path, client_ca: str | Path | None = None) -> TlsConfig:
        """Read the PEM files."""
        return cls(
            certificate_chain=Path(cert).read_bytes(),
            private_key=Path(key).read_bytes(),
            client_ca=Path(client_ca).read_bytes() if client_ca else None,
        )

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials for this material."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def _grpc_errors(method: Callable[..., _T]) -> Callable[..., _T]:
    """Turn ledger errors into gRPC statuses (named by each error's ``status``), bad input into INVALID_ARGUMENT."""

    @wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> _T:
        try:
            return method(self, request, context)
        except LedgerError as e:
            context.abort(grpc.StatusCode[e.status], str(e))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return wrapper


def _page_start(request: pb.GetEntriesRequest) -> int:
    if not request.page_token:
        return request.start
    if not request.page_token.isdecimal():
        raise ValueError(f"`page_token` {request.page_token!r} is not one this server issued")
    return int(request.page_token)


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    """Answers LedgerService calls from a (read-only) :class:`Ledger`."""

    def __init__(self, ledger: Ledger, *, poll_interval: float = STREAM_POLL_S, stopping: threading.Event | None = None):
        self.ledger = ledger
        self.poll_interval = poll_interval
        self.stopping = stopping or threading.Event()

    @_grpc_errors
    def GetEntries(self, request: pb.GetEntriesRequest, context: grpc.ServicerContext) -> pb.GetEntriesResponse:
        """A page of entries; ``next_page_token`` is the next start seq while more remain."""
        limit = min(request.limit or DEFAULT_PAGE, MAX_PAGE)
        found = self.ledger.entries(_page_start(request), limit + 1, request.kind or None, request.node or None)
        page = found[:limit]
        token = str(page[-1].seq + 1) if len(found) > limit else ""
        return pb.GetEntriesResponse(entries=[convert.entry_to_pb(e) for e in page], next_page_token=token)

    @_grpc_errors
    def GetEntry(self, request: pb.GetEntryRequest, context: grpc.ServicerContext) -> pb.Entry:
        """One entry by seq."""
        return convert.entry_to_pb(self.ledger.get(request.seq))

    @_grpc_errors
    def GetNodeSummary(self, request: pb.GetNodeSummaryRequest, context: grpc.ServicerContext) -> pb.NodeSummary:
        """One node's derived summary."""
        if not request.node:
            raise ValueError("`node` is required")
        return convert.summary_to_pb(self.ledger.node_summary(request.node))

    @_grpc_errors
    def VerifyChain(self, request: pb.VerifyChainRequest, context: grpc.ServicerContext) -> pb.VerifyChainResponse:
        """Verify the chain against the given key, else the one the ledger recorded."""
        key = request.public_key or self.ledger.public_key_b64 or ""
        report = self.ledger.verify(key or None, node_signatures=request.check_node_signatures)
        return convert.report_to_pb(report, key)

    @_grpc_errors
    def GetBalances(self, request: pb.GetBalancesRequest, context: grpc.ServicerContext) -> pb.GetBalancesResponse:
        """Token balances derived from the ledger."""
        return pb.GetBalancesResponse(balances=self.ledger.balances())

    @_grpc_errors
    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        """Count, head and key."""
        return convert.info_to_pb(self.ledger.info())

    def StreamEntries(self, request: pb.StreamEntriesRequest, context: grpc.ServicerContext) -> Iterator[pb.Entry]:
        """Entries from ``start`` on, then each new one as it is committed (polling the database head)."""
        try:
            for entry in self._follow(request, context):
                yield convert.entry_to_pb(entry)
        except LedgerError as e:
            context.abort(grpc.StatusCode[e.status], str(e))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def _follow(self, request: pb.StreamEntriesRequest, context: grpc.ServicerContext) -> Iterator[LedgerEntry]:
        next_seq, kind, node = request.start, request.kind or None, request.node or None
        while context.is_active() and not self.stopping.is_set():
            head = self.ledger.head()  # writers may be other processes: the database is the only signal
            if head is None or head.seq < next_seq:
                self.stopping.wait(self.poll_interval)
                continue
            # Appends are serialised, so every entry up to a visible head is committed.
            while batch := self.ledger.entries(next_seq, MAX_PAGE, kind, node, stop=head.seq + 1):
                yield from batch
                next_seq = batch[-1].seq + 1
            next_seq = head.seq + 1


class LedgerServer:
    """A running LedgerService: its bound ``port``; ``stop()`` ends streams and shuts it down."""

    def __init__(self, server: grpc.Server, port: int, ledger: Ledger, stopping: threading.Event) -> None:
        self._server, self.port, self.ledger, self._stopping = server, port, ledger, stopping

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds) and close the database."""
        self._stopping.set()
        self._server.stop(grace).wait()
        self.ledger.close()

    def wait(self) -> None:
        """Block until the server stops."""
        self._server.wait_for_termination()

    def __enter__(self) -> LedgerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    url: str,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsConfig | None = None,
    *,
    max_workers: int = 16,
    poll_interval: float = STREAM_POLL_S,
) -> LedgerServer:
    """Serve the ledger at ``url`` read-only on ``host:port`` (0: any free port; see ``.port``)."""
    ledger = Ledger(url)
    stopping = threading.Event()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="ledger-api"))
    pb_grpc.add_LedgerServiceServicer_to_server(
        LedgerServicer(ledger, poll_interval=poll_interval, stopping=stopping), server
    )
    address = f"{host}:{port}"
    try:
        bound = server.add_secure_port(address, tls.credentials()) if tls else server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises on bind failure in recent versions, returns 0 in older ones
        bound = 0
    if bound == 0:
        ledger.close()
        raise OSError(f"cannot listen on {address}")
    server.start()
    return LedgerServer(server, bound, ledger, stopping)
