"""The signed head: the coordinator's signature over the chain's last (sequence, hash).

Entry signatures vouch for everything *before* an entry, never for what comes
after it, so deleting the last entries leaves a chain whose every signature
still verifies. The signed head closes that gap: the coordinator signs the pair
(seq, hash) of the last entry on every append (stored in the ``ledger_head``
row) and publishes it beside the run (:mod:`ledger.anchor`); a chain shorter
than a published head, or whose entry at that seq has another hash, is caught
by :func:`ledger.verify.verify_chain`.

The signature covers the RFC 8785 canonical JSON of
``{"domain": "sentinel-ledger-head/v1", "hash": HASH, "seq": SEQ}``; the domain
string keeps it from ever being mistaken for an entry signature (those cover 64
hex characters). An empty ledger's head is seq -1 with the genesis hash.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from sentinel.ledger.chain import signature_valid
from sentinel.ledger.crypto import Ed25519PrivateKey, Ed25519PublicKey, canonical_json, sign_b64

HEAD_DOMAIN = "sentinel-ledger-head/v1"
MAX_SEQ = 2**63 - 1
"""The largest sequence number a ledger stores (a signed 64-bit integer in SQL)."""


class SignedHead(BaseModel):
    """The last entry's ``seq`` and ``hash`` (seq -1: an empty ledger), signed by the coordinator."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    seq: Annotated[StrictInt, Field(ge=-1, le=MAX_SEQ, description="Sequence number of the last entry; -1 when empty.")]
    hash: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$", description="Hash of the last entry (hex SHA-256).")]
    signature: Annotated[StrictStr, Field(min_length=1, max_length=100, description="Base64 Ed25519 signature of the coordinator.")]

    def message(self) -> bytes:
        """The bytes the signature covers (see the module docstring)."""
        return head_message(self.seq, self.hash)

    def is_valid(self, coordinator_key: Ed25519PublicKey) -> bool:
        """True iff the coordinator key signed this head."""
        return signature_valid(coordinator_key, self.signature, self.message())


def head_message(seq: int, hash_hex: str) -> bytes:
    """Canonical JSON of the head document the coordinator signs."""
    return canonical_json({"domain": HEAD_DOMAIN, "hash": hash_hex, "seq": seq})


def sign_head(key: Ed25519PrivateKey, seq: int, hash_hex: str) -> SignedHead:
    """The head (seq, hash) signed with the coordinator's ``key``."""
    return SignedHead(seq=seq, hash=hash_hex, signature=sign_b64(key, head_message(seq, hash_hex)))
