"""`sentinel governance ...` and `sentinel keys ...` commands.

Query and act through the GovernanceService (``--target``), serve it
(``serve``), and bootstrap a federation's governance database locally
(``init`` installs the contracts derived from a policy, ``register`` adds a
founding node); every act is recorded on the ledger.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sentinel.governance.cli_common import (
    DEFAULT_DB,
    DEFAULT_LEDGER_DB,
    DEFAULT_TARGET,
    Db,
    KeyPath,
    LedgerDb,
    LedgerKey,
    NodeId,
    ReadDb,
    RootCert,
    Target,
    console,
    friendly_errors,
    make_client,
    make_reader,
    open_ledger,
)
from sentinel.governance.cli_propose import propose_app
from sentinel.governance.contracts import OPERATIONS, ContractSet, Grant
from sentinel.protos.vocabulary import ROLES, standard_components

app = typer.Typer(help="Consent contracts, nodes, proposals and votes.", no_args_is_help=True)
app.add_typer(propose_app, name="propose")

keys_app = typer.Typer(help="Node key pairs (Ed25519).", no_args_is_help=True)


def _grant_text(grant: Grant) -> str:
    if grant.is_empty():
        return "[dim]-[/]"
    parts = ["[bold]everyone[/]"] if grant.everyone else []
    parts += sorted(grant.roles)
    parts += [f"node:{n}" for n in sorted(grant.nodes)]
    return ", ".join(parts)


_AGENCY_STYLE = {"active": "green", "resting": "yellow", "withdrawn": "red"}


def _contracts_table(contracts: ContractSet) -> Table:
    table = Table(title=f"Consent contracts of {contracts.model} (set version {contracts.version})")
    table.add_column("component", style="cyan", no_wrap=True)
    table.add_column("agency")
    for op in OPERATIONS:
        table.add_column(op)
    table.add_column("expires")
    table.add_column("v", justify="right")
    for c in contracts:
        style = _AGENCY_STYLE[c.agency.state]
        agency = f"[{style}]{c.agency.state}[/]" + (f" ({c.agency.reason})" if c.agency.reason else "")
        expires = c.expires_at.isoformat() if c.expires_at else "[dim]never[/]"
        table.add_row(c.component, agency, *(_grant_text(c.grant(op)) for op in OPERATIONS), expires, str(c.version))
    return table


# ---------------------------------------------------------------------- serve and bootstrap
@app.command()
@friendly_errors
def serve(
    db: Db = DEFAULT_DB,
    ledger_db: LedgerDb = DEFAULT_LEDGER_DB,
    ledger_key: LedgerKey = Path("coordinator.pem"),
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 50052,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain: serve TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    tls_client_ca: Annotated[Path | None, typer.Option(help="PEM CA: also require client certificates.")] = None,
) -> None:
    """Serve the GovernanceService until SIGINT or SIGTERM (a port in use is refused)."""
    from sentinel.governance.service import TLSConfig
    from sentinel.governance.service import serve as start
    from sentinel.ledger import serving

    if (tls_cert is None) != (tls_key is None):
        raise ValueError("`--tls-cert` and `--tls-key` go together")
    tls = TLSConfig(tls_cert, tls_key, tls_client_ca) if tls_cert is not None and tls_key is not None else None
    server = start(db, open_ledger(ledger_db, ledger_key), host=host, port=port, tls=tls)
    console.print(f"governance service on [bold]{server.target}[/] ({'TLS' if tls else 'plaintext'}); Ctrl-C to stop")
    console.file.flush()  # supervisors and scripts read the address from a pipe
    serving.serve_until_signalled(server.stop)  # containers stop with SIGTERM
    console.print("stopped")


@app.command()
@friendly_errors
def init(
    model: Annotated[str, typer.Option(help="Model id the contracts belong to.")],
    layers: Annotated[int, typer.Option(help="Number of transformer layers.")],
    heads: Annotated[int, typer.Option(help="Attention heads per layer.")],
    policy: Annotated[Path | None, typer.Option(help="Policy file (YAML/JSON); default: the shipped policy.")] = None,
    steward: Annotated[str, typer.Option(help="Steward of the components.")] = "sentinel-federation",
    output: Annotated[str, typer.Option(help="Output component: classifier, lm_head or none.")] = "classifier",
    db: Db = DEFAULT_DB,
    ledger_db: LedgerDb = DEFAULT_LEDGER_DB,
    ledger_key: LedgerKey = Path("coordinator.pem"),
) -> None:
    """Derive a model's contracts from a policy and install them (bootstrap act, recorded on the ledger)."""
    from sentinel.governance.governor import Governor
    from sentinel.governance.policy_file import derive_contracts, load_default_policy, load_policy
    from sentinel.governance.store import GovernanceStore

    if output not in ("classifier", "lm_head", "none"):
        raise ValueError("`--output` must be classifier, lm_head or none")
    parsed = load_policy(policy) if policy is not None else load_default_policy()
    components = standard_components(layers, heads, output=None if output == "none" else output)  # type: ignore[arg-type]
    contracts = derive_contracts(parsed, components, steward, model=model)
    governor = Governor(GovernanceStore(db), open_ledger(ledger_db, ledger_key))
    installed = governor.install_contracts(contracts, cause=f"derived from {policy or 'the default policy'}")
    console.print(f"installed {len(installed)} contracts for {model} (set version {installed.version}, {installed.content_hash()[:16]})")


