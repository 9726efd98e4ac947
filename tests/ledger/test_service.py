"""The LedgerService against a real gRPC server on loopback (port 0), with and without TLS."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sentinel.ledger.client import LedgerApiError, LedgerClient
from sentinel.ledger.crypto import public_key_from_b64
from sentinel.ledger.entries import Problem
from sentinel.ledger.exceptions import EntryNotFoundError
from sentinel.ledger.service import LedgerServer, TlsConfig, serve
from sentinel.ledger.store import Ledger


@pytest.fixture
def server(filled: Ledger) -> Iterator[LedgerServer]:
    srv = serve(filled.url, port=0, poll_interval=0.05)
    yield srv
    srv.stop(grace=0)


@pytest.fixture
def client(server: LedgerServer) -> Iterator[LedgerClient]:
    with LedgerClient(f"127.0.0.1:{server.port}", timeout=10) as c:
        yield c


def test_pagination_walks_every_entry_once(client: LedgerClient, filled: Ledger) -> None:
    seqs = [e.seq for e in client.iter_entries(page=4)]
    assert seqs == list(range(filled.count()))
    assert client.entries(start=5, limit=3) == filled.entries(5, 3)
    key = public_key_from_b64(filled.public_key_b64)  # type: ignore[arg-type]
    assert all(e.is_authentic(key) for e in client.iter_entries(page=7))


def test_filters_by_kind_and_node(client: LedgerClient, filled: Ledger, node_keys) -> None:  # type: ignore[no-untyped-def]
    submitted = list(client.iter_entries(kind="update_submitted", page=2))
    assert [e.seq for e in submitted] == [e.seq for e in filled.entries(kind="update_submitted")]
    assert len(submitted) == 6
    node = list(node_keys)[1]
    assert [e.seq for e in client.iter_entries(node=node, page=3)] == [e.seq for e in filled.entries(node=node)]
    with pytest.raises(LedgerApiError, match="INVALID_ARGUMENT"):
        client.entries(kind="bogus")


def test_get_entry_summary_balances_and_info(client: LedgerClient, filled: Ledger, node_keys) -> None:  # type: ignore[no-untyped-def]
    assert client.get(4) == filled.get(4)
    with pytest.raises(EntryNotFoundError):
        client.get(10_000)
    node = list(node_keys)[1]
    assert client.node_summary(node) == filled.node_summary(node)
    assert client.balances() == filled.balances()
    info = client.info()
    assert (info.count, info.head_seq, info.public_key) == (25, 24, filled.public_key_b64)


def test_verify_chain_reports_ok_and_the_first_bad_entry(client: LedgerClient, filled: Ledger, sql) -> None:  # type: ignore[no-untyped-def]
    key = filled.public_key_b64
    assert client.verify(key) == filled.verify()
    assert client.verify(key).ok and client.verify(key).public_key == key
    with pytest.raises(LedgerApiError, match="FAILED_PRECONDITION.*no trusted coordinator key"):
        client.verify()  # the server has no anchor beside its database, and never trusts the key it stores
    sql(filled, "DELETE FROM ledger_entry WHERE seq = 7")
    report = client.verify(key)
    assert (report.ok, report.first_bad_seq, report.problem) == (False, 7, Problem.GAP)


def test_stream_sends_existing_entries_then_new_ones(client: LedgerClient, filled: Ledger) -> None:
    stream = client.stream(start=20, timeout=20)
    try:
        assert [next(stream).seq for _ in range(5)] == [20, 21, 22, 23, 24]
        filled.append("round_started", "coordinator", {"round": 3})  # another Ledger object: the server polls the DB
        filled.append("checkpoint", "coordinator", {"round": 3, "adapter_hash": "c" * 64})
        late = [next(stream), next(stream)]
        assert [(e.seq, str(e.kind)) for e in late] == [(25, "round_started"), (26, "checkpoint")]
        assert late[0] == filled.get(25)
    finally:
        stream.close()


def test_filtered_stream_skips_other_kinds(client: LedgerClient, filled: Ledger) -> None:
    stream = client.stream(start=0, kind="checkpoint", timeout=20)
    try:
        assert [next(stream).seq for _ in range(2)] == [13, 24]
        filled.append("round_started", "coordinator", {"round": 3})
        filled.append("checkpoint", "coordinator", {"round": 3, "adapter_hash": "d" * 64})
        assert next(stream).seq == 26
    finally:
        stream.close()


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_server_serves_clients_that_trust_its_certificate(filled: Ledger) -> None:
    cert, key = _self_signed()
    srv = serve(filled.url, port=0, tls=TlsConfig(certificate_chain=cert, private_key=key))
    try:
        with LedgerClient(f"127.0.0.1:{srv.port}", root_cert=cert, timeout=10) as tls_client:
            assert tls_client.verify(filled.public_key_b64).ok and tls_client.info().count == 25
        with LedgerClient(f"127.0.0.1:{srv.port}", timeout=3) as plain:
            with pytest.raises(LedgerApiError, match="UNAVAILABLE"):
                plain.info()
    finally:
        srv.stop(grace=0)
