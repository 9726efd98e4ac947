"""Appends are atomic and serialised: crashes leave the chain valid, concurrent writers never fork it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sentinel.ledger.crypto import Ed25519PrivateKey, generate_private_key, save_private_key
from sentinel.ledger.entries import AppendRequest
from sentinel.ledger.exceptions import ReadOnlyLedgerError, SignerMismatchError, UntrustedKeyError
from sentinel.ledger.store import Ledger
from sqlalchemy import event


class _InjectedCrash(RuntimeError):
    pass


def _round(i: int) -> AppendRequest:
    return AppendRequest("round_started", "coordinator", {"round": i})


def test_exception_before_commit_leaves_chain_and_count_unchanged(filled: Ledger) -> None:
    before = filled.count()

    def crash(conn) -> None:  # type: ignore[no-untyped-def]
        raise _InjectedCrash("disk on fire")

    event.listen(filled.engine, "commit", crash)
    try:
        with pytest.raises(_InjectedCrash):
            filled.append_many([_round(i) for i in range(5)])
    finally:
        event.remove(filled.engine, "commit", crash)
    assert filled.count() == before
    assert filled.verify().ok
    assert filled.append("round_started", "coordinator", {"round": 9}).seq == before


WRITER = str(Path(__file__).with_name("_writer.py"))


def test_process_killed_mid_append_leaves_chain_valid(filled: Ledger, signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    key_path = str(save_private_key(signer, tmp_path / "coordinator.pem"))
    before = filled.count()
    child = subprocess.run([sys.executable, WRITER, "crash", filled.url, key_path], timeout=120, capture_output=True)
    assert child.returncode == 17, child.stderr.decode()
    assert filled.count() == before
    assert filled.verify().ok
    assert filled.append("round_started", "coordinator", {"round": 9}).seq == before


def test_concurrent_threads_never_fork_the_chain(db_url: str, signer: Ed25519PrivateKey) -> None:
    """Threads with their own Ledger (own connections) and threads sharing one append at once."""
    shared = Ledger(db_url, signer)
    ledgers = [shared, shared, Ledger(db_url, signer), Ledger(db_url, signer)]
    start = threading.Barrier(len(ledgers))
    errors: list[BaseException] = []

    def write(led: Ledger, worker: int) -> None:
        try:
            start.wait(10)
            for i in range(10):
                led.append("update_accepted", "coordinator", {"node": str(worker), "round": i})
                led.append_many([_round(100 * worker + i), _round(100 * worker + i)])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(led, w)) for w, led in enumerate(ledgers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert shared.count() == len(ledgers) * 30
    assert [e.seq for e in shared.entries(0, 1000)] == list(range(len(ledgers) * 30))
    assert shared.verify().ok
    for led in ledgers[1:]:
        led.close()


def test_concurrent_processes_never_fork_the_chain(db_url: str, signer: Ed25519PrivateKey, tmp_path: Path) -> None:
    key_path = str(save_private_key(signer, tmp_path / "coordinator.pem"))
    led = Ledger(db_url, signer)  # creates the tables before the writers race
    go = tmp_path / "go"
    workers = [
        subprocess.Popen([sys.executable, WRITER, "append", db_url, key_path, str(w), str(go)], stderr=subprocess.PIPE)
        for w in range(3)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{w}").exists() for w in range(3)) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    outcomes = [(w.wait(120), w.stderr.read().decode()) for w in workers]  # type: ignore[union-attr]
    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert led.count() == 3 * 30
    per_worker = {str(w): len(led.entries(0, 1000, "update_accepted", str(w))) for w in range(3)}
    assert per_worker == {"0": 10, "1": 10, "2": 10}
    assert led.verify().ok


def test_read_only_ledger_refuses_appends(filled: Ledger) -> None:
    reader = Ledger(filled.url)
    with pytest.raises(ReadOnlyLedgerError):
        reader.append("round_started", "coordinator", {"round": 1})
    assert reader.public_key_b64 == filled.public_key_b64
    with pytest.raises(UntrustedKeyError, match="never trusted"):
        reader.verify()  # the key the database records about itself is not a trust anchor
    assert reader.verify(filled.public_key_b64).ok


def test_another_coordinator_key_cannot_extend_the_chain(filled: Ledger) -> None:
    with pytest.raises(SignerMismatchError):
        Ledger(filled.url, generate_private_key())


def test_open_creates_the_coordinator_key_once_and_reuses_it(tmp_path: Path) -> None:
    url, key_path = f"sqlite:///{tmp_path / 'run' / 'ledger.db'}", tmp_path / "keys" / "coordinator.pem"
    with Ledger.open(url, key_path) as first:
        first.append("round_started", "coordinator", {"round": 1})
        key = first.public_key_b64
    assert key_path.stat().st_mode & 0o777 == 0o600
    with Ledger.open(url, key_path) as again:
        assert again.public_key_b64 == key
        again.append("round_started", "coordinator", {"round": 2})
        assert again.verify().ok and again.count() == 2
