"""The governor: the one place governance acts are performed, stored and recorded.

Every act — installing the first contract set, registering a founding node,
submitting a proposal, casting a vote, executing or rejecting a proposal,
applying a measured agency change — runs in one store transaction and appends
its ledger entries as the last step before commit: if the ledger refuses, the
store is rolled back and nothing changed. Acts with several entries append them
in one ledger transaction (``append_many``) when the ledger offers it. If the
store commit itself fails after the ledger accepted the entries, the ledger
(append-only) keeps them; the store holds nothing of the act.

Reads are served from a snapshot (contracts, registry, parameters, policy
engine) rebuilt only when the store's revision changes, so asking "may N do O
on C" is cheap for the coordinator every round.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sentinel.governance.agency import AgencyChange, apply_agency_changes, update_agency_from_entropy
from sentinel.governance.contracts import ContractSet, Operation
from sentinel.governance.entries import contract_set_payload, execution_payload, node_payload
from sentinel.governance.exceptions import (
    ContractsNotInstalledError,
    DuplicateVoteError,
    GovernanceError,
    InvalidRequestError,
    NodeAlreadyRegisteredError,
    PermissionDeniedError,
    ProposalClosedError,
    ProposalNotFoundError,
)
from sentinel.governance.execution import Effects, execute_spec
from sentinel.governance.ledger_sink import LedgerSink, append_entries
from sentinel.governance.limits import MAX_VOTING_PERIOD
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.policy import Decision, PolicyEngine, resolve_time
from sentinel.governance.policy_file import EntropySaturationRule
from sentinel.governance.proposals import ProposalRecord, RegisterNodeSpec, RemoveNodeSpec, SignedProposal, SignedVote
from sentinel.governance.registry import NodeRecord, NodeRegistry
from sentinel.governance.signing import DEFAULT_WINDOW, authenticate, parse_timestamp, utcnow
from sentinel.governance.store import GovernanceStore, StoreTransaction
from sentinel.governance.voting import Tally, decide, tally_votes
from sentinel.ledger.entries import AppendRequest
from sentinel.protos.vocabulary import COORDINATOR, EntryKind, Role


def proposal_deadline(requested: str, now: datetime, parameters: FederationParameters) -> datetime:
    """The deadline of a proposal submitted at ``now`` (UTC): the requested one, else the default voting period.

    A requested deadline must be representable in UTC, in the future, and at
    most :data:`~governance.limits.MAX_VOTING_PERIOD` ahead; checked before the
    act writes anything, so a refused deadline leaves store and ledger untouched.
    """
    if not requested:
        return now + timedelta(seconds=min(parameters.proposal_ttl_s, MAX_VOTING_PERIOD.total_seconds()))
    deadline = parse_timestamp(requested, "deadline").astimezone(timezone.utc)
    if deadline <= now:
        raise InvalidRequestError(f"`deadline` {requested} is not in the future")
    if deadline - now > MAX_VOTING_PERIOD:
        raise InvalidRequestError(
            f"`deadline` {requested} is more than {MAX_VOTING_PERIOD.days} days ahead; choose an earlier one"
        )
    return deadline


@dataclass(frozen=True)
class GovernanceSnapshot:
    """The governance state at one store revision (contracts None until installed)."""

    revision: int
    contracts: ContractSet | None
    nodes: NodeRegistry
    parameters: FederationParameters
    engine: PolicyEngine | None


class Governor:
    """Performs and answers for governance acts on one store, recording them on ``ledger``.

    ``actor`` is the ledger actor of the acts the governor itself performs
    (executions, bootstrap registrations, measured agency changes); ``clock``
    gives "now" (tests pass a fixed one); ``request_window`` is how far a signed
    request's timestamp may be from now.
    """

    def __init__(
        self,
        store: GovernanceStore,
        ledger: LedgerSink,
        *,
        actor: str = COORDINATOR,
        clock: Callable[[], datetime] = utcnow,
        request_window: timedelta = DEFAULT_WINDOW,
    ) -> None:
        self.store = store
        self.ledger = ledger
        self.actor = actor
        self.clock = clock
        self.request_window = request_window
        self._lock = threading.RLock()
        self._snapshot: GovernanceSnapshot | None = None

    # ------------------------------------------------------------------ reads
    def snapshot(self) -> GovernanceSnapshot:
        """The current state, rebuilt only when the store changed since the last call."""
        revision = self.store.revision()
        snap = self._snapshot
        if snap is None or snap.revision != revision:
            contracts, nodes = self.store.contract_set(), self.store.nodes()
            engine = PolicyEngine(contracts, nodes) if contracts is not None else None
            snap = self._snapshot = GovernanceSnapshot(revision, contracts, nodes, self.store.parameters(), engine)
        return snap

    def contracts(self) -> ContractSet:
        """The current contract set; :class:`ContractsNotInstalledError` before one is installed."""
        contracts = self.snapshot().contracts
        if contracts is None:
            raise ContractsNotInstalledError("no consent contracts are installed yet; derive them from a policy first")
        return contracts

    def nodes(self) -> NodeRegistry:
        """The current node registry."""
        return self.snapshot().nodes

    def parameters(self) -> FederationParameters:
        """The current federation parameters."""
        return self.snapshot().parameters

    def policy_engine(self) -> PolicyEngine:
        """The policy engine for the current contracts and registry."""
        engine = self.snapshot().engine
        if engine is None:
            raise ContractsNotInstalledError("no consent contracts are installed yet; derive them from a policy first")
        return engine

    def may(self, node: str | int, operation: Operation, component: str, at_time: datetime | None = None) -> Decision:
        """:meth:`PolicyEngine.may` on the current state."""
        return self.policy_engine().may(node, operation, component, at_time or self.clock())

    def permitted_set(self, node: str | int, operation: Operation, at_time: datetime | None = None) -> frozenset[str]:
        """:meth:`PolicyEngine.permitted_set` on the current state."""
        return self.policy_engine().permitted_set(node, operation, at_time or self.clock())

    def proposal(self, proposal_id: str) -> ProposalRecord:
        """One proposal; :class:`ProposalNotFoundError` if there is none with that id."""
        record = self.store.proposal(proposal_id)
        if record is None:
            raise ProposalNotFoundError(f"no proposal with id {proposal_id!r}")
        return record

    def proposals(
        self, status: str | None = None, *, after: tuple[datetime, str] | None = None, limit: int | None = None
    ) -> list[ProposalRecord]:
        """All proposals, or those with ``status`` (open, executed, rejected, failed), oldest first.

        ``after`` and ``limit`` select one page (see :meth:`GovernanceStore.proposals`).
        """
        return self.store.proposals(status, after=after, limit=limit)  # type: ignore[arg-type]

    def votes(self, proposal_id: str) -> list[SignedVote]:
        """The signed votes on a proposal."""
        return self.store.votes(proposal_id)

    def tally(self, proposal_id: str) -> Tally:
        """The votes on a proposal counted against the current electorate and thresholds (no side effects)."""
        record = self.proposal(proposal_id)
        if record.tally is not None:
            return record.tally
        return self._count(proposal_id)

    def _count(self, proposal_id: str) -> Tally:
        params = self.parameters()
        return tally_votes(
            (v.body.choice for v in self.store.votes(proposal_id)),
            eligible=len(self.nodes().voters()),
            quorum=params.governance_quorum,
            majority=params.governance_majority,
        )

    # ------------------------------------------------------------------ bootstrap acts
    def install_contracts(self, contracts: ContractSet, *, cause: str = "derived from policy") -> ContractSet:
        """Install the first contract set (a bootstrap act); later changes go through proposals."""
        with self._lock, self.store.transaction() as tx:
            if self.store.contract_set() is not None:
                raise PermissionDeniedError("contracts are already installed; change them through a proposal")
            now = self.clock()
            tx.put_contract_set(contracts, at=now, cause=cause)
            tx.record_act(EntryKind.CONTRACT_CHANGED, self.actor, now, cause)
            self.ledger.append(EntryKind.CONTRACT_CHANGED, self.actor, contract_set_payload(contracts, cause, contracts.components(), bodies=False))
        return contracts

    def ensure_contracts(self, contracts: ContractSet, *, cause: str = "derived from policy") -> ContractSet:
        """The installed contract set if there is one (a restart), else ``contracts`` installed now."""
        with self._lock:
            existing = self.store.contract_set()
            if existing is None:
                return self.install_contracts(contracts, cause=cause)
            if existing.model != contracts.model:
                raise InvalidRequestError(
                    f"the governance store holds contracts for model {existing.model!r}, not {contracts.model!r}"
                )
            return existing

    def bootstrap_node(
        self, node_id: str | int, role: Role, *, organisation: str = "", public_key: str | None = None
    ) -> NodeRecord:
        """Register a founding node directly (the coordinator's bootstrap act), recorded on the ledger."""
        with self._lock, self.store.transaction() as tx:
            now = self.clock()
            existing = self.store.nodes().get(str(node_id))
            if existing is not None and existing.active:
                raise NodeAlreadyRegisteredError(f"node {str(node_id)!r} is already registered")
            record = NodeRecord(
                node_id=str(node_id), role=role, organisation=organisation, public_key=public_key, registered_at=now
            )
            tx.put_node(record)
            tx.record_act(EntryKind.NODE_REGISTERED, self.actor, now, f"bootstrap {record.node_id}")
            self.ledger.append(EntryKind.NODE_REGISTERED, self.actor, node_payload(record, via="bootstrap"))
        return record

    def ensure_node(self, node_id: str | int, role: Role, *, organisation: str = "", public_key: str | None = None) -> NodeRecord:
        """The node's record if it is registered and active (a restart), else :meth:`bootstrap_node`."""
        with self._lock:
            existing = self.store.nodes().get(str(node_id))
            if existing is not None and existing.active:
                return existing
            return self.bootstrap_node(node_id, role, organisation=organisation, public_key=public_key)

    def install_parameters(self, parameters: FederationParameters, *, cause: str = "bootstrap") -> FederationParameters:
        """Store the first federation parameters (bootstrap); later changes go through proposals."""
        with self._lock, self.store.transaction() as tx:
            if self.store.parameters_stored():
                raise PermissionDeniedError("parameters are already set; change them through a proposal")
            now = self.clock()
            tx.put_parameters(parameters, at=now, cause=cause)
            tx.record_act(EntryKind.EXECUTION, self.actor, now, cause)
            payload = {"act": "install_parameters", "cause": cause, "parameters": parameters.model_dump(mode="json")}
            self.ledger.append(EntryKind.EXECUTION, self.actor, payload)
        return parameters

    # ------------------------------------------------------------------ signed acts
    def _authenticate(self, signer: str, payload: dict, signature: str, timestamp: str, now: datetime) -> NodeRecord:
        return authenticate(self.nodes(), signer, payload, signature, timestamp, now=now, window=self.request_window)

    def submit_proposal(self, signed: SignedProposal) -> ProposalRecord:
        """Verify and store a signed proposal (checked against the current state by a dry run)."""
        doc = signed.document
        with self._lock:
            now = self.clock()
            self._authenticate(doc.proposer, doc.signed_payload(), signed.signature, doc.timestamp, now)
            snap = self.snapshot()
            if snap.contracts is None:
                raise ContractsNotInstalledError("no consent contracts are installed yet; nothing can be proposed")
            execute_spec(doc.spec, snap.contracts, snap.nodes, snap.parameters, at=now)  # dry run: refuse what cannot execute
            deadline = proposal_deadline(doc.deadline, now, snap.parameters)
            record = ProposalRecord(
                proposal_id=doc.proposal_id(), document=doc, signature=signed.signature, created_at=now, deadline=deadline
            )
            with self.store.transaction() as tx:
                tx.use_nonce(doc.proposer, doc.nonce, at=now)
                tx.add_proposal(record)
                tx.record_act(EntryKind.PROPOSAL, doc.proposer, now, f"{record.kind} {record.proposal_id}")
                self.ledger.append(EntryKind.PROPOSAL, doc.proposer, doc.signed_payload(), node_signature=signed.signature)
            self.store.forget_nonces_before(now - 2 * self.request_window)
            return record

    def cast_vote(self, signed: SignedVote) -> ProposalRecord:
        """Verify and store a signed vote; settle the proposal if the vote decides it.

        Refuses unsigned, forged, stale, replayed and duplicate votes, votes by
        removed or unknown nodes, and votes on closed or unknown proposals.
        """
        body = signed.body
        with self._lock:
            now = self.clock()
            self._authenticate(body.voter, body.signed_payload(), signed.signature, body.timestamp, now)
            record = self.proposal(body.proposal_id)
            if record.status != "open":
                raise ProposalClosedError(f"proposal {record.proposal_id} is closed ({record.status}); votes are no longer accepted")
            if now >= record.deadline:
                self._settle(record, now)
                raise ProposalClosedError(f"proposal {record.proposal_id} passed its deadline {record.deadline.isoformat()}")
            with self.store.transaction() as tx:
                replayed = tx.nonce_used(body.voter, body.nonce)
                if not replayed and tx.has_vote(body.proposal_id, body.voter):
                    raise DuplicateVoteError(f"node {body.voter!r} already voted on proposal {body.proposal_id}; one vote per node")
                tx.use_nonce(body.voter, body.nonce, at=now)
                tx.add_vote(signed, at=now)
                tx.record_act(EntryKind.VOTE, body.voter, now, f"{body.choice} on {body.proposal_id}")
                self.ledger.append(EntryKind.VOTE, body.voter, body.signed_payload(), node_signature=signed.signature)
            self.store.forget_nonces_before(now - 2 * self.request_window)
            self._settle(self.proposal(body.proposal_id), now)
            return self.proposal(body.proposal_id)

    def close_expired(self, at_time: datetime | None = None) -> list[ProposalRecord]:
        """Settle every open proposal whose deadline has passed; returns them as closed."""
        with self._lock:
            now = resolve_time(at_time) if at_time is not None else self.clock()
            closed = []
            for record in self.store.proposals("open"):
                if now >= record.deadline:
                    self._settle(record, now)
                    closed.append(self.proposal(record.proposal_id))
            return closed

    def _settle(self, record: ProposalRecord, now: datetime) -> None:
        tally = self._count(record.proposal_id)
        outcome = decide(tally, deadline_passed=now >= record.deadline)
        if outcome is None:
            return
        if outcome == "rejected":
            why = "quorum not reached" if not tally.quorum_reached and now >= record.deadline else "majority not reached"
            self._close(record, "rejected", tally, why, Effects(), now)
            return
        snap = self.snapshot()
        try:
            assert snap.contracts is not None  # proposals are only accepted once contracts exist
            effects = execute_spec(record.document.spec, snap.contracts, snap.nodes, snap.parameters, at=now)
        except GovernanceError as e:
            self._close(record, "failed", tally, f"passed but could not be executed: {e}", Effects(), now)
            return
        self._close(record, "executed", tally, effects.summary, effects, now)

    def _close(self, record: ProposalRecord, status: str, tally: Tally, outcome: str, effects: Effects, now: datetime) -> None:
        with self.store.transaction() as tx:
            if not tx.close_proposal(record.proposal_id, status, at=now, tally=tally, outcome=outcome):  # type: ignore[arg-type]
                return
            tx.record_act(EntryKind.EXECUTION, self.actor, now, f"{record.proposal_id} {status}")
            entries = self._write_effects(tx, record, effects, now)
            entries.append(AppendRequest(EntryKind.EXECUTION, self.actor, execution_payload(record, status, tally, outcome, effects)))
            append_entries(self.ledger, entries)

    def _write_effects(self, tx: StoreTransaction, record: ProposalRecord, effects: Effects, now: datetime) -> list[AppendRequest]:
        """Store an executed proposal's effects; returns the ledger entries that record them."""
        cause = f"proposal {record.proposal_id}"
        entries: list[AppendRequest] = []
        if effects.contracts is not None:
            tx.put_contract_set(effects.contracts, at=now, cause=cause, changed=effects.changed_components)
            entries.append(AppendRequest(EntryKind.CONTRACT_CHANGED, self.actor, contract_set_payload(effects.contracts, cause, effects.changed_components)))
        if effects.parameters is not None:
            tx.put_parameters(effects.parameters, at=now, cause=cause)
        if effects.node is not None:
            tx.put_node(effects.node)
            spec = record.document.spec
            if isinstance(spec, RegisterNodeSpec):
                entries.append(AppendRequest(EntryKind.NODE_REGISTERED, self.actor, node_payload(effects.node, via=cause)))
            elif isinstance(spec, RemoveNodeSpec):
                payload = {"node_id": effects.node.node_id, "reason": spec.reason, "via": cause}
                entries.append(AppendRequest(EntryKind.NODE_REMOVED, self.actor, payload))
        return entries

    # ------------------------------------------------------------------ measured agency
    def apply_agency_changes(self, changes: Sequence[AgencyChange]) -> ContractSet:
        """Apply measured agency changes as one act (set version + 1), recorded as ``contract_changed``."""
        if not changes:
            return self.contracts()
        with self._lock, self.store.transaction() as tx:
            now = self.clock()
            revised = apply_agency_changes(self.contracts(), changes)
            components = [c.component for c in changes]
            cause = "agency signalled by measurement"
            tx.put_contract_set(revised, at=now, cause=cause, changed=components)
            tx.record_act(EntryKind.CONTRACT_CHANGED, self.actor, now, cause)
            payload = contract_set_payload(revised, cause, components)
            payload["agency_changes"] = [c.model_dump(mode="json") for c in changes]
            self.ledger.append(EntryKind.CONTRACT_CHANGED, self.actor, payload)
        return revised

    def update_agency_from_entropy(
        self, entropy_history: Mapping[str, Sequence[float]], rule: EntropySaturationRule
    ) -> list[AgencyChange]:
        """Compute the entropy rule's agency changes on the current contracts and apply them (recorded)."""
        with self._lock:
            changes = update_agency_from_entropy(self.contracts(), entropy_history, rule, at=self.clock())
            self.apply_agency_changes(changes)
            return changes
