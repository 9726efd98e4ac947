"""The read-only LedgerService over gRPC, and ``serve`` to run it.

Anyone who can reach the port can read and verify; nothing can write (there is no
write RPC). TLS is optional (server certificate and key; with ``client_ca``,
clients must present a certificate signed by it).

Because anyone can call it, every call is bounded: sequence numbers are
checked, pages hold at most ``MAX_PAGE`` entries and about ``MAX_PAGE_BYTES``,
and the long-lived and expensive calls (``StreamEntries``, ``VerifyChain``) each
have their own limit of concurrent calls, answered ``RESOURCE_EXHAUSTED``
beyond it, and threads of their own, so they never starve the unary calls.
Streams end when the server stops.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import grpc
from sentinel.ledger import convert, serving
from sentinel.ledger.entries import LedgerEntry
from sentinel.ledger.exceptions import LedgerError, StreamLimitError
from sentinel.ledger.kinds import parse_kind
from sentinel.ledger.store import Ledger, check_seq
from sentinel.protos import ledger_pb2 as pb
from sentinel.protos import ledger_pb2_grpc as pb_grpc

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_PAGE_BYTES = 1 << 20
"""A page stops growing past this many bytes (it always holds at least one entry)."""
MAX_REQUEST_BYTES = 64 * 1024
STREAM_POLL_S = 0.2
UNARY_WORKERS = 8
MAX_STREAMS = 8
MAX_VERIFIES = 2
MAX_NODE_ID = 128
_T = TypeVar("_T")
log = logging.getLogger(__name__)


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
            context.abort(grpc.StatusCode[e.status], serving.details(e))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, serving.details(e))
        except Exception as e:  # noqa: BLE001 - the client gets a status, the log the traceback
            log.exception("LedgerService.%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, serving.details(f"internal error: {type(e).__name__}: {e}"))
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    return wrapper


def _page_start(request: pb.GetEntriesRequest) -> int:
    if not request.page_token:
        return check_seq(request.start, "start")
    if len(request.page_token) > 20 or not request.page_token.isdecimal():
        raise ValueError(f"`page_token` {request.page_token[:40]!r} is not one this server issued")
    return check_seq(int(request.page_token), "page_token")


def _filters(request: pb.GetEntriesRequest | pb.StreamEntriesRequest) -> tuple[str | None, str | None]:
    """The request's ``kind`` and ``node`` filters (None: any); a node id longer than any stored one is refused."""
    if len(request.node) > MAX_NODE_ID:
        raise ValueError(f"`node` is {len(request.node)} characters long; node ids are at most {MAX_NODE_ID}")
    return request.kind or None, request.node or None


class _Limit:
    """At most ``size`` concurrent calls of one kind; beyond that :class:`StreamLimitError` (RESOURCE_EXHAUSTED)."""

    def __init__(self, size: int, what: str) -> None:
        self._slots = threading.BoundedSemaphore(size)
        self.size, self.what = size, what

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise StreamLimitError(f"the server already serves {self.size} {self.what}; try again later")
        try:
            yield
        finally:
            self._slots.release()


