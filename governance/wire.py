"""Conversions between governance objects and their GovernanceService protobuf messages.

Both sides of the wire use these functions, so a signed document rebuilt by the
server from a request is byte-for-byte the one the client signed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sentinel.governance.contracts import ConsentContract, ContractSet
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.proposals import ProposalDocument, ProposalRecord, ProposalSpec, SignedProposal, SignedVote, VoteBody
from sentinel.governance.registry import NodeRecord
from sentinel.governance.voting import Tally
from sentinel.protos import governance_pb2 as pb

_SPEC_ADAPTER: TypeAdapter[Any] = TypeAdapter(ProposalSpec)
_SPEC_MESSAGES = {
    "grant": pb.ContractChange,
    "revoke": pb.ContractChange,
    "set_agency": pb.SetAgency,
    "register_node": pb.RegisterNode,
    "remove_node": pb.RemoveNode,
    "set_parameter": pb.SetParameter,
}


def _time(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _invalid(what: str, e: ValidationError) -> InvalidRequestError:
    problems = "; ".join(f"`{'.'.join(str(p) for p in err['loc']) or what}`: {err['msg']}" for err in e.errors())
    return InvalidRequestError(f"invalid {what}: {problems}")


def _fields(message: Any) -> dict[str, Any]:
    """A flat protobuf message as a dict (repeated fields as lists)."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        out[field.name] = list(value) if _repeated(field) else value
    return out


def _repeated(field: Any) -> bool:
    # protobuf >= 6 has `is_repeated` and deprecates `label`; older versions only have `label`.
    is_repeated = getattr(field, "is_repeated", None)
    return bool(is_repeated) if is_repeated is not None else field.label == field.LABEL_REPEATED


# ---------------------------------------------------------------- contracts
def contract_to_pb(contract: ConsentContract) -> pb.ConsentContract:
    """Protobuf form of a contract."""
    data = contract.model_dump(mode="json")
    return pb.ConsentContract(
        component=contract.component,
        steward=contract.steward,
        operations={op: pb.Grant(**grant) for op, grant in data["operations"].items()},
        purposes=contract.purposes,
        expires_at=_time(contract.expires_at),
        agency=pb.AgencyState(**data["agency"]),
        version=contract.version,
    )


def contract_from_pb(message: pb.ConsentContract) -> ConsentContract:
    """A contract from its protobuf form (validated)."""
    return ConsentContract.model_validate(
        {
            "component": message.component,
            "steward": message.steward,
            "operations": {op: _fields(g) for op, g in message.operations.items()},
            "purposes": list(message.purposes),
            "expires_at": message.expires_at or None,
            "agency": _fields(message.agency),
            "version": message.version,
        }
    )


def contract_set_to_pb(
    contracts: ContractSet, page: Iterable[pb.ConsentContract] | None = None, next_page_token: str = ""
) -> pb.ListContractsResponse:
    """A ListContracts answer: the set's identity and one page of its contracts (default: all of them)."""
    return pb.ListContractsResponse(
        model=contracts.model,
        set_version=contracts.version,
        content_hash=contracts.content_hash(),
        contracts=list(page) if page is not None else [contract_to_pb(c) for c in contracts],
        next_page_token=next_page_token,
    )


def contract_set_from_pb(message: pb.ListContractsResponse, more: Iterable[pb.ConsentContract] = ()) -> ContractSet:
    """A contract set from a ListContracts answer (only the contracts it carried, and ``more`` from later pages)."""
    contracts = {c.component: contract_from_pb(c) for c in [*message.contracts, *more]}
    return ContractSet(model=message.model, version=message.set_version, contracts=contracts)


# ---------------------------------------------------------------- nodes
def node_to_pb(record: NodeRecord) -> pb.Node:
    """Protobuf form of a node record."""
    return pb.Node(
        node_id=record.node_id, role=record.role, organisation=record.organisation, public_key=record.public_key or "",
        status=record.status, registered_at=_time(record.registered_at), removed_at=_time(record.removed_at),
    )


