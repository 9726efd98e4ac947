"""`sentinel ledger ...`: the same answers directly from the database and through the API."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sentinel.ledger.anchor import publish_trust_anchor
from sentinel.ledger.cli import app
from sentinel.ledger.client import LedgerClient
from sentinel.ledger.service import LedgerServer, serve
from sentinel.ledger.store import Ledger
from typer.testing import CliRunner

runner = CliRunner()


@pytest.fixture
def db(filled: Ledger) -> Ledger:
    return filled


@pytest.fixture
def server(filled: Ledger) -> Iterator[LedgerServer]:
    srv = serve(filled.url, port=0)
    yield srv
    srv.stop(grace=0)


def _sources(filled: Ledger, server: LedgerServer) -> list[list[str]]:
    return [["--db", filled.url], ["--target", f"127.0.0.1:{server.port}"]]


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    return result.exit_code, result.output


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:  # the CLI is backend-agnostic: SQLite is enough here
    return request.getfixturevalue("sqlite_url")


def test_entries_table_and_json(filled: Ledger, server: LedgerServer) -> None:
    for source in _sources(filled, server):
        code, out = _run("entries", *source, "--kind", "update_submitted", "--limit", "3")
        assert code == 0, out
        rows = [line for line in out.splitlines() if "│ update_submitted" in line]
        assert len(rows) == 3 and "checkpoint" not in out, out
        code, out = _run("entries", *source, "--start", "20", "--json")
        lines = [json.loads(line) for line in out.splitlines()]
        assert [e["seq"] for e in lines] == [20, 21, 22, 23, 24]
        assert lines[-1]["payload"]["adapter_hash"] == f"{2:064x}"


def test_node_and_balances(filled: Ledger, server: LedgerServer, node_keys) -> None:  # type: ignore[no-untyped-def]
    first = list(node_keys)[0]
    for source in _sources(filled, server):
        code, out = _run("node", first, *source)
        assert code == 0, out
        assert re.search(r"submitted / accepted / rejected\s*│\s*2 / 2 / 0", out), out
        assert "token balance" in out and "50" in out
        code, out = _run("balances", *source)
        assert code == 0 and re.search(rf"{first}\s*│\s*50", out) and re.search(r"total\s*│\s*200", out), out


def test_verify_exit_code_and_first_bad_entry(filled: Ledger, server: LedgerServer, sql, tmp_path) -> None:  # type: ignore[no-untyped-def]
    publish_trust_anchor(filled, tmp_path)  # the run directory: coordinator.pub and ledger_head.json beside ledger.db
    trusted = ["--public-key", str(tmp_path / "coordinator.pub")]
    sources = [["--db", filled.url], ["--target", f"127.0.0.1:{server.port}", *trusted]]
    for source in sources:
        code, out = _run("verify", *source)
        assert code == 0 and "chain OK" in out and "25 entries" in out, out
    sql(filled, "UPDATE ledger_entry SET payload = payload || ' ' WHERE seq = 11")
    for source in sources:
        code, out = _run("verify", *source)
        assert code == 1, out
        assert "BROKEN at entry 11" in out and "hash mismatch" in out and "first bad entry" in out


def test_source_options_are_checked(filled: Ledger, tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out = _run("balances")
    assert code == 2 and "exactly one of --db" in out
    code, out = _run("balances", "--db", str(tmp_path / "missing.db"))
    assert code == 2 and "no ledger database" in out
    bare_path = filled.url.removeprefix("sqlite:///")
    assert _run("verify", "--db", bare_path, "--public-key", filled.public_key_b64)[0] == 0  # type: ignore[arg-type]


def test_serve_command_answers_until_interrupted(filled: Ledger) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ledger.cli import app; app()", "serve", "--db", filled.url, "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        port = int(re.search(r"127\.0\.0\.1:(\d+)", line).group(1))  # type: ignore[union-attr]
        with LedgerClient(f"127.0.0.1:{port}", timeout=10) as client:
            assert client.info().count == 25
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