class LedgerServicer(pb_grpc.LedgerServiceServicer):
    """Answers LedgerService calls from a (read-only) :class:`Ledger`."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        poll_interval: float = STREAM_POLL_S,
        stopping: threading.Event | None = None,
        max_streams: int = MAX_STREAMS,
        max_verifies: int = MAX_VERIFIES,
    ):
        self.ledger = ledger
        self.poll_interval = poll_interval
        self.stopping = stopping or threading.Event()
        self._streams = _Limit(max_streams, "entry streams")
        self._verifies = _Limit(max_verifies, "chain verifications")

    @_grpc_errors
    def GetEntries(self, request: pb.GetEntriesRequest, context: grpc.ServicerContext) -> pb.GetEntriesResponse:
        """A page of entries (bounded in count and bytes); ``next_page_token`` is the next start seq while more remain."""
        limit = min(request.page_size or DEFAULT_PAGE, MAX_PAGE)
        kind, node = _filters(request)
        found = self.ledger.entries(_page_start(request), limit + 1, kind, node)
        page, size = [], 0
        for entry in found[:limit]:
            message = convert.entry_to_pb(entry)
            size += message.ByteSize()
            if page and size > MAX_PAGE_BYTES:
                break
            page.append(message)
        more = len(page) < len(found)
        token = str(page[-1].seq + 1) if more and page else ""
        return pb.GetEntriesResponse(entries=page, next_page_token=token)

    @_grpc_errors
    def GetEntry(self, request: pb.GetEntryRequest, context: grpc.ServicerContext) -> pb.Entry:
        """One entry by seq."""
        return convert.entry_to_pb(self.ledger.get(check_seq(request.seq)))

    @_grpc_errors
    def GetNodeSummary(self, request: pb.GetNodeSummaryRequest, context: grpc.ServicerContext) -> pb.NodeSummary:
        """One node's derived summary."""
        if not request.node or len(request.node) > MAX_NODE_ID:
            raise ValueError(f"`node` is required and at most {MAX_NODE_ID} characters long")
        return convert.summary_to_pb(self.ledger.node_summary(request.node))

    @_grpc_errors
    def VerifyChain(self, request: pb.VerifyChainRequest, context: grpc.ServicerContext) -> pb.VerifyChainResponse:
        """Verify the chain against the given key (else the anchor beside the database), and the given head."""
        head = convert.head_from_pb(request.head) if request.HasField("head") else None
        with self._verifies.slot():
            report = self.ledger.verify(request.public_key or None, node_signatures=request.check_node_signatures, head=head)
        return convert.report_to_pb(report)

    @_grpc_errors
    def GetBalances(self, request: pb.GetBalancesRequest, context: grpc.ServicerContext) -> pb.GetBalancesResponse:
        """Token balances derived from the ledger."""
        return pb.GetBalancesResponse(balances=self.ledger.balances())

    @_grpc_errors
    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.GetInfoResponse:
        """Count, head and key."""
        return convert.info_to_pb(self.ledger.info())

    def StreamEntries(self, request: pb.StreamEntriesRequest, context: grpc.ServicerContext) -> Iterator[pb.Entry]:
        """Entries from ``start`` on, then each new one as it is committed (polling the database head).

        Ends when the client goes away or the server stops; beyond the server's
        limit of concurrent streams the call is answered RESOURCE_EXHAUSTED.
        """
        try:
            check_seq(request.start, "start")
            _filters(request)
            if request.kind:
                parse_kind(request.kind)
            with self._streams.slot():
                for entry in self._follow(request, context):
                    yield convert.entry_to_pb(entry)
        except LedgerError as e:
            context.abort(grpc.StatusCode[e.status], serving.details(e))
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, serving.details(e))

    def _follow(self, request: pb.StreamEntriesRequest, context: grpc.ServicerContext) -> Iterator[LedgerEntry]:
        next_seq, (kind, node) = request.start, _filters(request)
        while context.is_active() and not self.stopping.is_set():
            head = self.ledger.head()  # writers may be other processes: the database is the only signal
            if head is None or head.seq < next_seq:
                self.stopping.wait(self.poll_interval)
                continue
            # Appends are serialised, so every entry up to a visible head is committed.
            while not self.stopping.is_set() and (batch := self.ledger.entries(next_seq, MAX_PAGE, kind, node, stop=head.seq + 1)):
                yield from batch
                next_seq = batch[-1].seq + 1
            next_seq = head.seq + 1


class LedgerServer:
    """A running LedgerService: its bound ``port``; ``stop()`` ends streams and shuts it down."""

    def __init__(
        self, server: grpc.Server, port: int, ledger: Ledger, stopping: threading.Event, executor: futures.ThreadPoolExecutor
    ) -> None:
        self._server, self.port, self.ledger, self._stopping, self._executor = server, port, ledger, stopping, executor

    def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving (streams end at once, other in-flight calls get ``grace`` seconds) and close the database."""
        self._stopping.set()
        serving.stop_server(self._server, self._executor, grace)
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
    max_workers: int = UNARY_WORKERS,
    max_streams: int = MAX_STREAMS,
    poll_interval: float = STREAM_POLL_S,
) -> LedgerServer:
    """Serve the ledger at ``url`` read-only on ``host:port`` (0: any free port; see ``.port``).

    The ledger must exist (:class:`LedgerNotFoundError` otherwise: nothing is
    created); a port in use is refused with :class:`OSError`. ``max_workers``
    threads serve unary calls and ``max_streams`` more serve streams.
    """
    ledger = Ledger(url)
    stopping = threading.Event()
    server, executor = serving.new_server(
        workers=max_workers + max_streams, thread_name="ledger-api", max_receive_bytes=MAX_REQUEST_BYTES
    )
    servicer = LedgerServicer(
        ledger, poll_interval=poll_interval, stopping=stopping, max_streams=max_streams,
        max_verifies=max(1, min(MAX_VERIFIES, max_workers // 2)),
    )
    pb_grpc.add_LedgerServiceServicer_to_server(servicer, server)
    try:
        bound = serving.bind(server, host, port, tls.credentials() if tls else None)
    except OSError:
        executor.shutdown(wait=False)
        ledger.close()
        raise
    server.start()
    return LedgerServer(server, bound, ledger, stopping, executor)
