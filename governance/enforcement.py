"""Coordinator-side consent enforcement: does an update stay inside its sender's permitted set?

The coordinator finds which components an update touches (any nonzero entry in
a component's slice of the adapter, computed on the torch side) and asks
:func:`check_update_consent`; a failed check is a consent violation, recorded on
the ledger with :func:`record_consent_violation` and the update rejected.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass

from sentinel.governance.ledger_sink import LedgerSink
from sentinel.protos.vocabulary import COORDINATOR, EntryKind


@dataclass(frozen=True, slots=True)
class ConsentCheck:
    """Result of a consent check: ``ok`` iff nothing outside the permitted set was touched."""

    ok: bool
    offending: list[str]

    def __bool__(self) -> bool:
        return self.ok


def check_update_consent(touched_components: Set[str], permitted: Set[str]) -> ConsentCheck:
    """Compare the components an update touches with those its sender may adapt.

    ``offending`` lists, sorted, every touched component outside ``permitted``.
    """
    offending = sorted(set(touched_components) - set(permitted))
    return ConsentCheck(ok=not offending, offending=offending)


def consent_violation_payload(
    node: str | int, check: ConsentCheck, *, server_round: int, contract_set_version: int, operation: str = "adapt"
) -> dict[str, object]:
    """The ledger payload of a consent violation (what was touched without consent, and under which contracts)."""
    if check.ok:
        raise ValueError("`check` passed; there is no violation to record")
    return {
        "node_id": str(node),
        "operation": operation,
        "offending_components": list(check.offending),
        "server_round": int(server_round),
        "contract_set_version": int(contract_set_version),
    }


def record_consent_violation(
    ledger: LedgerSink,
    node: str | int,
    check: ConsentCheck,
    *,
    server_round: int,
    contract_set_version: int,
    actor: str = COORDINATOR,
    operation: str = "adapt",
) -> object:
    """Append a ``consent_violation`` entry for ``node``'s rejected update; returns the ledger's entry."""
    payload = consent_violation_payload(
        node, check, server_round=server_round, contract_set_version=contract_set_version, operation=operation
    )
    return ledger.append(EntryKind.CONSENT_VIOLATION, actor, payload)
