"""Persistence of governance state (SQLModel): contracts with history, nodes, proposals, votes.

The database is given by URL, as for the ledger: a SQLite file by default
(a plain path is accepted), PostgreSQL as ``postgresql+psycopg://...``; the
engine is the ledger's (:func:`sentinel.ledger.engine.make_engine`). Tables
are prefixed ``governance_`` so they can share a database with the ledger.

Writes happen inside :meth:`GovernanceStore.transaction`: one transaction per
governance act, committed only when the block finishes without error, so an act
is stored completely or not at all. Sessions do not autoflush: nothing is
written (and no SQLite write lock taken) before the commit, so an act can append
to a ledger in the same SQLite file before committing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sentinel.governance.contracts import ConsentContract, ContractSet
from sentinel.governance.exceptions import ReplayedRequestError, StoreError
from sentinel.governance.parameters import FederationParameters
from sentinel.governance.proposals import ProposalDocument, ProposalRecord, ProposalStatus, SignedVote, VoteBody
from sentinel.governance.registry import NodeRecord, NodeRegistry
from sentinel.governance.voting import Tally
from sentinel.ledger.engine import database_url, make_engine
from sqlalchemy import Engine, Text, UniqueConstraint, and_, delete, func, or_, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Field, Session, SQLModel, select


class ActRow(SQLModel, table=True):
    """One governance act (local audit trail; its id is the state revision)."""

    __tablename__ = "governance_act"
    id: int | None = Field(default=None, primary_key=True)
    kind: str
    actor: str
    at: datetime
    summary: str = Field(default="", sa_type=Text)


class ContractSetRow(SQLModel, table=True):
    """One version of a model's contract set, in full."""

    __tablename__ = "governance_contract_set"
    version: int = Field(primary_key=True)
    model: str
    content_hash: str
    cause: str = Field(default="", sa_type=Text)
    created_at: datetime
    body: str = Field(sa_type=Text)


