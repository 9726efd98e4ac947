"""The trust anchor a run publishes beside its ledger, and how verification finds a key to trust.

Whoever can rewrite a ledger database can also rewrite the coordinator key the
database records, so ``sentinel ledger verify`` never trusts that key. The
coordinator instead publishes, in the run's directory next to ``ledger.db``:

``coordinator.pub``
    The coordinator's public key: one line of base64 (the 32 raw Ed25519 bytes,
    as everywhere in Sentinel Federation). Written once; publishing a different
    key into a directory that already pins one is refused. A key given to
    ``--public-key`` may be this base64 text, or a file holding it or a PEM
    ``PUBLIC KEY`` block.
``ledger_head.json``
    The latest :class:`~sentinel.ledger.head.SignedHead` as JSON,
    ``{"seq": ..., "hash": ..., "signature": ...}``, replaced atomically after
    every round's checkpoint and at the end of a run. It only moves forward:
    publishing a head that does not extend the published one is refused.

:func:`publish_trust_anchor` writes both; :func:`load_trust_anchor` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError
from sentinel.ledger.crypto import public_key_b64, public_key_from_b64, public_key_from_text
from sentinel.ledger.engine import database_url
from sentinel.ledger.exceptions import (
    EntryNotFoundError,
    LedgerStateError,
    ReadOnlyLedgerError,
    SignerMismatchError,
    TrustAnchorError,
    UntrustedKeyError,
)
from sentinel.ledger.files import create_exclusively, write_atomically
from sentinel.ledger.head import SignedHead
from sqlalchemy import make_url

if TYPE_CHECKING:
    from sentinel.ledger.store import Ledger

PUBLIC_KEY_FILE = "coordinator.pub"
HEAD_FILE = "ledger_head.json"
_MAX_ANCHOR_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class TrustAnchor:
    """A published coordinator key (base64) and, when published, the signed head; ``directory`` holds them."""

    public_key: str
    head: SignedHead | None
    directory: Path

    @property
    def key_file(self) -> Path:
        """Where the key was read from."""
        return self.directory / PUBLIC_KEY_FILE


def anchor_directory(url: str) -> Path | None:
    """The folder a SQLite ledger file lies in (its run directory); None for other databases and in-memory ones."""
    parsed = make_url(database_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve().parent


def _read_small(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_ANCHOR_BYTES + 1)
    except OSError as e:
        raise TrustAnchorError(f"cannot read {path}: {e.strerror or e}") from e
    if len(data) > _MAX_ANCHOR_BYTES:
        raise TrustAnchorError(f"{path} is larger than {_MAX_ANCHOR_BYTES} bytes: not a key or a head")
    return data


def read_public_key(source: str | Path) -> str:
    """A trusted coordinator key, base64: ``source`` is a file (base64 or PEM) or the base64 text itself.

    :class:`TrustAnchorError` says which file or text is unusable and why.
    """
    path = Path(str(source)).expanduser()
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a base64 key too long to be a file name on this system
        is_file = False
    if is_file:
        try:
            return public_key_b64(public_key_from_text(_read_small(path)))
        except ValueError as e:
            raise TrustAnchorError(f"{path} does not hold an Ed25519 public key (base64 or PEM): {e}") from e
    try:
        return public_key_b64(public_key_from_text(str(source)))
    except ValueError as e:
        shown = str(source) if len(str(source)) <= 80 else str(source)[:77] + "..."
        raise TrustAnchorError(f"public key {shown!r} is neither a key file nor a base64 Ed25519 key ({e})") from e


def read_signed_head(path: str | Path) -> SignedHead:
    """The signed head published in the JSON file at ``path``; :class:`TrustAnchorError` if unreadable."""
    path = Path(path).expanduser()
    data = _read_small(path)
    try:
        return SignedHead.model_validate_json(data)
    except ValidationError as e:
        problems = "; ".join(f"`{'.'.join(str(p) for p in err['loc']) or 'head'}`: {err['msg']}" for err in e.errors())
        raise TrustAnchorError(f"{path} is not a signed ledger head: {problems}") from e


def load_trust_anchor(directory: str | Path | None) -> TrustAnchor | None:
    """The anchor published in ``directory`` (None when it pins no key, or when ``directory`` is None)."""
    if directory is None:
        return None
    directory = Path(directory)
    key_file = directory / PUBLIC_KEY_FILE
    if not key_file.is_file():
        return None
    key = read_public_key(key_file)
    head_file = directory / HEAD_FILE
    head = read_signed_head(head_file) if head_file.exists() else None
    return TrustAnchor(public_key=key, head=head, directory=directory)


def trusted_key(url: str, given: str | None, signer: str | None, head: SignedHead | None) -> tuple[str, SignedHead | None]:
    """The coordinator key to verify the ledger at ``url`` against, and the published head it must reach.

    The key is ``given`` (base64) if any, else ``signer`` (a signing ledger's own
    key), else the ``coordinator.pub`` published beside the database; the head is
    ``head`` if any, else the ``ledger_head.json`` published there. With no key,
    :class:`UntrustedKeyError`: the key a database records about itself is never used.
    """
    found = load_trust_anchor(anchor_directory(url)) if given is None or head is None else None
    if head is None and found is not None:
        head = found.head
    if given is not None:
        public_key_from_b64(given)  # a malformed key is the caller's error (ValueError), not a broken chain
        return given, head
    if signer is not None:
        return signer, head
    if found is not None:
        return found.public_key, head
    raise UntrustedKeyError(
        f"no trusted coordinator key for {url}: give the coordinator's public key, or publish the trust anchor "
        f"({PUBLIC_KEY_FILE}) beside the database; the key the database stores is never trusted"
    )


def publish_trust_anchor(ledger: Ledger, directory: str | Path) -> SignedHead:
    """Publish ``ledger``'s coordinator key and current signed head in ``directory``; returns the head.

    Call it after every round's checkpoint and at the end of a run, with the
    coordinator's signing ledger. ``coordinator.pub`` is created once
    (exclusively, so a concurrent publisher cannot swap it); if it already pins
    another key, :class:`SignerMismatchError` is raised and nothing is written.
    ``ledger_head.json`` is replaced atomically, and only by a head that extends
    the one already published (the chain must still hold the published seq
    with its hash), else :class:`LedgerStateError`: a ledger that lost
    published entries is not re-anchored.
    """
    if ledger.read_only:
        raise ReadOnlyLedgerError("only the coordinator's signing ledger can publish its trust anchor")
    directory = Path(directory)
    key = ledger.public_key_b64
    assert key is not None  # a signing ledger always knows its key
    key_file = directory / PUBLIC_KEY_FILE
    if not create_exclusively(key_file, f"{key}\n".encode("ascii")):
        pinned = read_public_key(key_file)
        if pinned != key:
            raise SignerMismatchError(f"{key_file} pins coordinator key {pinned}; this ledger is signed by {key}")
    head = ledger.signed_head()
    head_file = directory / HEAD_FILE
    if head_file.exists():
        published = read_signed_head(head_file)
        if published == head:
            return head
        _check_extends(ledger, published, head, head_file)
    write_atomically(head_file, (head.model_dump_json() + "\n").encode("ascii"))
    return head


def _check_extends(ledger: Ledger, published: SignedHead, head: SignedHead, head_file: Path) -> None:
    """Refuse to publish ``head`` unless the chain still holds ``published`` (the same hash at its seq)."""
    if head.seq < published.seq:
        raise LedgerStateError(
            f"the ledger's head (seq {head.seq}) is behind the head published in {head_file} (seq {published.seq}): "
            "published entries were removed; run `sentinel ledger verify`"
        )
    if published.seq < 0:
        return
    try:
        stored = ledger.get(published.seq).hash
    except EntryNotFoundError as e:
        raise LedgerStateError(f"the ledger lost entry {published.seq}, published in {head_file}") from e
    if stored != published.hash:
        raise LedgerStateError(
            f"entry {published.seq} no longer has the hash published in {head_file}: the chain was rewritten"
        )
