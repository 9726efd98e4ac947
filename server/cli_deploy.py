"""``sentinel server``, ``sentinel node`` and ``sentinel run``: the federation on Flower's deployment engine."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from sentinel.server.cli_simulate import ConfigFileOption, RunConfigOption, fail, given_flags, layered_config

console = Console()

TlsCert = Annotated[Optional[Path], typer.Option(help="Server certificate chain (PEM), e.g. from `sentinel keys server-cert`.", dir_okay=False)]
TlsKey = Annotated[Optional[Path], typer.Option(help="Private key of --tls-cert (PEM).", dir_okay=False)]
TlsCa = Annotated[Optional[Path], typer.Option(help="CA certificate that signed --tls-cert (what nodes and `sentinel run` trust).", dir_okay=False)]
Insecure = Annotated[bool, typer.Option("--insecure", help="Plaintext, no TLS (local experiments only; refused unless given).")]


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _tls(cert: Path | None, key: Path | None, ca: Path | None, insecure: bool) -> Any:
    """The TLS files, or None with ``--insecure``; refuses neither or both."""
    from sentinel.server.deploy_server import TlsFiles

    given = [p is not None for p in (cert, key, ca)]
    if insecure and any(given):
        raise ValueError("--insecure and --tls-* exclude each other")
    if insecure:
        return None
    if not all(given):
        raise ValueError("give --tls-cert, --tls-key and --tls-ca (make them with `sentinel keys federation`), or --insecure for plaintext")
    return TlsFiles(cert, key, ca).check()  # type: ignore[arg-type]


def server_command(
    data_dir: Annotated[Path, typer.Option(help="The federation's directory: run/ (ledger, governance, checkpoints), node-cards/, logs/.")] = Path("sentinel-data"),
    host: Annotated[str, typer.Option(help="Interface for the SuperLink and the services (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="SuperLink port: Fleet API (nodes) and Control API (runs).")] = 9093,
    ledger_port: Annotated[int, typer.Option(help="LedgerService port (0: any free port).")] = 50061,
    governance_port: Annotated[int, typer.Option(help="GovernanceService port (0: any free port).")] = 50052,
    tls_cert: TlsCert = None,
    tls_key: TlsKey = None,
    tls_ca: TlsCa = None,
    insecure: Insecure = False,
    node_auth: Annotated[bool, typer.Option(help="SuperNode authentication (needs TLS): only nodes with an admitted card connect.")] = True,
    node_cards: Annotated[Optional[Path], typer.Option(help="Directory of admitted node cards (*.card.json). Default: DATA_DIR/node-cards.")] = None,
    superlink_db: Annotated[Optional[Path], typer.Option(help="SuperLink state database file. Default: DATA_DIR/superlink.db.")] = None,
    ledger_db: Annotated[Optional[str], typer.Option(help="Ledger database URL the services read. Default: the run directory's ledger.db.")] = None,
    governance_db: Annotated[Optional[str], typer.Option(help="Governance database URL. Default: the run directory's governance.db.")] = None,
    sync_interval: Annotated[float, typer.Option(help="Seconds between key-registry reconciliations.")] = 5.0,
) -> None:
    """Start the coordinator host: SuperLink, ledger and governance services, SuperNode key sync. Stops on SIGINT/SIGTERM."""
    from sentinel.server.deploy_server import CoordinatorServer, ServerSettings

    _logging()
    try:
        tls = _tls(tls_cert, tls_key, tls_ca, insecure)
        settings = ServerSettings(
            data_dir=data_dir, host=host, port=port, ledger_port=ledger_port, governance_port=governance_port, tls=tls,
            node_auth=node_auth, node_cards=node_cards, superlink_db=superlink_db, ledger_db=ledger_db,
            governance_db=governance_db, sync_interval=sync_interval,
        )
        server = CoordinatorServer(settings).start()
    except (ValueError, OSError, RuntimeError) as e:
        raise fail(console, str(e)) from e
    ready = f"ready: SuperLink {settings.link.address}, ledger :{server.ledger.port}, governance {server.governance.target}"
    logging.getLogger("sentinel.server").info(ready)
    raise typer.Exit(server.serve())


def node_command(
    key_file: Annotated[Optional[Path], typer.Option(help="This node's Ed25519 signing key (PEM; `sentinel keys node`). Required.", dir_okay=False)] = None,
    superlink: Annotated[str, typer.Option(help="The coordinator's SuperLink address HOST:PORT.")] = "127.0.0.1:9093",
    ca: Annotated[Optional[Path], typer.Option(help="CA certificate that signed the coordinator's certificate.", dir_okay=False)] = None,
    insecure: Insecure = False,
    auth_key: Annotated[Optional[Path], typer.Option(help="ECDSA SuperNode key (OpenSSH). Default: KEY_FILE's <name>.auth beside it, if there.", dir_okay=False)] = None,
    role: Annotated[Optional[str], typer.Option(help="edge | gpu | central (must match the run's role for this partition).")] = None,
    partition_id: Annotated[int, typer.Option(help="This node's partition of the run's data.")] = 0,
    num_partitions: Annotated[int, typer.Option(help="Number of partitions (the run's nodes).")] = 1,
    dataset: Annotated[Optional[str], typer.Option(help="This node's data spec (node config `dataset`).")] = None,
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA rank this node trains at (node config `lora-rank`).")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's runtime API (one per node on a host).")] = 9094,
    edge_bundle_dir: Annotated[
        Optional[Path], typer.Option(help="Edge nodes: where to keep delivered edge bundles (default ~/.cache/sentinel/edge-bundles/<key id>).", file_okay=False)
    ] = None,
    state_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Where to keep this node's state across restarts: the error-feedback remainder a node below the frame's "
            "rank carries to its next update (default: the user cache, ~/.cache/sentinel/...). Put it on a persistent volume.",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Start a SuperNode for this machine (this process becomes it). Refuses to start without a key file."""
    from sentinel.server.deploy_node import NodeSettings

    try:
        settings = NodeSettings(
            key_file=key_file, superlink=superlink, ca=ca, insecure=insecure, auth_key=auth_key, role=role,
            partition_id=partition_id, num_partitions=num_partitions, dataset=dataset, lora_rank=lora_rank, device=device, port=port,
            edge_bundle_dir=edge_bundle_dir, state_dir=state_dir,
        ).checked()
    except ValueError as e:
        raise fail(console, str(e)) from e
    argv, env = settings.argv(), settings.env()
    console.print(f"SuperNode for partition {partition_id} ({role or 'role from the run'}) → {superlink} "
                  f"({'plaintext' if insecure else 'TLS'}, {'authenticated' if settings.auth_key else 'no SuperNode key'})", highlight=False)
    os.execve(argv[0], argv, env)


