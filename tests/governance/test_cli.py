"""The `sentinel governance` and `sentinel keys` commands, end to end against a real service."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
import typer
from sentinel.governance.cli import app as governance_app
from sentinel.governance.cli import keys_app
from sentinel.governance.service import serve
from sentinel.ledger.crypto import load_private_key, public_key_b64
from sentinel.ledger.store import Ledger
from typer.testing import CliRunner

runner = CliRunner()

# Mounted as `sentinel` mounts them (server/cli.py), without importing the model stack.
sentinel = typer.Typer()
sentinel.add_typer(governance_app, name="governance")
sentinel.add_typer(keys_app, name="keys")


def app_invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(sentinel, ["governance", *args])


def keys_invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(sentinel, ["keys", *args])


def _ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 0, result.output
    return result.output


def _keypair(tmp_path: Path, name: str) -> tuple[Path, str]:
    out = tmp_path / f"{name}.pem"
    output = _ok(keys_invoke("generate", "--out", str(out), "--public-out", str(tmp_path / f"{name}.pub")))
    public = (tmp_path / f"{name}.pub").read_text().strip()
    assert public in output.replace("\n", "")
    return out, public


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    out, public = _keypair(tmp_path, "node")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert public_key_b64(load_private_key(out)) == public
    again = keys_invoke("generate", "--out", str(out))
    assert again.exit_code == 1 and "exists" in again.output


def test_help_on_every_command() -> None:
    for args in ([], ["propose"], ["propose", "grant"], ["vote"], ["serve"], ["check"], ["contracts"], ["init"]):
        assert app_invoke(*args, "--help").exit_code == 0
    assert keys_invoke("generate", "--help").exit_code == 0


@pytest.mark.slow
def test_bootstrap_propose_vote_and_query_through_the_cli(tmp_path: Path) -> None:
    db, ledger_db, coordinator = str(tmp_path / "gov.db"), f"sqlite:///{tmp_path / 'ledger.db'}", str(tmp_path / "coord.pem")
    local = ["--db", db, "--ledger-db", ledger_db, "--ledger-key", coordinator]
    _ok(app_invoke("init", "--model", "tiny", "--layers", "2", "--heads", "2", *local))
    refused = app_invoke("init", "--model", "tiny", "--layers", "2", "--heads", "2", *local)
    assert refused.exit_code == 1 and "already installed" in refused.output
    keys = {}
    for node, role in (("1", "edge"), ("2", "gpu"), ("3", "central")):
        keys[node], public = _keypair(tmp_path, f"n{node}")
        _ok(app_invoke("register", node, "--role", role, "--public-key", public, *local))

    with Ledger.open(ledger_db, coordinator) as ledger, serve(db, ledger, port=0) as server:
        target = ["--target", server.target]
        table = _ok(app_invoke("contracts", *target, "--pattern", "layer.0.*"))
        assert "layer.0.head.1" in table and "classifier" not in table
        denied = app_invoke("check", "1", "adapt", "layer.0.head.0", *target)
        assert denied.exit_code == 2 and "role edge not granted adapt" in denied.output
        assert "central" in _ok(app_invoke("nodes", *target))

        def signer(node: str) -> list[str]:
            return ["--node-id", node, "--key", str(keys[node]), *target]

        submitted = _ok(app_invoke("propose", "grant", "-o", "adapt", "-c", "layer.0.head.*", "-r", "edge", *signer("2")))
        proposal_id = re.search(r"proposal (\w+)", submitted).group(1)  # type: ignore[union-attr]
        _ok(app_invoke("vote", proposal_id, "yes", *signer("2")))
        assert "executed" in _ok(app_invoke("vote", proposal_id, "yes", *signer("3")))
        assert "granted to role edge" in _ok(app_invoke("check", "1", "adapt", "layer.0.head.0", *target))
        shown = _ok(app_invoke("proposals", proposal_id, *target))
        assert "executed" in shown and "yes" in shown
        duplicate = app_invoke("vote", proposal_id, "no", *signer("1"))
        assert duplicate.exit_code == 1 and "closed" in duplicate.output
        bad = app_invoke("propose", "set-parameter", "colour", "1", *signer("2"))
        assert bad.exit_code == 1 and "INVALID_ARGUMENT" in bad.output
        assert [e.kind.value for e in ledger.entries(kind="execution")] == ["execution"]
