"""``sentinel keys``: node signing keys (``generate``) and, for a test federation, a CA, server certificates and node bundles.

A self-signed CA (``sentinel keys ca``) is for local use and tests only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sentinel.governance.cli import keys_generate
from sentinel.server.tls import DEFAULT_SERVER_NAMES, make_ca, make_node_keys, make_server_cert

keys_app = typer.Typer(
    help="Node keys (Ed25519 signing + ECDSA SuperNode auth), a test CA and server certificates.", no_args_is_help=True
)
keys_app.command("generate")(keys_generate)

console = Console()
Force = Annotated[bool, typer.Option(help="Overwrite existing key files (the old keys are lost).")]


def _fail(e: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


@keys_app.command("ca")
def ca_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for ca.crt and ca.key.")],
    name: Annotated[str, typer.Option(help="Common name of the CA.")] = "Sentinel test CA",
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
    force: Force = False,
) -> None:
    """A self-signed CA for a local or test federation (not for production: whoever has ca.key can impersonate the server)."""
    try:
        cert, key = make_ca(out, name, days, force)
    except (OSError, ValueError) as e:
        raise _fail(e) from e
    console.print(f"CA certificate: {cert}\nCA key:         {key} (mode 0600; keep it off the nodes)")


@keys_app.command("server-cert")
def server_cert_command(
    ca: Annotated[Path, typer.Option(help="Directory holding ca.crt and ca.key.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for <stem>.pem and <stem>.key.")],
    name: Annotated[list[str] | None, typer.Option("--name", help="IP address or DNS name clients dial (repeat). Default: 127.0.0.1, localhost.")] = None,
    stem: Annotated[str, typer.Option(help="File name stem.")] = "server",
    days: Annotated[int, typer.Option(help="Validity in days.")] = 365,
    force: Force = False,
) -> None:
    """A server certificate signed by the CA, with a subjectAltName for each name."""
    names = list(name or DEFAULT_SERVER_NAMES)
    try:
        cert, key = make_server_cert(ca, out, names, stem, days, force)
    except (OSError, ValueError) as e:
        raise _fail(e) from e
    console.print(f"server certificate: {cert} for {', '.join(names)}\nserver key:         {key} (mode 0600)")


@keys_app.command("node")
def node_command(
    name: Annotated[str, typer.Argument(help="Node name, e.g. edge-0 (the files' stem).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for the node's files.")],
    force: Force = False,
) -> None:
    """A node's Ed25519 signing key (<name>.key), ECDSA SuperNode key (<name>.auth) and public card (<name>.card.json)."""
    try:
        bundle = make_node_keys(out, name, force)
    except (OSError, ValueError) as e:
        raise _fail(e) from e
    console.print(
        f"signing key: {bundle.key} (give to `sentinel node --key-file`)\n"
        f"auth key:    {bundle.auth_key} (give to `sentinel node --auth-key`)\n"
        f"card:        {bundle.card} (public; give to the coordinator's `--node-cards` directory)\n"
        f"public key:  {bundle.public.read_text().strip()}",
        highlight=False,
    )


@keys_app.command("federation")
def federation_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for everything (ca/, server/, nodes/).")],
    nodes: Annotated[str, typer.Option(help="Comma-separated node names.")] = "edge-0,gpu-0,central-0",
    name: Annotated[list[str] | None, typer.Option("--name", help="Server certificate names (repeat). Default: 127.0.0.1, localhost.")] = None,
    force: Force = False,
) -> None:
    """Everything a local test federation needs: a self-signed CA, a server certificate and one bundle per node."""
    names = list(name or DEFAULT_SERVER_NAMES)
    try:
        make_ca(out / "ca", force=force)
        make_server_cert(out / "ca", out / "server", names, force=force)
        bundles = [make_node_keys(out / "nodes", n.strip(), force) for n in nodes.split(",") if n.strip()]
    except (OSError, ValueError) as e:
        raise _fail(e) from e
    console.print(
        f"CA: {out / 'ca' / 'ca.crt'} (self-signed: for local use only)\n"
        f"server: {out / 'server' / 'server.pem'} for {', '.join(names)}\n"
        f"nodes: {', '.join(b.key.stem for b in bundles)} in {out / 'nodes'} (cards: *.card.json)",
        highlight=False,
    )


__all__ = ["keys_app"]
