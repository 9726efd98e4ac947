"""Ledger throughput benchmark (a script, not a test): append rate and verify time on SQLite and PostgreSQL.

    python tests/benchmarks/ledger_throughput.py [--entries 100000] [--batch 1000] [--single 2000]

Writes a realistic history: 10 registered nodes, then rounds of one
``round_started``, 10 node-signed ``update_submitted``, 10 verdicts, 8 accepted
and 2 rejected updates, 8 contribution scores, a token distribution and a
checkpoint (41 entries, a quarter of them node-signed, each signature checked on
append). Node signatures are made before the clock starts (that is the nodes'
work). Targets: >= 5,000 appends/s batched and verify <= 5 s for 100k entries
on SQLite. PostgreSQL (``SENTINEL_TEST_PG_URL``) is skipped when no server answers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sentinel.ledger.crypto import generate_private_key, public_key_b64
from sentinel.ledger.entries import AppendRequest
from sentinel.ledger.kinds import EntryKind, score_text
from sentinel.ledger.recorder import update_submitted_payload
from sentinel.ledger.signing import sign_payload
from sentinel.ledger.store import Ledger
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("SENTINEL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
NODES = [str(2**63 + 17 * i) for i in range(10)]
console = Console()


def history(entries: int) -> list[AppendRequest]:
    """``entries`` append requests: registrations, then whole rounds (node signatures precomputed)."""
    keys = {node: generate_private_key() for node in NODES}
    out = [
        AppendRequest(EntryKind.NODE_REGISTERED, "coordinator", {"node": n, "role": "edge", "public_key": public_key_b64(k)})
        for n, k in keys.items()
    ]
    rnd = 0
    while len(out) < entries:
        rnd += 1
        out.append(AppendRequest(EntryKind.ROUND_STARTED, "coordinator", {"round": rnd, "config": {"lr": 0.0005}}))
        for i, (node, key) in enumerate(keys.items()):
            payload = update_submitted_payload(node, rnd, f"{rnd * 100 + i:064x}", 100 + i)
            out.append(AppendRequest(EntryKind.UPDATE_SUBMITTED, node, payload, sign_payload(key, payload)))
        for i, node in enumerate(NODES):
            verdict = {"node": node, "round": rnd, "validator": NODES[i - 1], "accept": i < 8, "reason": ""}
            out.append(AppendRequest(EntryKind.VALIDATION_VERDICT, "coordinator", verdict))
        for i, node in enumerate(NODES):
            kind = EntryKind.UPDATE_ACCEPTED if i < 8 else EntryKind.UPDATE_REJECTED
            out.append(AppendRequest(kind, "coordinator", {"node": node, "round": rnd, "reason": ""}))
        for i, node in enumerate(NODES[:8]):
            score = {"node": node, "round": rnd, "score": score_text(0.01 * (i + 1)), "method": "loo"}
            out.append(AppendRequest(EntryKind.CONTRIBUTION, "coordinator", score))
        allocations = {node: 10 + i for i, node in enumerate(NODES[:8])}
        out.append(AppendRequest(EntryKind.TOKENS, "coordinator", {"round": rnd, "allocations": allocations}))
        out.append(AppendRequest(EntryKind.CHECKPOINT, "coordinator", {"round": rnd, "adapter_hash": f"{rnd:064x}"}))
    return out[:entries]


@contextmanager
def sqlite_database() -> Iterator[str]:
    """A fresh SQLite file."""
    with tempfile.TemporaryDirectory() as tmp:
        yield f"sqlite:///{Path(tmp) / 'bench.db'}"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh schema on the PostgreSQL server, dropped afterwards."""
    schema = f"ledger_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def measure(url: str, requests: list[AppendRequest], batch: int, single: int) -> dict[str, float]:
    """Single-append rate, batched-append rate (all of ``requests``) and verify times."""
    signer = generate_private_key()
    figures: dict[str, float] = {}
    with Ledger(url, signer) as led, Progress(console=console, transient=True) as progress:
        task = progress.add_task("batched appends", total=len(requests))
        start, cpu = time.perf_counter(), time.process_time()
        for i in range(0, len(requests), batch):
            led.append_many(requests[i : i + batch])
            progress.advance(task, len(requests[i : i + batch]))
        figures["batched_appends_per_s"] = len(requests) / (time.perf_counter() - start)
        figures["batched_append_cpu_us"] = (time.process_time() - cpu) / len(requests) * 1e6
        figures["entries"] = led.count()

        with console.status("verifying..."):
            start, cpu = time.perf_counter(), time.process_time()
            report = led.verify()
            figures["verify_s"] = time.perf_counter() - start
            figures["verify_cpu_s"] = time.process_time() - cpu
            assert report.ok, report
            start = time.perf_counter()
            assert led.verify(node_signatures=True).ok
            figures["verify_with_node_signatures_s"] = time.perf_counter() - start

        task = progress.add_task("single appends", total=single)
        start = time.perf_counter()
        for request in requests[10 : 10 + single]:  # past the registrations: the same mix
            led.append(request.kind, request.actor, request.payload, node_signature=request.node_signature)
            progress.advance(task)
        figures["single_appends_per_s"] = single / (time.perf_counter() - start)
    return figures


def main() -> None:
    """Run the benchmark on each available backend and print (and optionally save) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single", type=int, default=2000)
    parser.add_argument("--json-out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    with console.status("preparing entries (signing submissions as the nodes would)..."):
        requests = history(args.entries)
    signed = sum(r.node_signature is not None for r in requests)
    console.print(f"{len(requests)} entries, {signed} node-signed")
    results: dict[str, dict[str, float] | str] = {}
    for name, database in (("sqlite", sqlite_database), ("postgresql", postgres_database)):
        try:
            with database() as url:
                results[name] = measure(url, requests, args.batch, args.single)
        except Exception as e:  # a missing PostgreSQL server: report and go on
            if name == "sqlite":
                raise
            results[name] = f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}"

    table = Table(title=f"ledger throughput ({len(requests)} entries, batches of {args.batch})")
    columns = (
        "backend", "batched/s", "CPU µs/entry", "single/s", "verify s", "verify CPU s", "+ node sigs s",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for name, figures in results.items():
        if isinstance(figures, str):
            table.add_row(name, figures, *[""] * (len(columns) - 2))
            continue
        table.add_row(
            name,
            f"{figures['batched_appends_per_s']:,.0f}",
            f"{figures['batched_append_cpu_us']:.0f}",
            f"{figures['single_appends_per_s']:,.0f}",
            f"{figures['verify_s']:.2f}",
            f"{figures['verify_cpu_s']:.2f}",
            f"{figures['verify_with_node_signatures_s']:.2f}",
        )
    console.print(table)
    console.print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    sqlite = results["sqlite"]
    assert isinstance(sqlite, dict)
    console.print(
        f"targets on SQLite: batched >= 5,000/s: {'met' if sqlite['batched_appends_per_s'] >= 5000 else 'MISSED'}; "
        f"verify <= 5 s: {'met' if sqlite['verify_s'] <= 5 else 'MISSED'}"
    )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