def run_command(
    ctx: typer.Context,
    superlink: Annotated[str, typer.Option(help="The SuperLink address HOST:PORT.")] = "127.0.0.1:9093",
    ca: Annotated[Optional[Path], typer.Option(help="CA certificate that signed the SuperLink's certificate.", dir_okay=False)] = None,
    insecure: Insecure = False,
    config_file: ConfigFileOption = None,
    run_config: RunConfigOption = None,
    model: Annotated[Optional[str], typer.Option(help="Base model: preset, local dir or HF id.")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset spec.")] = "builtin:reviews",
    partition: Annotated[str, typer.Option(help="iid | by-domain | dirichlet")] = "by-domain",
    dirichlet_alpha: Annotated[float, typer.Option(help="α of the Dirichlet label split.")] = 0.5,
    nodes: Annotated[int, typer.Option(help="Number of nodes the run needs.")] = 6,
    edge_fraction: Annotated[float, typer.Option(help="Fraction of nodes that are edge devices.")] = 0.33,
    roles: Annotated[Optional[str], typer.Option(help="Comma-separated role per partition (edge,gpu,central).")] = None,
    rounds: Annotated[int, typer.Option(help="Maximum number of rounds.")] = 10,
    aggregation: Annotated[str, typer.Option(help="exact | naive")] = "exact",
    patience: Annotated[int, typer.Option(help="Rounds without improvement before early stopping.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    policy: Annotated[Optional[Path], typer.Option(help="Consent policy file (a path on the coordinator's host).", dir_okay=False)] = None,
    consent: Annotated[bool, typer.Option(help="Enforce consent contracts on every update.")] = True,
    contribution: Annotated[str, typer.Option(help="Contribution scores: loo | shapley | none.")] = "loo",
    token_budget: Annotated[int, typer.Option(help="Tokens distributed per round.")] = 1000,
    out: Annotated[Optional[Path], typer.Option(help="Where to write the report here. Default: runs/<timestamp>.")] = None,
    server_out: Annotated[str, typer.Option(help="Run directory on the coordinator's host (relative: under its --data-dir).")] = "",
    resume: Annotated[bool, typer.Option(help="Continue the run in --server-out from its last checkpoint.")] = False,
    node_wait: Annotated[float, typer.Option(help="Seconds the coordinator waits for the run's nodes before giving up.")] = 600.0,
) -> None:
    """Submit the federation to a running SuperLink, follow it, and write its report into --out."""
    from click.core import ParameterSource
    from sentinel.server.cli_simulate import default_out
    from sentinel.server.control import Link
    from sentinel.server.deploy_run import submit_and_follow, write_local_report
    from sentinel.server.run_config import to_run_config

    if insecure == (ca is not None):
        raise fail(console, "give --ca (the CA that signed the SuperLink's certificate), or --insecure for plaintext")
    config, run_keys = layered_config(console, config_file, run_config, given_flags(ctx, locals()))
    keys = {"out": server_out, "resume": resume, "node-wait-s": node_wait}
    for key, param in (("out", "server_out"), ("resume", "resume"), ("node-wait-s", "node_wait")):
        if key in run_keys and ctx.get_parameter_source(param) is not ParameterSource.COMMANDLINE:
            keys[key] = run_keys[key]  # from the file or --run-config, unless the flag was given
    out_dir = out or default_out()
    console.print(f"[bold]Sentinel run[/]: {config.model} on {config.dataset}, {config.nodes} nodes, {config.rounds} rounds "
                  f"→ {superlink} ({'plaintext' if insecure else 'TLS'}); report → {out_dir}", highlight=False)

    def show(line: str) -> bool:  # the coordinator's own lines, Flower's errors
        return any(m in line for m in ("waiting for nodes", "nodes connected", "nodes admitted", "round ", "run directory", "ERROR", "Error", "refused"))

    with tempfile.TemporaryDirectory(prefix="sentinel-run-") as work:
        try:
            report = submit_and_follow(Link(superlink, ca), to_run_config(config, **keys), Path(work), lambda s: console.print(s, highlight=False, markup=False), show=show)
        except RuntimeError as e:
            raise fail(console, str(e)) from e
    write_local_report(out_dir, report)
    final = report.get("final", {})
    console.print(f"done: {final.get('round')} rounds, final accuracy {final.get('accuracy', float('nan')):.4f}; "
                  f"report: {out_dir / 'report.json'}", highlight=False)


__all__ = ["node_command", "run_command", "server_command"]
