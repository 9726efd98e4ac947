"""The governance observer: the coordinator's contracts, node registry and permitted sets.

At start the model's consent contracts are derived from the policy file and
installed (a restart keeps the installed ones; later changes go through
proposals), and every node of the run is registered. Each round, a node's
permitted set for ``adapt`` comes from the current policy engine, so a proposal
that passed between rounds changes what the next round allows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sentinel.governance.governor import Governor
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.policy_file import PolicyFile, derive_contracts, load_default_policy, load_policy
from sentinel.governance.store import GovernanceStore
from sentinel.ledger.store import Ledger
from sentinel.protos.vocabulary import head_id
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.state import GlobalState


class GovernanceObserver(RoundObserver):
    """Round observer and permitted-set source backed by a :class:`Governor`."""

    def __init__(self, governor: Governor, policy: PolicyFile) -> None:
        self.governor = governor
        self.policy = policy
        self.entropy_history: dict[str, list[float]] = {}

    @classmethod
    def open(
        cls,
        db_url: str | Path,
        ledger: Ledger,
        components: Sequence[str],
        model: str,
        policy_path: str | None = None,
        parameters: FederationParameters | None = None,
    ) -> GovernanceObserver:
        """Open the governance store; install the model's contracts from the policy and, on first start, ``parameters``.

        A restart keeps what is installed; later changes go through proposals.
        """
        policy = load_policy(policy_path) if policy_path else load_default_policy()
        governor = Governor(GovernanceStore(db_url), ledger)
        governor.ensure_contracts(derive_contracts(policy, components, steward="coordinator", model=model))
        if parameters is not None and not governor.store.parameters_stored():
            governor.install_parameters(parameters)
        return cls(governor, policy)

    def permitted(self, node: NodeInfo, server_round: int) -> frozenset[str]:
        """The node's permitted set for adapting, under the contracts in force now."""
        return self.governor.permitted_set(node.key_id, "adapt")

    @property
    def contract_version(self) -> int:
        """Version of the contract set in force."""
        return int(self.governor.contracts().version)

    def contracts_json(self) -> str:
        """The contract set in force, as JSON (saved with checkpoints and adapters)."""
        return self.governor.contracts().to_json()

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """Register the run's nodes (a governance bootstrap act, recorded on the ledger)."""
        for node in nodes:
            self.governor.ensure_node(node.key_id, node.role, public_key=node.public_key)

    def on_round(
        self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState
    ) -> dict[str, Any]:
        """Let heads signal agency from this round's entropy; returns the agency changes and the contract version."""
        fields: dict[str, Any] = {}
        changes = self._signal_agency(outcome)
        if changes is not None:
            fields["agency_changes"] = changes
        fields["contract_version"] = self.contract_version
        return fields

    def checkpoint_meta(self) -> dict[str, Any]:
        """The contract set in force and the heads' entropy history go into every checkpoint's metadata."""
        return {"consent_contracts": self.contracts_json(), "entropy_history": {k: list(v) for k, v in sorted(self.entropy_history.items())}}

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue the agency rule from the entropy history a checkpoint saved (``--resume``)."""
        self.entropy_history = {str(k): [float(x) for x in v] for k, v in meta.get("entropy_history", {}).items()}

    def _signal_agency(self, outcome: RoundOutcome) -> list[str] | None:
        """Let heads signal their own state from this round's entropy, as the policy's rule says.

        Each head's normalised attention entropy is averaged over the accepted
        updates that reported it (the check phase bounded it to [0, 1]) and
        appended to its history; the rule puts heads that stay saturated to rest.
        Returns the changes made (None when the rule did not run).
        """
        rule = self.policy.agency.entropy_saturation if self.policy.agency else None
        # Only accepted updates speak: a rejected or unsigned node's measurements are not trusted.
        reports = [r.normalised_entropy for r in outcome.accepted if r.normalised_entropy is not None]
        if rule is None or not reports:
            return None
        mean = np.nanmean(np.stack(reports), axis=0)
        for layer, heads in enumerate(mean):
            for head, value in enumerate(heads):
                if np.isfinite(value):
                    self.entropy_history.setdefault(head_id(layer, head), []).append(float(value))
        changes = self.governor.update_agency_from_entropy(self.entropy_history, rule)
        return [f"{c.component}: {c.from_state} -> {c.to_state} ({c.reason})" for c in changes]

    def report(self) -> dict[str, Any]:
        """Governance figures for the run report."""
        contracts = self.governor.contracts()
        return {
            "governance": {
                "policy": self.policy.name,
                "contract_version": int(contracts.version),
                "active_nodes": len(self.governor.nodes().active()),
            }
        }
