"""A client of the LedgerService that answers with the same records as :class:`ledger.store.Ledger`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
from sentinel.ledger import convert
from sentinel.ledger.entries import LedgerEntry, LedgerInfo, NodeSummary, VerifyReport
from sentinel.ledger.exceptions import EntryNotFoundError, LedgerError
from sentinel.ledger.head import SignedHead
from sentinel.protos import ledger_pb2 as pb
from sentinel.protos import ledger_pb2_grpc as pb_grpc
from sentinel.protos.vocabulary import EntryKind


class LedgerApiError(LedgerError):
    """The LedgerService answered with an error status (the message says which and why)."""


def _raise(e: grpc.RpcError) -> LedgerError:
    code, details = e.code(), e.details()  # type: ignore[attr-defined]
    if code == grpc.StatusCode.NOT_FOUND:
        return EntryNotFoundError(details)
    return LedgerApiError(f"ledger API error {code.name}: {details}")


class LedgerClient:
    """Talks to a LedgerService at ``target`` (``host:port``); TLS when ``root_cert`` (PEM) is given.

    ``root_cert`` may be PEM bytes or a path to a PEM file; ``timeout`` bounds
    each unary call in seconds.
    """

    def __init__(self, target: str, root_cert: bytes | str | Path | None = None, *, timeout: float = 30.0) -> None:
        self.target = target
        self.timeout = timeout
        if root_cert is None:
            self._channel = grpc.insecure_channel(target)
        else:
            pem = root_cert if isinstance(root_cert, bytes) else Path(root_cert).read_bytes()
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=pem))
        self._stub = pb_grpc.LedgerServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> LedgerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise _raise(e) from e

    def entries(
        self, start: int = 0, limit: int = 100, kind: EntryKind | str | None = None, node: str | None = None
    ) -> list[LedgerEntry]:
        """Up to ``limit`` entries from ``start`` (following pages as needed), optionally filtered."""
        out: list[LedgerEntry] = []
        for entry in self.iter_entries(start, kind, node, page=min(max(limit, 1), 1000)):
            if len(out) >= limit:
                break
            out.append(entry)
        return out

    def iter_entries(
        self, start: int = 0, kind: EntryKind | str | None = None, node: str | None = None, *, page: int = 1000
    ) -> Iterator[LedgerEntry]:
        """Every entry from ``start`` on, page by page through ``next_page_token``."""
        request = pb.GetEntriesRequest(start=start, page_size=page, kind=str(kind or ""), node=str(node or ""))
        while True:
            response: pb.GetEntriesResponse = self._call("GetEntries", request)  # type: ignore[assignment]
            yield from (convert.entry_from_pb(m) for m in response.entries)
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def get(self, seq: int) -> LedgerEntry:
        """One entry by seq; :class:`EntryNotFoundError` if absent."""
        return convert.entry_from_pb(self._call("GetEntry", pb.GetEntryRequest(seq=seq)))  # type: ignore[arg-type]

    def node_summary(self, node: str) -> NodeSummary:
        """One node's derived summary."""
        message = self._call("GetNodeSummary", pb.GetNodeSummaryRequest(node=str(node)))
        return convert.summary_from_pb(message)  # type: ignore[arg-type]

    def verify(
        self, public_key: str | None = None, *, node_signatures: bool = False, head: SignedHead | None = None
    ) -> VerifyReport:
        """Ask the server to verify its chain against ``public_key`` and the published ``head``.

        Without ``public_key`` the server uses the trust anchor published beside
        its database (and refuses, FAILED_PRECONDITION, if there is none); the key
        its database records is never used. The answer is the server's word:
        pass the key you trust.
        """
        request = pb.VerifyChainRequest(public_key=public_key or "", check_node_signatures=node_signatures)
        if head is not None:
            request.head.CopyFrom(convert.head_to_pb(head))
        return convert.report_from_pb(self._call("VerifyChain", request))  # type: ignore[arg-type]

    def balances(self) -> dict[str, int]:
        """Token balance per node."""
        response: pb.GetBalancesResponse = self._call("GetBalances", pb.GetBalancesRequest())  # type: ignore[assignment]
        return dict(sorted(response.balances.items()))

    def info(self) -> LedgerInfo:
        """Count, head and coordinator key."""
        return convert.info_from_pb(self._call("GetInfo", pb.GetInfoRequest()))  # type: ignore[arg-type]

    def stream(
        self, start: int = 0, kind: EntryKind | str | None = None, node: str | None = None, *, timeout: float | None = None
    ) -> Iterator[LedgerEntry]:
        """Entries from ``start`` on, then new ones as they are appended, until ``timeout`` (None: forever) or close."""
        request = pb.StreamEntriesRequest(start=start, kind=str(kind or ""), node=str(node or ""))
        call = self._stub.StreamEntries(request, timeout=timeout)
        try:
            for message in call:
                yield convert.entry_from_pb(message)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
                raise _raise(e) from e
        finally:
            call.cancel()
