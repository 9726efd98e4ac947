"""The ledger payloads of governance acts (what an auditor reads on the ledger).

Votes and proposals are recorded as the exact documents their nodes signed
(:mod:`governance.proposals`); the acts the governor performs itself are
recorded with the payloads built here.
"""

from __future__ import annotations

from collections.abc import Sequence

from sentinel.governance.contracts import ContractSet
from sentinel.governance.execution import Effects
from sentinel.governance.proposals import ProposalRecord
from sentinel.governance.registry import NodeRecord
from sentinel.governance.voting import Tally


def node_payload(record: NodeRecord, *, via: str) -> dict[str, object]:
    """``node_registered``: id, role, organisation and the public key that verifies the node's later signatures."""
    return {
        "node_id": record.node_id,
        "role": record.role,
        "organisation": record.organisation,
        "public_key": record.public_key,
        "via": via,
    }


def contract_set_payload(contracts: ContractSet, cause: str, changed: Sequence[str], *, bodies: bool = True) -> dict[str, object]:
    """Ledger payload of a contract-set change: version, hash, cause, and the changed contracts in full."""
    payload: dict[str, object] = {
        "model": contracts.model,
        "set_version": contracts.version,
        "content_hash": contracts.content_hash(),
        "cause": cause,
        "changed_components": list(changed),
    }
    if bodies:
        payload["contracts"] = {c: contracts.contracts[c].model_dump(mode="json") for c in changed}
    return payload


def execution_payload(record: ProposalRecord, status: str, tally: Tally, outcome: str, effects: Effects) -> dict[str, object]:
    """``execution``: how a proposal closed (executed, rejected, failed), its tally, and the new versions."""
    payload: dict[str, object] = {
        "proposal_id": record.proposal_id,
        "kind": record.kind,
        "status": status,
        "outcome": outcome,
        "tally": tally.model_dump(mode="json"),
    }
    if effects.contracts is not None:
        payload["set_version"] = effects.contracts.version
        payload["content_hash"] = effects.contracts.content_hash()
    if effects.parameters is not None:
        payload["parameters_version"] = effects.parameters.version
    return payload
