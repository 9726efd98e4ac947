"""Fixtures shared by every test folder: a fresh PostgreSQL schema per test, Flower's ServerApp identity.

PostgreSQL tests take the server from ``SENTINEL_TEST_PG_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). Where no server answers (a
laptop) they skip and say why; with ``SENTINEL_REQUIRE_PG=1`` (set by ``.ci/run``)
a missing server is a failure instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text

PG_URL = os.environ.get("SENTINEL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_pg_problem: list[str] = []


def _pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used (None when it can); probed once per session."""
    if not _pg_problem:
        try:
            engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            engine.dispose()
            _pg_problem.append("")
        except Exception as e:  # any failure to connect means "skip", with the reason
            _pg_problem.append(f"no PostgreSQL server answers at {PG_URL} (set SENTINEL_TEST_PG_URL): {type(e).__name__}: {e}"[:300])
    return _pg_problem[0] or None


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL schema, dropped afterwards (skips when there is no server)."""
    reason = _pg_unavailable()
    if reason:
        if os.environ.get("SENTINEL_REQUIRE_PG") == "1":
            pytest.fail(f"SENTINEL_REQUIRE_PG=1 but {reason}")
        pytest.skip(reason)
    prefix = request.node.path.parent.name  # ledger, governance, ...
    schema = f"{prefix}_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def inside_a_server_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower messages take their run and task ids from the ServerApp that builds them: set them as one does."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