class ContractRow(SQLModel, table=True):
    """One version of one component's contract (written when it changes)."""

    __tablename__ = "governance_contract"
    __table_args__ = (UniqueConstraint("component", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    component: str = Field(index=True)
    version: int
    set_version: int
    created_at: datetime
    body: str = Field(sa_type=Text)


class NodeRow(SQLModel, table=True):
    """A registered node (current state; history is on the ledger)."""

    __tablename__ = "governance_node"
    node_id: str = Field(primary_key=True)
    role: str
    organisation: str = ""
    public_key: str | None = None
    status: str
    registered_at: datetime
    removed_at: datetime | None = None


class ProposalRow(SQLModel, table=True):
    """A proposal with its signed document and result."""

    __tablename__ = "governance_proposal"
    proposal_id: str = Field(primary_key=True)
    proposer: str = Field(index=True)
    kind: str
    status: str = Field(index=True)
    created_at: datetime
    deadline: datetime
    closed_at: datetime | None = None
    document: str = Field(sa_type=Text)
    signature: str
    tally: str | None = Field(default=None, sa_type=Text)
    outcome: str = Field(default="", sa_type=Text)


class VoteRow(SQLModel, table=True):
    """A signed vote; one per node per proposal."""

    __tablename__ = "governance_vote"
    __table_args__ = (UniqueConstraint("proposal_id", "voter"),)
    id: int | None = Field(default=None, primary_key=True)
    proposal_id: str = Field(index=True)
    voter: str
    choice: str
    nonce: str
    timestamp: str
    signature: str
    recorded_at: datetime


class NonceRow(SQLModel, table=True):
    """A nonce a node has used in a signed request (replay protection)."""

    __tablename__ = "governance_nonce"
    node_id: str = Field(primary_key=True)
    nonce: str = Field(primary_key=True)
    seen_at: datetime = Field(index=True)


class ParametersRow(SQLModel, table=True):
    """One version of the federation parameters."""

    __tablename__ = "governance_parameters"
    version: int = Field(primary_key=True)
    created_at: datetime
    cause: str = Field(default="", sa_type=Text)
    body: str = Field(sa_type=Text)


TABLES = [ActRow, ContractSetRow, ContractRow, NodeRow, ProposalRow, VoteRow, NonceRow, ParametersRow]


def _create_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Several processes may open the same database at once; create the tables one at a time.
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('sentinel-governance-init'))"))
        SQLModel.metadata.create_all(conn, tables=[t.__table__ for t in TABLES])  # type: ignore[attr-defined]


def _node(row: NodeRow) -> NodeRecord:
    return NodeRecord(
        node_id=row.node_id, role=row.role, organisation=row.organisation, public_key=row.public_key,
        status=row.status, registered_at=row.registered_at, removed_at=row.removed_at,
    )


def _proposal(row: ProposalRow) -> ProposalRecord:
    return ProposalRecord(
        proposal_id=row.proposal_id,
        document=ProposalDocument.model_validate_json(row.document),
        signature=row.signature,
        status=row.status,  # type: ignore[arg-type]  # written from ProposalStatus only
        created_at=row.created_at,
        deadline=row.deadline,
        closed_at=row.closed_at,
        tally=Tally.model_validate_json(row.tally) if row.tally else None,
        outcome=row.outcome,
    )


class StoreTransaction:
    """The writes (and consistent reads) of one governance act, inside one database transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def record_act(self, kind: str, actor: str, at: datetime, summary: str = "") -> None:
        """Add the act to the local audit trail (advances the state revision)."""
        self.session.add(ActRow(kind=kind, actor=actor, at=at, summary=summary))

    def put_contract_set(self, contracts: ContractSet, *, at: datetime, cause: str, changed: list[str] | None = None) -> None:
        """Store a new contract-set version and the component contracts that changed (all when None)."""
        self.session.add(
            ContractSetRow(
                version=contracts.version, model=contracts.model, content_hash=contracts.content_hash(),
                cause=cause, created_at=at, body=contracts.to_json(),
            )
        )
        for component in contracts.components() if changed is None else changed:
            contract = contracts.contracts[component]
            self.session.add(
                ContractRow(
                    component=component, version=contract.version, set_version=contracts.version,
                    created_at=at, body=contract.model_dump_json(),
                )
            )

    def put_node(self, record: NodeRecord) -> None:
        """Insert or replace a node's record."""
        row = self.session.get(NodeRow, record.node_id)
        if row is None:
            row = NodeRow(node_id=record.node_id, role=record.role, status=record.status, registered_at=record.registered_at)
        row.role, row.organisation, row.public_key = record.role, record.organisation, record.public_key
        row.status, row.registered_at, row.removed_at = record.status, record.registered_at, record.removed_at
        self.session.add(row)

    def put_parameters(self, parameters: FederationParameters, *, at: datetime, cause: str) -> None:
        """Store a new parameters version."""
        self.session.add(ParametersRow(version=parameters.version, created_at=at, cause=cause, body=parameters.model_dump_json()))

    def add_proposal(self, record: ProposalRecord) -> None:
        """Store a new proposal."""
        self.session.add(
            ProposalRow(
                proposal_id=record.proposal_id, proposer=record.proposer, kind=record.kind, status=record.status,
                created_at=record.created_at, deadline=record.deadline, document=record.document.model_dump_json(),
                signature=record.signature,
            )
        )

    def close_proposal(self, proposal_id: str, status: ProposalStatus, *, at: datetime, tally: Tally, outcome: str) -> bool:
        """Mark an open proposal closed; False if it was no longer open (someone else closed it)."""
        row = self.session.get(ProposalRow, proposal_id)
        if row is None or row.status != "open":
            return False
        row.status, row.closed_at, row.tally, row.outcome = status, at, tally.model_dump_json(), outcome
        self.session.add(row)
        return True

    def has_vote(self, proposal_id: str, voter: str) -> bool:
        """True iff ``voter`` already voted on the proposal."""
        stmt = select(VoteRow.id).where(VoteRow.proposal_id == proposal_id, VoteRow.voter == voter)
        return self.session.exec(stmt).first() is not None

    def add_vote(self, vote: SignedVote, *, at: datetime) -> None:
        """Store a verified vote."""
        b = vote.body
        self.session.add(
            VoteRow(proposal_id=b.proposal_id, voter=b.voter, choice=b.choice, nonce=b.nonce,
                    timestamp=b.timestamp, signature=vote.signature, recorded_at=at)
        )

    def nonce_used(self, node_id: str, nonce: str) -> bool:
        """True iff ``node_id`` already used ``nonce`` in a signed request."""
        return self.session.get(NonceRow, (node_id, nonce)) is not None

    def use_nonce(self, node_id: str, nonce: str, *, at: datetime) -> None:
        """Consume ``nonce`` for ``node_id``; :class:`ReplayedRequestError` if it was used before."""
        if self.nonce_used(node_id, nonce):
            raise ReplayedRequestError(f"nonce {nonce!r} of node {node_id!r} was already used: replayed request refused")
        self.session.add(NonceRow(node_id=node_id, nonce=nonce, seen_at=at))


class GovernanceStore:
    """The governance database: reads return validated domain objects; writes go through transactions."""

    def __init__(self, url: str | Path = "governance.db") -> None:
        self.url = database_url(url)
        try:
            self.engine = make_engine(self.url)
            _create_tables(self.engine)
        except SQLAlchemyError as e:
            raise StoreError(f"cannot open governance database {self.url!r}: {e}") from e

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[StoreTransaction]:
        """One atomic unit of work: committed on success, rolled back on any error."""
        with Session(self.engine, autoflush=False) as session:
            try:
                yield StoreTransaction(session)
                session.commit()
            except IntegrityError as e:
                session.rollback()
                if "governance_nonce" in str(e):
                    raise ReplayedRequestError("nonce already used: replayed request refused") from e
                raise StoreError(f"governance write conflicts with stored state: {e.orig}") from e
            except BaseException:
                session.rollback()
                raise

    def forget_nonces_before(self, before: datetime) -> None:
        """Drop nonces older than ``before`` (requests that old are refused by their timestamp anyway)."""
        with Session(self.engine) as s:
            s.exec(delete(NonceRow).where(NonceRow.seen_at < before))  # type: ignore[arg-type]
            s.commit()

    def parameters_stored(self) -> bool:
        """True iff any federation parameters were stored (else the defaults apply)."""
        with Session(self.engine) as s:
            return s.exec(select(ParametersRow.version)).first() is not None

    def revision(self) -> int:
        """The number of the latest act (changes whenever any governance state changes)."""
        with Session(self.engine) as s:
            return s.exec(select(func.max(ActRow.id))).one() or 0

    def contract_set(self, version: int | None = None) -> ContractSet | None:
        """The contract set of ``version`` (default: the latest), or None when none is stored."""
        with Session(self.engine) as s:
            stmt = select(ContractSetRow)
            stmt = stmt.where(ContractSetRow.version == version) if version is not None else stmt.order_by(ContractSetRow.version.desc())  # type: ignore[attr-defined]
            row = s.exec(stmt).first()
            return ContractSet.from_json(row.body) if row is not None else None

    def contract_history(self, component: str) -> list[ConsentContract]:
        """Every stored version of one component's contract, oldest first."""
        with Session(self.engine) as s:
            rows = s.exec(select(ContractRow).where(ContractRow.component == component).order_by(ContractRow.version)).all()
            return [ConsentContract.model_validate_json(r.body) for r in rows]

    def nodes(self) -> NodeRegistry:
        """A snapshot of the node registry (removed nodes included)."""
        with Session(self.engine) as s:
            return NodeRegistry(_node(r) for r in s.exec(select(NodeRow)).all())

    def parameters(self) -> FederationParameters:
        """The latest federation parameters (the defaults when none were stored)."""
        with Session(self.engine) as s:
            row = s.exec(select(ParametersRow).order_by(ParametersRow.version.desc())).first()  # type: ignore[attr-defined]
            return FederationParameters.model_validate_json(row.body) if row is not None else FederationParameters()

    def proposal(self, proposal_id: str) -> ProposalRecord | None:
        """One proposal, or None."""
        with Session(self.engine) as s:
            row = s.get(ProposalRow, proposal_id)
            return _proposal(row) if row is not None else None

    def proposals(
        self, status: ProposalStatus | None = None, *, after: tuple[datetime, str] | None = None, limit: int | None = None
    ) -> list[ProposalRecord]:
        """Proposals (optionally only those with ``status``), oldest first (by creation time, then id).

        ``after`` (creation time and id of a proposal) starts after that one and
        ``limit`` caps how many are returned: one page of a listing.
        """
        with Session(self.engine) as s:
            stmt = select(ProposalRow).order_by(ProposalRow.created_at, ProposalRow.proposal_id)
            if status is not None:
                stmt = stmt.where(ProposalRow.status == status)
            if after is not None:
                created, proposal_id = after
                stmt = stmt.where(
                    or_(
                        ProposalRow.created_at > created,  # type: ignore[arg-type]
                        and_(ProposalRow.created_at == created, ProposalRow.proposal_id > proposal_id),  # type: ignore[arg-type]
                    )
                )
            if limit is not None:
                stmt = stmt.limit(limit)
            return [_proposal(r) for r in s.exec(stmt).all()]

    def votes(self, proposal_id: str) -> list[SignedVote]:
        """The votes on a proposal, in the order they were recorded."""
        with Session(self.engine) as s:
            rows = s.exec(select(VoteRow).where(VoteRow.proposal_id == proposal_id).order_by(VoteRow.id)).all()
            return [
                SignedVote(
                    body=VoteBody(proposal_id=r.proposal_id, voter=r.voter, choice=r.choice, nonce=r.nonce, timestamp=r.timestamp),
                    signature=r.signature,
                )
                for r in rows
            ]
