"""Talking to a SuperLink: its health endpoint and its Control API (SuperNode keys, runs, logs).

Flower 1.41 serves Fleet, Control and Runtime APIs over HTTP(S) on one
host/port; this module wraps the calls ``sentinel server`` and ``sentinel run``
need, with one :class:`Link` describing where the SuperLink is and how to trust it.
"""

from __future__ import annotations

import io
import logging
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per Control API request otherwise


@dataclass(frozen=True)
class Link:
    """A SuperLink address and how to reach it: TLS with ``ca`` (the CA that signed its certificate), or plaintext."""

    address: str
    ca: Path | None = None

    def __post_init__(self) -> None:
        if self.ca is not None:
            object.__setattr__(self, "ca", Path(self.ca).resolve())  # Flower wants an absolute path

    @property
    def insecure(self) -> bool:
        return self.ca is None

    def url(self, path: str) -> str:
        return f"{'http' if self.insecure else 'https'}://{self.address}{path}"


def healthy(link: Link, timeout: float = 2.0) -> bool:
    """True iff the SuperLink answers ``/health`` (over TLS verified against ``link.ca``)."""
    context = ssl.create_default_context(cafile=str(link.ca)) if link.ca else None
    try:
        with urllib.request.urlopen(link.url("/health"), timeout=timeout, context=context) as reply:  # noqa: S310 - our own URL
            return 200 <= reply.status < 300
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


@contextmanager
def control_client(link: Link) -> Iterator[Any]:
    """A Control API client (Flower's ``ControlHttpClient``), closed afterwards."""
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection

    connection = SuperLinkConnection(
        "sentinel", address=link.address, root_certificates=str(link.ca) if link.ca else None, insecure=link.insecure
    )
    with redirect_stdout(io.StringIO()):  # Flower prints "Using SuperLink: ..." on every connection
        client = init_http_client_from_connection(connection)
    try:
        yield client
    finally:
        client.close()


def auth_key_bytes(openssh_public_key: str) -> bytes:
    """An OpenSSH ECDSA public key as the bytes Flower registers (checked: a NIST curve)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, uses_nist_ec_curve

    key = serialization.load_ssh_public_key(openssh_public_key.strip().encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or not uses_nist_ec_curve(key):
        raise ValueError("a SuperNode key must be an ECDSA key on a NIST curve (sentinel keys node makes P-384)")
    return public_key_to_bytes(key)


@dataclass(frozen=True)
class RegisteredNode:
    """A SuperNode in Flower's registry."""

    node_id: int
    status: str
    name: str
    public_key: bytes


def list_nodes(client: Any) -> list[RegisteredNode]:
    """Every SuperNode Flower knows (registered, online, offline; unregistered ones are left out)."""
    from flwr.proto.control_pb2 import ListNodesRequest

    reply = client.ListNodes(ListNodesRequest())
    return [
        RegisteredNode(int(n.node_id), str(n.status), str(n.name), bytes(n.public_key))
        for n in reply.nodes_info
        if str(n.status) != "unregistered"
    ]


def register_node(client: Any, auth_public_key: bytes, name: str) -> int:
    """Register a SuperNode key; Flower's node id for it."""
    from flwr.proto.control_pb2 import RegisterNodeRequest

    return int(client.RegisterNode(RegisterNodeRequest(public_key=auth_public_key, name=name[:64])).node_id)


def unregister_node(client: Any, node_id: int) -> None:
    """Remove a SuperNode (its key can no longer connect)."""
    from flwr.proto.control_pb2 import UnregisterNodeRequest

    client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))


__all__ = ["Link", "RegisteredNode", "auth_key_bytes", "control_client", "healthy", "list_nodes", "register_node", "unregister_node"]
