"""Writing a run to the contribution ledger: nodes, submissions, verdicts, scores, tokens, checkpoints.

A round's entries are gathered while the round runs and appended in one ledger
transaction when the round commits (after its checkpoint is staged), so a crash
leaves the round recorded entirely or not at all; after each commit the run's
trust anchor (coordinator public key and signed ledger head) is published next
to the ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sentinel.ledger.anchor import publish_trust_anchor
from sentinel.ledger.entries import AppendRequest
from sentinel.ledger.kinds import EntryKind
from sentinel.ledger.recorder import LedgerRecorder, content_hash_of_arrays
from sentinel.ledger.store import Ledger
from sentinel.ledger.tokens import distribute_tokens
from sentinel.protos.vocabulary import COORDINATOR
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.state import GlobalState, flatten_state

Scorer = Callable[[RoundOutcome, GlobalState], dict[str, float]]


def state_hash(state: GlobalState) -> str:
    """Content hash of a global state (what checkpoint entries commit to)."""
    return content_hash_of_arrays(flatten_state(state.deltas, state.head))


class EntryBatch:
    """Gathers ledger appends to be written later, in one transaction (see :meth:`Ledger.append_many`)."""

    def __init__(self) -> None:
        self.requests: list[AppendRequest] = []

    def append(
        self, kind: EntryKind | str, actor: str, payload: dict[str, Any], *, node_signature: str | None = None, node_public_key: str | None = None
    ) -> None:
        """Queue one entry."""
        self.requests.append(AppendRequest(kind, actor, payload, node_signature, node_public_key))

    def append_many(self, items: Sequence[AppendRequest]) -> None:
        """Queue several entries."""
        self.requests.extend(items)


class LedgerObserver(RoundObserver):
    """Round observer that records every act of the run on the ledger.

    Per round: ``round_started``; per update ``update_submitted`` (carrying the
    node's own signature, verified by the ledger), then ``consent_violation`` and
    ``update_rejected`` or ``update_accepted``; ``contribution`` scores and the
    round's ``tokens``; the coordinator's decisions queued with :meth:`record_decision`
    (plasticity's ``heads_pruned``, ...); and a ``checkpoint`` with the new global state's hash.
    """

    def __init__(
        self,
        ledger: Ledger,
        scorer: Scorer | None,
        token_budget: int | Callable[[], int],
        method: str,
        anchor_dir: Path | None = None,
    ) -> None:
        self.ledger = ledger
        self.recorder = LedgerRecorder(ledger)
        self.batch = EntryBatch()
        self.round_recorder = LedgerRecorder(self.batch)  # type: ignore[arg-type] - appends are queued, not written
        self.anchor_dir = anchor_dir
        self.scorer = scorer
        self.token_budget: Callable[[], int] = token_budget if callable(token_budget) else (lambda: int(token_budget))
        self.method = method
        self.nodes: list[str] = []
        self.decisions: list[tuple[EntryKind, dict[str, Any]]] = []

    def record_decision(self, kind: EntryKind, payload: dict[str, Any]) -> None:
        """Queue a coordinator decision of the running round; it is written with the round's entries, once."""
        self.decisions.append((kind, dict(payload)))

    def _registered(self) -> set[str]:
        return {e.node for e in self.ledger.iter_entries(kind=EntryKind.NODE_REGISTERED) if e.node}

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """Register nodes not yet on the ledger (a resumed run keeps its registrations)."""
        self.nodes = [n.key_id for n in nodes]
        known = self._registered()
        for node in nodes:
            if node.key_id not in known:
                self.recorder.node_registered(node.key_id, node.role, node.public_key)
        self.publish()

    def on_round_start(self, server_round: int) -> None:
        """Start the round's records (nothing is written until the round commits)."""
        self.batch = EntryBatch()
        self.decisions = []
        self.round_recorder = LedgerRecorder(self.batch)  # type: ignore[arg-type]
        self.round_recorder.round_started(server_round)

    def commit_round(self, server_round: int) -> None:
        """Append the round's entries in one transaction, then publish the new signed head."""
        self.ledger.append_many(self.batch.requests)
        self.batch = EntryBatch()
        self.publish()

    def publish(self) -> None:
        """Publish the trust anchor (coordinator key, signed head) next to the ledger, when a directory is set."""
        if self.anchor_dir is not None:
            publish_trust_anchor(self.ledger, self.anchor_dir)

    def committed_round(self) -> int:
        """The last round whose records are on the ledger (0 when none is)."""
        last = None
        for entry in self.ledger.iter_entries(kind=EntryKind.CHECKPOINT):
            last = entry
        return int(last.payload["round"]) if last is not None else 0

    def on_round(
        self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState
    ) -> dict[str, Any]:
        """Record the round's submissions and decisions, score contributions, distribute tokens.

        Returns the round's ``contributions`` (node → score) and ``tokens`` (node → amount).
        """
        r = outcome.round
        for res in outcome.results:
            if res.authentic:  # only a submission the node really signed goes on the ledger as its own
                self.round_recorder.update_submitted(res.node.key_id, r, res.content_hash, res.num_examples, node_signature=res.signature)
            for v in res.verdicts:  # each verdict as its validator signed it
                self.round_recorder.validation_verdict(res.node.key_id, r, v.validator, v.accept, v.reason, node_signature=v.signature)
            if res.offending:
                self.round_recorder.consent_violation(res.node.key_id, r, res.offending)
            if res.accepted:
                self.round_recorder.update_accepted(res.node.key_id, r)
            else:
                self.round_recorder.update_rejected(res.node.key_id, r, res.reason)
        for key_id, reason in sorted(outcome.missing.items()):  # the update that never arrived is on the record too
            self.round_recorder.update_rejected(key_id, r, f"missing update: {reason}")
        scores = self.scorer(outcome, previous) if self.scorer and outcome.accepted else {}
        allocations: dict[str, int] = {}
        if scores:
            self.round_recorder.contribution(r, scores, self.method)  # type: ignore[arg-type]
            budget = self.token_budget()  # read each round: governance may have changed it
            allocations = distribute_tokens(scores, budget)
            self.round_recorder.tokens(r, allocations, budget)
        for kind, payload in self.decisions:  # the decisions that made the state the checkpoint commits to
            self.batch.append(kind, COORDINATOR, payload)
        self.decisions = []
        self.round_recorder.checkpoint(r, state_hash(state))
        return {"contributions": scores, "tokens": allocations}

    def report(self) -> dict[str, Any]:
        """Per-node contribution totals, token balances and verdict counts, all derived from the ledger."""
        summaries = {n: self.ledger.node_summary(n) for n in sorted(set(self.nodes) | set(self.ledger.balances()))}
        verify = self.ledger.verify()
        return {
            "ledger": {
                "entries": self.ledger.count(),
                "verified": verify.ok,
                "public_key": self.ledger.public_key_b64,
                "contribution_method": self.method,
                "per_node": {
                    n: {
                        "contribution": s.contribution_total,
                        "tokens": s.token_balance,
                        "accepted": s.accepted,
                        "rejected": s.rejected,
                        "consent_violations": s.consent_violations,
                    }
                    for n, s in summaries.items()
                },
            }
        }
