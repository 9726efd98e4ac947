"""The contribution ledger: a signed, hash-chained, append-only record of the federation.

Who registered, what was submitted, accepted or rejected, who contributed what
and who earned which tokens, verifiable by anyone holding the coordinator's
public key (published with the signed head beside the run's ledger:
:mod:`ledger.anchor`). Knows nothing of Flower or torch; the coordinator calls
:class:`ledger.recorder.LedgerRecorder`. Main names are importable from here
lazily (``from ledger import Ledger``), so ``import ledger.crypto`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Ledger": "sentinel.ledger.store",
    "AppendRequest": "sentinel.ledger.entries",
    "LedgerEntry": "sentinel.ledger.entries",
    "VerifyReport": "sentinel.ledger.entries",
    "NodeSummary": "sentinel.ledger.entries",
    "Problem": "sentinel.ledger.entries",
    "SignedHead": "sentinel.ledger.head",
    "publish_trust_anchor": "sentinel.ledger.anchor",
    "load_trust_anchor": "sentinel.ledger.anchor",
    "EntryKind": "sentinel.protos.vocabulary",
    "LedgerRecorder": "sentinel.ledger.recorder",
    "content_hash_of_arrays": "sentinel.ledger.recorder",
    "leave_one_out": "sentinel.ledger.contribution",
    "monte_carlo_shapley": "sentinel.ledger.contribution",
    "distribute_tokens": "sentinel.ledger.tokens",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