def node_from_pb(message: pb.Node) -> NodeRecord:
    """A node record from its protobuf form."""
    return NodeRecord(
        node_id=message.node_id, role=message.role, organisation=message.organisation,  # type: ignore[arg-type]
        public_key=message.public_key or None, status=message.status,  # type: ignore[arg-type]
        registered_at=message.registered_at, removed_at=message.removed_at or None,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- proposals
def spec_to_pb(spec: ProposalSpec) -> pb.ProposalSpec:
    """Protobuf form of a proposal spec (the oneof case is the spec's ``kind``)."""
    data = spec.model_dump(mode="json")
    kind = data.pop("kind")
    return pb.ProposalSpec(**{kind: _SPEC_MESSAGES[kind](**data)})


def spec_from_pb(message: pb.ProposalSpec) -> ProposalSpec:
    """A proposal spec from its protobuf form; :class:`InvalidRequestError` when empty or invalid."""
    kind = message.WhichOneof("spec")
    if kind is None:
        raise InvalidRequestError("`spec` is empty; set one of: " + ", ".join(_SPEC_MESSAGES))
    try:
        return _SPEC_ADAPTER.validate_python({"kind": kind, **_fields(getattr(message, kind))})
    except ValidationError as e:
        raise _invalid(f"{kind} proposal", e) from e


def envelope_to_pb(node_id: str, nonce: str, timestamp: str, signature: str) -> pb.SignedEnvelope:
    """A signed envelope."""
    return pb.SignedEnvelope(node_id=node_id, nonce=nonce, timestamp=timestamp, signature=signature)


def submit_request(signed: SignedProposal) -> pb.SubmitProposalRequest:
    """The SubmitProposal request carrying a signed proposal."""
    doc = signed.document
    return pb.SubmitProposalRequest(
        title=doc.title, deadline=doc.deadline, spec=spec_to_pb(doc.spec),
        auth=envelope_to_pb(doc.proposer, doc.nonce, doc.timestamp, signed.signature),
    )


def proposal_from_request(request: pb.SubmitProposalRequest) -> SignedProposal:
    """The signed proposal a SubmitProposal request carries (the document rebuilt as the client signed it)."""
    spec = spec_from_pb(request.spec)
    auth = request.auth
    try:
        document = ProposalDocument(
            proposer=auth.node_id, nonce=auth.nonce, timestamp=auth.timestamp,
            title=request.title, deadline=request.deadline, spec=spec,
        )
    except ValidationError as e:
        raise _invalid("proposal", e) from e
    return SignedProposal(document=document, signature=auth.signature)


def vote_request(signed: SignedVote) -> pb.CastVoteRequest:
    """The CastVote request carrying a signed vote."""
    b = signed.body
    return pb.CastVoteRequest(
        proposal_id=b.proposal_id, choice=b.choice, auth=envelope_to_pb(b.voter, b.nonce, b.timestamp, signed.signature)
    )


def vote_from_request(request: pb.CastVoteRequest) -> SignedVote:
    """The signed vote a CastVote request carries."""
    auth = request.auth
    try:
        body = VoteBody(
            proposal_id=request.proposal_id, voter=auth.node_id, choice=request.choice,  # type: ignore[arg-type]
            nonce=auth.nonce, timestamp=auth.timestamp,
        )
    except ValidationError as e:
        raise _invalid("vote", e) from e
    return SignedVote(body=body, signature=auth.signature)


def vote_to_pb(vote: SignedVote) -> pb.Vote:
    """Protobuf form of a stored vote."""
    return pb.Vote(**vote.body.signed_payload(), signature=vote.signature)


def tally_to_pb(tally: Tally) -> pb.Tally:
    """Protobuf form of a tally."""
    return pb.Tally(
        yes=tally.yes, no=tally.no, abstain=tally.abstain, eligible=tally.eligible, quorum=tally.quorum,
        majority=tally.majority, quorum_reached=tally.quorum_reached, majority_reached=tally.majority_reached,
    )


def proposal_to_pb(record: ProposalRecord, tally: Tally | None = None) -> pb.Proposal:
    """Protobuf form of a proposal; ``tally`` (the running count) is used while it is open."""
    doc = record.document
    shown = record.tally or tally
    return pb.Proposal(
        proposal_id=record.proposal_id, proposer=doc.proposer, kind=record.kind, title=doc.title,
        spec=spec_to_pb(doc.spec), status=record.status, created_at=_time(record.created_at),
        deadline=_time(record.deadline), closed_at=_time(record.closed_at),
        tally=tally_to_pb(shown) if shown is not None else None, outcome=record.outcome,
        auth=envelope_to_pb(doc.proposer, doc.nonce, doc.timestamp, record.signature),
        requested_deadline=doc.deadline,
    )


def proposal_from_pb(message: pb.Proposal) -> ProposalRecord:
    """A proposal record from its protobuf form (document rebuilt from spec and envelope)."""
    auth = message.auth
    document = ProposalDocument(
        proposer=auth.node_id, nonce=auth.nonce, timestamp=auth.timestamp, title=message.title,
        deadline=message.requested_deadline, spec=spec_from_pb(message.spec),
    )
    tally = None
    if message.HasField("tally"):
        t = message.tally
        tally = Tally(yes=t.yes, no=t.no, abstain=t.abstain, eligible=t.eligible, quorum=t.quorum, majority=t.majority)
    return ProposalRecord(
        proposal_id=message.proposal_id, document=document, signature=auth.signature,
        status=message.status, created_at=message.created_at, deadline=message.deadline,  # type: ignore[arg-type]
        closed_at=message.closed_at or None, tally=tally, outcome=message.outcome,  # type: ignore[arg-type]
    )

