"""The LedgerService under abuse, on a real server on loopback: clear statuses, bounded time, others still served."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sentinel.ledger.cli import app
from sentinel.ledger.client import LedgerClient
from sentinel.ledger.exceptions import LedgerNotFoundError
from sentinel.ledger.service import MAX_STREAMS, LedgerServer, serve
from sentinel.ledger.store import Ledger
from sentinel.protos import ledger_pb2 as pb
from sentinel.protos import ledger_pb2_grpc as pb_grpc
from typer.testing import CliRunner

pytestmark = pytest.mark.slow
TOO_BIG = [2**63, 2**64 - 1]


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:  # the service is backend-agnostic: SQLite is enough here
    return request.getfixturevalue("sqlite_url")


@pytest.fixture
def server(filled: Ledger) -> Iterator[LedgerServer]:
    srv = serve(filled.url, port=0, poll_interval=0.05)
    yield srv
    srv.stop(grace=0)


@pytest.fixture
def stub(server: LedgerServer) -> Iterator[pb_grpc.LedgerServiceStub]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield pb_grpc.LedgerServiceStub(channel)


def _status(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()  # type: ignore[no-any-return]


def test_idle_streams_beyond_the_limit_are_refused_and_unary_calls_are_still_answered(server: LedgerServer) -> None:
    channels = [grpc.insecure_channel(f"127.0.0.1:{server.port}") for _ in range(2 * MAX_STREAMS)]
    calls = [pb_grpc.LedgerServiceStub(c).StreamEntries(pb.StreamEntriesRequest(start=0), timeout=120) for c in channels]
    try:
        accepted, refused = 0, 0
        for call in calls:
            try:
                assert next(call).seq == 0  # accepted: the stream sends the chain, then idles at its head
                accepted += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e
                refused += 1
        assert (accepted, refused) == (MAX_STREAMS, MAX_STREAMS)
        with LedgerClient(f"127.0.0.1:{server.port}", timeout=15) as client:
            assert client.info().count == 25  # unary calls have threads of their own
            assert len(client.entries(0, 5)) == 5
        for call in calls:
            call.cancel()
        with LedgerClient(f"127.0.0.1:{server.port}", timeout=15) as client:
            deadline = time.monotonic() + 60  # a cancelled stream frees its slot within a poll interval
            while True:
                stream = client.stream(start=24, timeout=30)
                try:
                    assert next(stream).seq == 24
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
                finally:
                    stream.close()
    finally:
        for call in calls:
            call.cancel()
        for c in channels:
            c.close()


def test_sequence_numbers_beyond_int64_are_invalid_arguments(stub: pb_grpc.LedgerServiceStub) -> None:
    for value in TOO_BIG:
        assert _status(lambda: stub.GetEntry(pb.GetEntryRequest(seq=value), timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
        assert _status(lambda: stub.GetEntries(pb.GetEntriesRequest(start=value), timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
        assert _status(lambda: stub.GetEntries(pb.GetEntriesRequest(page_token=str(value)), timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
        stream = stub.StreamEntries(pb.StreamEntriesRequest(start=value), timeout=10)
        assert _status(lambda: next(stream)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: stub.GetEntries(pb.GetEntriesRequest(page_token="9" * 400), timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: stub.GetEntry(pb.GetEntryRequest(seq=2**63 - 1), timeout=10)) == grpc.StatusCode.NOT_FOUND
    page = stub.GetEntries(pb.GetEntriesRequest(page_size=10**9), timeout=10)
    assert len(page.entries) == 25 and not page.next_page_token  # an enormous page size is capped, not an error


def test_serving_a_database_that_does_not_exist_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    with pytest.raises(LedgerNotFoundError, match="no ledger database"):
        serve(f"sqlite:///{typo}", port=0)
    result = CliRunner().invoke(app, ["serve", "--db", str(typo), "--port", "0"])
    assert result.exit_code == 2 and "no ledger database" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not typo.exists()
    (tmp_path / "empty.db").touch()  # a SQLite file, but no ledger in it
    with pytest.raises(LedgerNotFoundError, match="holds no ledger tables"):
        serve(f"sqlite:///{tmp_path / 'empty.db'}", port=0)


def test_a_second_server_on_the_same_port_is_refused(server: LedgerServer, filled: Ledger) -> None:
    with pytest.raises(OSError, match="cannot listen"):
        serve(filled.url, port=server.port)
    result = CliRunner().invoke(app, ["serve", "--db", filled.url, "--port", str(server.port)])
    assert result.exit_code == 2 and "cannot listen" in result.output and len(result.output.strip().splitlines()) == 1
    with LedgerClient(f"127.0.0.1:{server.port}", timeout=15) as client:
        assert client.info().count == 25


def test_streams_end_when_the_server_stops(filled: Ledger) -> None:
    srv = serve(filled.url, port=0, poll_interval=0.05)
    try:
        with LedgerClient(f"127.0.0.1:{srv.port}", timeout=15) as client:
            stream = client.stream(start=0, timeout=120)
            assert next(stream).seq == 0
            ended = threading.Event()

            def drain() -> None:
                try:
                    for _ in stream:
                        pass
                except Exception:  # noqa: BLE001 - ending with an error status is also an end
                    pass
                ended.set()

            threading.Thread(target=drain, daemon=True).start()
            started = time.monotonic()
            srv.stop(grace=1.0)
            assert ended.wait(60) and time.monotonic() - started < 60
    finally:
        srv.stop(grace=0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_exits_promptly_on_a_signal_with_streams_open_and_calls_in_flight(filled: Ledger, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from sentinel.ledger.cli import app; app()", "serve", "--db", filled.url, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    stop = threading.Event()
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        target = f"127.0.0.1:{port}"
        streams = [LedgerClient(target, timeout=15).stream(start=0, timeout=120) for _ in range(4)]
        for stream in streams:
            assert next(stream).seq == 0

        def hammer() -> None:
            with LedgerClient(target, timeout=5) as client:
                while not stop.is_set():
                    try:
                        client.verify(filled.public_key_b64)
                        client.entries(0, 25)
                    except Exception:  # noqa: BLE001 - the server is going away
                        return

        workers = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(60) == 0, proc.stderr.read()  # type: ignore[union-attr]
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_errors_are_one_line(filled: Ledger, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a database\n" * 100)
    cases = [
        (["entries", "--db", str(junk)], "not a database"),
        (["verify", "--db", filled.url, "--public-key", "AAAA"], "public key"),
        (["verify", "--db", filled.url, "--public-key", filled.public_key_b64, "--head", str(junk)], "not a signed ledger head"),
        (["node", "7", "--db", str(tmp_path / "nothing.db")], "no ledger database"),
        (["balances", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"], ""),
    ]
    for args, expected in cases:
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)
        assert expected in result.output, (args, result.output)


def test_huge_filters_get_a_short_clear_refusal(stub: pb_grpc.LedgerServiceStub) -> None:
    huge = "x" * 60_000  # under the request limit: the handler itself must refuse it, and must not echo it back whole
    for request in (pb.GetEntriesRequest(kind=huge), pb.GetEntriesRequest(node=huge)):
        with pytest.raises(grpc.RpcError) as info:
            stub.GetEntries(request, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(info.value.details()) <= 1000
    stream = stub.StreamEntries(pb.StreamEntriesRequest(kind=huge), timeout=10)
    assert _status(lambda: next(stream)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: stub.GetNodeSummary(pb.GetNodeSummaryRequest(node=huge), timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _status(lambda: stub.GetEntries(pb.GetEntriesRequest(kind="y" * 70_000), timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
