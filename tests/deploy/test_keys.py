"""``sentinel keys``: a test CA, server certificates, node bundles and cards; the key-sync decisions."""

from __future__ import annotations

import ipaddress
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from sentinel.governance.registry import NodeRecord, NodeRegistry
from sentinel.ledger.crypto import load_private_key, public_key_b64
from sentinel.server.key_sync import desired_keys, load_cards
from sentinel.server.tls import KeyFileExistsError, NodeCard, make_ca, make_node_keys, make_server_cert, node_card
from typer.testing import CliRunner


def test_the_server_certificate_chains_to_the_ca_and_names_the_addresses(tmp_path: Path) -> None:
    ca_cert, ca_key = make_ca(tmp_path / "ca")
    cert_path, key_path = make_server_cert(tmp_path / "ca", tmp_path / "server", ["127.0.0.1", "localhost", "coordinator"])
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "coordinator"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for private in (ca_key, key_path):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(KeyFileExistsError):
        make_ca(tmp_path / "ca")


def test_a_node_bundle_binds_its_supernode_key_to_its_signing_key(tmp_path: Path) -> None:
    bundle = make_node_keys(tmp_path, "edge-0")
    signing = load_private_key(bundle.key)
    auth = load_ssh_private_key(bundle.auth_key.read_bytes(), None)
    assert isinstance(auth, ec.EllipticCurvePrivateKey) and auth.curve.name == "secp384r1"  # what flower-supernode loads
    card = node_card(tmp_path, "edge-0")
    assert card.public_key == public_key_b64(signing) == bundle.public.read_text().strip()
    assert card.auth_public_key == bundle.auth_public.read_text().strip() and card.verified()
    other = make_node_keys(tmp_path, "gpu-0")
    forged = NodeCard("edge-0", card.public_key, other.auth_public.read_text().strip(), card.binding)
    assert not forged.verified()  # someone else's SuperNode key under edge-0's identity
    with pytest.raises(KeyFileExistsError):
        make_node_keys(tmp_path, "edge-0")
    with pytest.raises(ValueError, match="plain file name"):
        make_node_keys(tmp_path, "../x")


def test_key_sync_admits_cards_and_follows_governance_removals(tmp_path: Path) -> None:
    a, b, c = (node_card(tmp_path, n) for n in ("a", "b", "c") if make_node_keys(tmp_path, n))
    forged = json.loads((tmp_path / "c.card.json").read_text())
    forged["auth_public_key"] = a.auth_public_key
    (tmp_path / "c.card.json").write_text(json.dumps(forged))
    cards = load_cards(tmp_path)
    assert [x.name for x in cards] == ["a", "b"]  # the forged card is skipped
    registry = NodeRegistry([
        NodeRecord(node_id="1", role="edge", public_key=a.public_key),
        NodeRecord(node_id="2", role="gpu", public_key=b.public_key, status="removed"),
        NodeRecord(node_id="3", role="gpu", public_key=c.public_key),
    ])
    desired, without = desired_keys(cards, registry)
    assert [card.name for card in desired.values()] == ["a"]  # b was removed by governance
    assert without == ["3"]  # governance knows node 3, but no admitted card carries its key


def test_keys_cli_keeps_generate_and_adds_the_federation_commands(tmp_path: Path) -> None:
    from sentinel.server.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path / "n.pem")])
    assert res.exit_code == 0, res.output
    assert "public key" in res.output and (tmp_path / "n.pem").is_file()
    res = runner.invoke(app, ["keys", "federation", "--out", str(tmp_path / "fed"), "--nodes", "e,g"])
    assert res.exit_code == 0, res.output
    assert "local use only" in res.output
    assert {p.name for p in (tmp_path / "fed" / "nodes").glob("*.card.json")} == {"e.card.json", "g.card.json"}
    res = runner.invoke(app, ["keys", "node", "e", "--out", str(tmp_path / "fed" / "nodes")])
    assert res.exit_code == 2 and "--force" in res.output
