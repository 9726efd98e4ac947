"""`sentinel ledger verify` trusts only a key it is given or the run published, and catches what re-signing hides.

An attacker with write access to the database can rebuild the whole chain
under a key of their own (and record that key in the database), remove the
tail and rewrite the head record, or, as a dishonest coordinator, store an
entry "signed" by a node nobody registered. Each case verifies OK if the
verifier trusts what the database says; each fails against the published
trust anchor (``coordinator.pub``, ``ledger_head.json``) in the run directory.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sentinel.ledger.anchor import HEAD_FILE, PUBLIC_KEY_FILE, load_trust_anchor, publish_trust_anchor, read_signed_head
from sentinel.ledger.chain import Envelope, entry_hash, sign_hash
from sentinel.ledger.cli import app
from sentinel.ledger.crypto import Ed25519PrivateKey, generate_private_key, public_key_b64, public_key_from_b64
from sentinel.ledger.entries import Problem
from sentinel.ledger.exceptions import LedgerStateError, SignerMismatchError
from sentinel.ledger.head import sign_head
from sentinel.ledger.signing import sign_payload
from sentinel.ledger.store import Ledger
from sentinel.ledger.verify import verify_chain
from typer.testing import CliRunner

WRITER = str(Path(__file__).with_name("_writer.py"))
LAST = 24  # the filled ledger holds seq 0..24; seq 4 is a node-signed submission


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:  # run directories are SQLite files
    return request.getfixturevalue("sqlite_url")


@pytest.fixture
def run_dir(filled: Ledger, tmp_path: Path) -> Path:
    """The run directory of ``filled``: its trust anchor published beside ``ledger.db``, as the coordinator does."""
    publish_trust_anchor(filled, tmp_path)
    return tmp_path


def _verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def _rechain(ledger: Ledger, sql, start: int, key: Ed25519PrivateKey, edit=None) -> None:  # type: ignore[no-untyped-def]
    """Rewrite entries ``start``.. consistently (hashes, links, entry and head signatures) under ``key``.

    ``edit(entry)`` may return replacement column values for an entry (payload, actor, node signature, ...).
    """
    prev = ledger.get(start - 1) if start else None
    prev_hash, prev_sig = (prev.hash, prev.signature) if prev else ("0" * 64, None)
    seq = start - 1
    for entry in ledger.entries(start, 1000):
        values = {"payload": entry.payload_json, "actor": entry.actor, "node": entry.node,
                  "node_signature": entry.node_signature, "node_public_key": entry.node_public_key}
        values.update((edit(entry) if edit else None) or {})
        env = Envelope(entry.seq, entry.timestamp, str(entry.kind), values["actor"], values["payload"], prev_hash,
                       prev_sig, values["node_signature"], values["node_public_key"])
        prev_hash, prev_sig, seq = entry_hash(env), sign_hash(key, entry_hash(env)), entry.seq
        sql(ledger, "UPDATE ledger_entry SET payload = :payload, actor = :actor, node = :node, node_signature = :node_signature, "
            "node_public_key = :node_public_key, prev_hash = :ph, prev_signature = :ps, hash = :h, signature = :s "
            "WHERE seq = :seq", **values, ph=env.prev_hash, ps=env.prev_signature, h=prev_hash, s=prev_sig, seq=entry.seq)
    sql(ledger, "UPDATE ledger_head SET seq = :seq, hash = :h, signature = :s", seq=seq, h=prev_hash,
        s=sign_head(key, seq, prev_hash).signature)


# ---------------------------------------------------------------------------- the anchor itself
def test_publish_writes_the_key_and_the_signed_head_and_only_moves_forward(filled: Ledger, tmp_path: Path) -> None:
    head = publish_trust_anchor(filled, tmp_path)
    assert (tmp_path / PUBLIC_KEY_FILE).read_text().strip() == filled.public_key_b64
    assert read_signed_head(tmp_path / HEAD_FILE) == head == filled.signed_head()
    assert (head.seq, head.hash) == (LAST, filled.get(LAST).hash)
    assert head.is_valid(generate_private_key().public_key()) is False
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left
    filled.append("round_started", "coordinator", {"round": 3})
    assert publish_trust_anchor(filled, tmp_path).seq == LAST + 1
    anchor = load_trust_anchor(tmp_path)
    assert anchor is not None and anchor.public_key == filled.public_key_b64 and anchor.head == filled.signed_head()
    # A read-only ledger returns the head its records hold, signed by the coordinator.
    assert Ledger(filled.url).signed_head() == filled.signed_head()


def test_publish_refuses_another_key_and_a_head_behind_the_published_one(filled: Ledger, tmp_path: Path) -> None:
    publish_trust_anchor(filled, tmp_path)
    with Ledger(f"sqlite:///{tmp_path / 'other.db'}", generate_private_key()) as other:
        with pytest.raises(SignerMismatchError, match="pins coordinator key"):
            publish_trust_anchor(other, tmp_path)
    published = (tmp_path / HEAD_FILE).read_text()
    (tmp_path / HEAD_FILE).write_text(published.replace(f'"seq":{LAST}', f'"seq":{LAST + 5}'))
    with pytest.raises(LedgerStateError, match="behind the head published"):
        publish_trust_anchor(filled, tmp_path)
    assert (tmp_path / PUBLIC_KEY_FILE).read_text().strip() == filled.public_key_b64


def test_every_append_signs_the_head_record(filled: Ledger, sql, signer) -> None:  # type: ignore[no-untyped-def]
    key = filled.public_key_b64
    for _ in range(2):
        head = filled.signed_head()
        assert head.seq == filled.count() - 1 and head.is_valid(signer.public_key())
        assert Ledger(filled.url).signed_head() == head  # the stored signature, not a fresh one
        assert filled.verify().ok
        filled.append("round_started", "coordinator", {"round": 9})
    sql(filled, "UPDATE ledger_head SET signature = :s", s=sign_head(generate_private_key(), LAST + 2, filled.get(LAST + 2).hash).signature)
    report = Ledger(filled.url).verify(key)
    assert (report.ok, report.problem) == (False, Problem.HEAD) and "head record" in (report.reason or "")
    with pytest.raises(LedgerStateError, match="head record"):
        filled.append("round_started", "coordinator", {"round": 10})  # never extend a head someone rewrote


# ---------------------------------------------------------------------------- the trusted key
def test_a_chain_rebuilt_under_another_key_fails_verify_in_its_run_directory(filled: Ledger, run_dir: Path, sql) -> None:  # type: ignore[no-untyped-def]
    assert _verify("--db", str(run_dir / "ledger.db"))[0] == 0
    attacker = generate_private_key()

    def forge_tokens(entry):  # type: ignore[no-untyped-def]
        if str(entry.kind) == "tokens":
            return {"payload": entry.payload_json.replace('"allocations":{', '"allocations":{"666":1000000,')}
        return None  # node signatures are copied as they are: they still verify

    _rechain(filled, sql, 0, attacker, forge_tokens)
    sql(filled, "UPDATE ledger_head SET public_key = :k", k=public_key_b64(attacker))
    assert Ledger(filled.url).balances()["666"] == 2_000_000
    stored = Ledger(filled.url).public_key_b64
    assert stored == public_key_b64(attacker)
    with filled.engine.connect() as conn:  # consistent under the key the database now names, node signatures included
        assert verify_chain(conn, public_key_from_b64(stored), node_signatures=True).ok
    for extra in ([], ["--node-signatures"]):
        code, out = _verify("--db", str(run_dir / "ledger.db"), *extra)
        assert code == 1, out
        assert "BROKEN at entry 0" in out and "bad signature" in out, out
        assert f"pinned in {run_dir / PUBLIC_KEY_FILE}" in out


def test_without_a_trusted_key_verify_refuses_in_one_line(filled: Ledger, tmp_path: Path) -> None:
    code, out = _verify("--db", filled.url)
    assert code == 2 and "no trusted coordinator key" in out and "never trusted" in out, out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
    code, out = _verify("--target", "127.0.0.1:1")
    assert code == 2 and "needs --public-key" in out, out
    key = filled.public_key_b64
    assert key is not None
    b64_file, pem_file = tmp_path / "trusted.pub", tmp_path / "trusted.pem"
    b64_file.write_text(key + "\n")
    raw = base64.b64decode(key)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pem_file.write_bytes(
        Ed25519PublicKey.from_public_bytes(raw).public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for given in (key, str(b64_file), str(pem_file)):
        code, out = _verify("--db", filled.url, "--public-key", given)
        assert code == 0 and "chain OK" in out and "given with --public-key" in out, out
    code, out = _verify("--db", filled.url, "--public-key", "not-a-key")
    assert code == 2 and "neither a key file nor a base64 Ed25519 key" in out and len(out.strip().splitlines()) == 1, out


# ---------------------------------------------------------------------------- the signed head
def test_a_truncated_tail_with_a_rewritten_head_fails_verify(filled: Ledger, run_dir: Path, sql) -> None:  # type: ignore[no-untyped-def]
    # The attacker deletes the last entries and puts back a genuine head record of the shorter chain
    # (signed by the coordinator when the chain had that length): the database is self-consistent.
    old_head = filled.signed_head()
    for r in (3, 4, 5):
        filled.append("round_started", "coordinator", {"round": r})
    publish_trust_anchor(filled, run_dir)
    sql(filled, "DELETE FROM ledger_entry WHERE seq > :seq", seq=old_head.seq)
    sql(filled, "UPDATE ledger_head SET seq = :seq, hash = :h, signature = :s", seq=old_head.seq, h=old_head.hash, s=old_head.signature)
    code, out = _verify("--db", str(run_dir / "ledger.db"))
    assert code == 1, out
    assert f"BROKEN at entry {LAST + 1}" in out and "truncated" in out and f"published head is seq {LAST + 3}" in out, out
    # Without the published head, a head record rewritten by someone without the key does not verify either.
    (run_dir / HEAD_FILE).unlink()
    sql(filled, "DELETE FROM ledger_entry WHERE seq > 20")
    sql(filled, "UPDATE ledger_head SET seq = 20, hash = :h", h=filled.get(20).hash)
    code, out = _verify("--db", str(run_dir / "ledger.db"))
    assert code == 1 and "head mismatch" in out and "head record" in out, out


def test_an_entry_rewritten_after_the_head_was_published_fails_verify(filled: Ledger, run_dir: Path, sql, signer) -> None:  # type: ignore[no-untyped-def]
    # Even the coordinator's own key cannot rewrite what it already published.
    def soften(entry):  # type: ignore[no-untyped-def]
        return {"payload": entry.payload_json.replace('"reason":"loss gate"', '"reason":"accepted after all"')}

    _rechain(filled, sql, 20, signer, soften)
    assert filled.verify(head=None).ok is False  # the published head beside the database is used by default
    code, out = _verify("--db", str(run_dir / "ledger.db"))
    assert code == 1 and f"BROKEN at entry {LAST}" in out and "head mismatch" in out and "published head" in out, out


# ---------------------------------------------------------------------------- node signatures
def test_a_node_signed_entry_from_an_unregistered_actor_fails_node_signature_verify(  # type: ignore[no-untyped-def]
    filled: Ledger, run_dir: Path, sql, signer
) -> None:
    # A dishonest coordinator stores a submission "signed" by node 999, which nobody registered,
    # with a key of 999's own: every hash and coordinator signature is fine.
    impostor = generate_private_key()

    def impersonate(entry):  # type: ignore[no-untyped-def]
        if entry.seq != 15:
            return None
        payload = entry.payload_json.replace(f'"node":"{entry.node}"', '"node":"999"')
        return {"payload": payload, "actor": "999", "node": "999",
                "node_signature": sign_payload(impostor, json.loads(payload)),
                "node_public_key": public_key_b64(impostor)}

    assert filled.get(15).node_signature is not None
    _rechain(filled, sql, 15, signer, impersonate)
    (run_dir / HEAD_FILE).unlink()  # its old hash at seq 24 would be caught anyway; this test is about the node signature
    assert _verify("--db", str(run_dir / "ledger.db"))[0] == 0  # the coordinator vouches for it
    code, out = _verify("--db", str(run_dir / "ledger.db"), "--node-signatures")
    assert code == 1, out
    assert "BROKEN at entry 15" in out and "no earlier node_registered entry" in out, out


# ---------------------------------------------------------------------------- the key file race
def test_processes_opening_a_fresh_ledger_at_once_all_sign_with_one_key(tmp_path: Path) -> None:
    for attempt in range(2):  # every attempt failed before key creation was exclusive
        folder = tmp_path / f"run{attempt}"
        folder.mkdir()
        url, key_path, go = f"sqlite:///{folder / 'ledger.db'}", folder / "coordinator.key", folder / "go"
        workers = [
            subprocess.Popen([sys.executable, WRITER, "open", url, str(key_path), str(w), str(go)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for w in range(4)
        ]
        deadline = time.monotonic() + 120
        while not all((folder / f"ready-{w}").exists() for w in range(4)) and time.monotonic() < deadline:
            time.sleep(0.02)
        go.touch()
        outcomes = [w.communicate(timeout=120) for w in workers]
        assert [w.returncode for w in workers] == [0, 0, 0, 0], [err[-2000:] for _, err in outcomes]
        keys = {out.strip() for out, _ in outcomes}
        assert len(keys) == 1, keys
        with Ledger(url) as led:
            assert led.count() == 4 and led.verify(keys.pop()).ok
        assert sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp")) == []
