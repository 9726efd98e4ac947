"""Keys and certificates for a test federation: a self-signed CA, server certificates and node key bundles.

A self-signed CA is for local use and tests: anyone who holds ``ca.key`` can
issue certificates every node trusts. A real deployment uses its
organisation's CA (or a public one) for the coordinator's certificate.

A node's **bundle** holds its two key pairs:

- ``<name>.key`` / ``<name>.pub``: the Ed25519 signing key of its updates, votes
  and verdicts (the ledger's node identity; governance registers the public key);
- ``<name>.auth`` / ``<name>.auth.pub``: the ECDSA P-384 key Flower's SuperNode
  authentication needs (OpenSSH format, as ``flower-supernode
  --auth-supernode-private-key`` and ``flwr supernode register`` read them);
- ``<name>.card.json``: the public half to hand to the coordinator: both public
  keys and the Ed25519 key's signature over the auth key, so the coordinator
  registers a SuperNode key only for a node governance knows by its Ed25519 key.

Private keys are written with mode 0600 and never overwritten unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sentinel.ledger.crypto import generate_private_key, load_private_key, public_key_b64, save_private_key, sign_b64, verify_b64

CA_CERT, CA_KEY = "ca.crt", "ca.key"
DEFAULT_SERVER_NAMES = ("127.0.0.1", "localhost")
BINDING_CONTEXT = b"sentinel-supernode-auth-key:"
"""Domain separation of the card's binding signature (Ed25519 over context + OpenSSH public key)."""


class KeyFileExistsError(FileExistsError):
    """A key file is already there; overwriting it would lose the key."""


def _write_private(path: Path, data: bytes, force: bool) -> Path:
    """Write a private key with mode 0600, exclusively unless ``force``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not force:
        raise KeyFileExistsError(f"{path} exists; pass --force to overwrite it (the old key is lost)")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def _write_public(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(directory: Path, common_name: str = "Sentinel test CA", days: int = 365, force: bool = False) -> tuple[Path, Path]:
    """A self-signed CA (EC P-256) in ``directory``: ``(ca.crt, ca.key)``. For local use only."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path = _write_private(Path(directory) / CA_KEY, _pem_private(key), force)
    cert_path = _write_public(Path(directory) / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _pem_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):  # keep order, drop repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_server_cert(
    ca_dir: Path, out_dir: Path, names: Sequence[str] = DEFAULT_SERVER_NAMES, stem: str = "server", days: int = 365, force: bool = False
) -> tuple[Path, Path]:
    """A server certificate signed by the CA in ``ca_dir``, valid for ``names`` (IPs and DNS names): ``(<stem>.pem, <stem>.key)``.

    The names must include the address the clients dial (``127.0.0.1`` on loopback).
    """
    if not names:
        raise ValueError("a server certificate needs at least one name (IP address or DNS name)")
    ca_cert = x509.load_pem_x509_certificate((Path(ca_dir) / CA_CERT).read_bytes())
    ca_key = serialization.load_pem_private_key((Path(ca_dir) / CA_KEY).read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    key_path = _write_private(Path(out_dir) / f"{stem}.key", _pem_private(key), force)
    cert_path = _write_public(Path(out_dir) / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@dataclass(frozen=True)
class NodeBundle:
    """The files of one node's keys."""

    key: Path
    public: Path
    auth_key: Path
    auth_public: Path
    card: Path

    @classmethod
    def at(cls, directory: Path, name: str) -> NodeBundle:
        d = Path(directory)
        return cls(d / f"{name}.key", d / f"{name}.pub", d / f"{name}.auth", d / f"{name}.auth.pub", d / f"{name}.card.json")


@dataclass(frozen=True)
class NodeCard:
    """The public half of a node's bundle: what the coordinator needs to admit its SuperNode."""

    name: str
    public_key: str
    """Base64 Ed25519 key (the node's ledger and governance identity)."""
    auth_public_key: str
    """OpenSSH ECDSA public key (Flower's SuperNode authentication)."""
    binding: str
    """The Ed25519 key's signature over :data:`BINDING_CONTEXT` + ``auth_public_key``."""

    def verified(self) -> bool:
        """True iff the Ed25519 key signed this auth key."""
        try:
            return verify_b64(self.public_key, self.binding, BINDING_CONTEXT + self.auth_public_key.encode())
        except ValueError:
            return False

    @classmethod
    def load(cls, path: Path) -> NodeCard:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(str(data["name"]), str(data["public_key"]), str(data["auth_public_key"]), str(data["binding"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path} is not a node card: {e}") from e

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2) + "\n"


def make_node_keys(directory: Path, name: str, force: bool = False) -> NodeBundle:
    """A node's Ed25519 signing key and ECDSA P-384 SuperNode key, with its card (see the module docs)."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"node name {name!r} must be a plain file name")
    bundle = NodeBundle.at(directory, name)
    for path in (bundle.key, bundle.auth_key):
        if path.exists() and not force:
            raise KeyFileExistsError(f"{path} exists; pass --force to overwrite it (the old key is lost)")
    signing = generate_private_key()
    save_private_key(signing, bundle.key)
    _write_public(bundle.public, (public_key_b64(signing) + "\n").encode())
    auth = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        bundle.auth_key,
        auth.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()),
        force,
    )
    auth_pub = auth.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    _write_public(bundle.auth_public, (auth_pub + "\n").encode())
    card = NodeCard(name, public_key_b64(signing), auth_pub, sign_b64(signing, BINDING_CONTEXT + auth_pub.encode()))
    _write_public(bundle.card, card.to_json().encode())
    return bundle


def node_card(bundle_dir: Path, name: str) -> NodeCard:
    """The card of the bundle ``name`` in ``bundle_dir``, re-derived from its private keys (checks they match)."""
    bundle = NodeBundle.at(bundle_dir, name)
    card = NodeCard.load(bundle.card)
    if card.public_key != public_key_b64(load_private_key(bundle.key)):
        raise ValueError(f"{bundle.card} does not belong to {bundle.key}")
    return card


__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_SERVER_NAMES",
    "KeyFileExistsError",
    "NodeBundle",
    "NodeCard",
    "make_ca",
    "make_node_keys",
    "make_server_cert",
    "node_card",
]
