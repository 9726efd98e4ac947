"""Read commands straight against a governance database (``--db``), as a user inspecting a run does."""

from __future__ import annotations

from sentinel.governance.store import GovernanceStore
from sentinel.server.cli import app
from typer.testing import CliRunner


def test_reads_work_on_a_database_file_without_a_server(governor, sqlite_url: str) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    nodes = runner.invoke(app, ["governance", "nodes", "--db", sqlite_url])
    assert nodes.exit_code == 0, nodes.output
    assert "101" in nodes.output and "central" in nodes.output

    allowed = runner.invoke(app, ["governance", "check", "202", "adapt", "layer.0.head.0", "--db", sqlite_url])
    assert allowed.exit_code == 0 and "allowed" in allowed.output
    # The default policy keeps edge nodes off the heads of layers 0-1.
    denied = runner.invoke(app, ["governance", "check", "101", "adapt", "layer.0.head.0", "--db", sqlite_url])
    assert denied.exit_code == 2 and "denied" in denied.output

    listed = runner.invoke(app, ["governance", "contracts", "--db", sqlite_url, "--pattern", "layer.2.head.*", "--json"])
    assert listed.exit_code == 0, listed.output
    assert "layer.2.head.3" in listed.output and "layer.1.head.0" not in listed.output


def test_a_database_without_contracts_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    GovernanceStore(tmp_path / "empty.db").close()
    result = CliRunner().invoke(app, ["governance", "contracts", "--db", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code != 0
    assert "no consent contracts" in result.output


def test_a_database_that_does_not_exist_is_refused_and_not_created(tmp_path) -> None:  # type: ignore[no-untyped-def]
    typo = tmp_path / "governance.dbb"
    for command in (["contracts"], ["nodes"], ["check", "1", "adapt", "classifier"]):
        result = CliRunner().invoke(app, ["governance", *command, "--db", str(typo)])
        assert result.exit_code == 1, result.output
        assert f"no governance database at {typo}" in result.output and "Traceback" not in result.output
    assert not typo.exists()