@app.command()
@friendly_errors
def register(
    node_id: Annotated[str, typer.Argument(help="Node id (Flower node ids as decimal text).")],
    role: Annotated[str, typer.Option(help=f"{', '.join(ROLES)}.")],
    public_key: Annotated[str, typer.Option(help="Base64 Ed25519 public key (from `sentinel keys generate`).")] = "",
    organisation: Annotated[str, typer.Option(help="Organisation running the node.")] = "",
    db: Db = DEFAULT_DB,
    ledger_db: LedgerDb = DEFAULT_LEDGER_DB,
    ledger_key: LedgerKey = Path("coordinator.pem"),
) -> None:
    """Register a founding node directly (bootstrap act by the coordinator, recorded on the ledger)."""
    from sentinel.governance.governor import Governor
    from sentinel.governance.store import GovernanceStore

    if role not in ROLES:
        raise ValueError(f"`--role` {role!r} is not one of {', '.join(ROLES)}")
    governor = Governor(GovernanceStore(db), open_ledger(ledger_db, ledger_key))
    record = governor.bootstrap_node(node_id, role, organisation=organisation, public_key=public_key or None)  # type: ignore[arg-type]
    console.print(f"registered node {record.node_id} as {record.role}")


# ---------------------------------------------------------------------- reads
@app.command()
@friendly_errors
def contracts(
    target: Target = DEFAULT_TARGET,
    pattern: Annotated[str, typer.Option("--pattern", "-p", help="Only components matching this glob.")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the contract set as JSON.")] = False,
    root_cert: RootCert = None,
    db: ReadDb = None,
) -> None:
    """List the consent contracts."""
    with make_reader(target, root_cert, db) as client:
        found = client.list_contracts(pattern)
    if as_json:
        console.print_json(found.to_json())
    else:
        console.print(_contracts_table(found))


@app.command()
@friendly_errors
def check(
    node_id: Annotated[str, typer.Argument(help="Node id.")],
    operation: Annotated[str, typer.Argument(help="adapt, prune, grow or distill.")],
    component: Annotated[str, typer.Argument(help="Component id, e.g. layer.0.head.3.")],
    target: Target = DEFAULT_TARGET,
    at: Annotated[str, typer.Option(help="ISO 8601 time to ask about (default: now).")] = "",
    root_cert: RootCert = None,
    db: ReadDb = None,
) -> None:
    """May NODE_ID perform OPERATION on COMPONENT? Exit code 0 if allowed, 2 if denied."""
    when = datetime.fromisoformat(at) if at else None
    with make_reader(target, root_cert, db) as client:
        decision = client.check_permission(node_id, operation, component, when)  # type: ignore[arg-type]
    verdict = "[green]allowed[/]" if decision.allowed else "[red]denied[/]"
    console.print(f"{verdict}: {decision.reason}")
    if not decision.allowed:
        raise typer.Exit(2)


@app.command()
@friendly_errors
def nodes(
    target: Target = DEFAULT_TARGET,
    include_removed: Annotated[bool, typer.Option("--all", help="Include removed nodes.")] = False,
    root_cert: RootCert = None,
    db: ReadDb = None,
) -> None:
    """List registered nodes."""
    with make_reader(target, root_cert, db) as client:
        records = client.list_nodes(include_removed)
    table = Table(title="Registered nodes")
    for col in ("node", "role", "organisation", "status", "public key", "registered"):
        table.add_column(col)
    for r in records:
        status = "[green]active[/]" if r.active else "[red]removed[/]"
        key = (r.public_key[:12] + "…") if r.public_key else "[dim]none[/]"
        table.add_row(r.node_id, r.role, r.organisation, status, key, r.registered_at.isoformat(timespec="seconds"))
    console.print(table)


@app.command()
@friendly_errors
def proposals(
    proposal_id: Annotated[str | None, typer.Argument(help="Show one proposal with its votes.")] = None,
    status: Annotated[str, typer.Option(help="Only open, executed, rejected or failed.")] = "",
    target: Target = DEFAULT_TARGET,
    root_cert: RootCert = None,
) -> None:
    """List proposals, or show one with its votes."""
    with make_client(target, root_cert) as client:
        if proposal_id is None:
            found = client.list_proposals(status)
            votes: list[Any] = []
        else:
            reply = client.get_proposal(proposal_id)
            found, votes = [reply.proposal], list(reply.votes)
    if proposal_id is None:
        console.print(_proposals_table(found))
        return
    p = found[0]
    from google.protobuf.json_format import MessageToDict

    detail = Table(title=f"Proposal {p.proposal_id}", show_header=False)
    detail.add_column("field", style="bold")
    detail.add_column("value", overflow="fold")
    t = p.tally
    for name, value in (
        ("kind", p.kind), ("title", p.title), ("proposer", p.proposer), ("status", _status(p.status)),
        ("votes", f"yes {t.yes} / no {t.no} / abstain {t.abstain} of {t.eligible} eligible "
                  f"(quorum {t.quorum:g}, majority > {t.majority:g})"),
        ("created", p.created_at), ("deadline", p.deadline), ("closed", p.closed_at or "-"),
        ("outcome", p.outcome or "-"), ("spec", json.dumps(MessageToDict(p.spec))),
    ):
        detail.add_row(name, value)
    console.print(detail)
    vt = Table(title="Votes")
    vt.add_column("voter", no_wrap=True)
    vt.add_column("choice", no_wrap=True)
    vt.add_column("timestamp", no_wrap=True)
    vt.add_column("nonce", overflow="fold")
    for v in votes:
        vt.add_row(v.voter, v.choice, v.timestamp[:19], v.nonce)
    console.print(vt)


_STATUS_STYLE = {"open": "cyan", "executed": "green", "rejected": "yellow", "failed": "red"}


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _proposals_table(found: list[Any]) -> Table:
    table = Table(title="Proposals")
    table.add_column("id", no_wrap=True, style="cyan", min_width=32)  # ids are copied into `vote`: never cut
    table.add_column("kind", overflow="fold")
    table.add_column("status", no_wrap=True, min_width=8)
    table.add_column("y/n/a of", no_wrap=True)
    table.add_column("deadline", overflow="fold")
    table.add_column("title", overflow="fold")
    for p in found:
        t = p.tally
        table.add_row(
            p.proposal_id, p.kind, _status(p.status), f"{t.yes}/{t.no}/{t.abstain} of {t.eligible}",
            p.deadline[:16].replace("T", " "), p.title,
        )
    return table


# ---------------------------------------------------------------------- writes
@app.command()
@friendly_errors
def vote(
    proposal_id: Annotated[str, typer.Argument(help="The proposal to vote on.")],
    choice: Annotated[str, typer.Argument(help="yes, no or abstain.")],
    node_id: NodeId,
    key: KeyPath,
    target: Target = DEFAULT_TARGET,
    root_cert: RootCert = None,
) -> None:
    """Cast a signed vote."""
    if choice not in ("yes", "no", "abstain"):
        raise ValueError(f"`choice` {choice!r} is not one of yes, no, abstain")
    with make_client(target, root_cert, node_id, key) as client:
        p = client.cast_vote(proposal_id, choice)  # type: ignore[arg-type]
    console.print(f"voted {choice} on {p.proposal_id}: now {p.status} ({p.tally.yes}/{p.tally.no}/{p.tally.abstain} of {p.tally.eligible})")


@keys_app.command("generate")
@friendly_errors
def keys_generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the PEM private key (mode 0600).")],
    public_out: Annotated[Path | None, typer.Option(help="Also write the base64 public key here.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing key file.")] = False,
) -> None:
    """Generate an Ed25519 node key pair; prints the base64 public key to register."""
    from sentinel.ledger.crypto import generate_private_key, public_key_b64, save_private_key

    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to overwrite it (the old key is lost)")
    key = generate_private_key()
    save_private_key(key, out)
    public = public_key_b64(key)
    if public_out is not None:
        public_out.parent.mkdir(parents=True, exist_ok=True)
        public_out.write_text(public + "\n", encoding="utf-8")
    console.print(f"private key: {out} (mode 0600)")
    console.print(f"public key:  {public}", highlight=False)
