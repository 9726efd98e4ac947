from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Grant(_message.Message):
    __slots__ = ("roles", "nodes", "everyone")
    ROLES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EVERYONE_FIELD_NUMBER: _ClassVar[int]
    roles: _containers.RepeatedScalarFieldContainer[str]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    everyone: bool
    def __init__(self, roles: _Optional[_Iterable[str]] = ..., nodes: _Optional[_Iterable[str]] = ..., everyone: _Optional[bool] = ...) -> None: ...

class AgencyState(_message.Message):
    __slots__ = ("state", "reason", "since", "source")
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    state: str
    reason: str
    since: str
    source: str
    def __init__(self, state: _Optional[str] = ..., reason: _Optional[str] = ..., since: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ConsentContract(_message.Message):
    __slots__ = ("component", "steward", "operations", "purposes", "expires_at", "agency", "version")
    class OperationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Grant
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Grant, _Mapping]] = ...) -> None: ...
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    STEWARD_FIELD_NUMBER: _ClassVar[int]
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    AGENCY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    component: str
    steward: str
    operations: _containers.MessageMap[str, Grant]
    purposes: _containers.RepeatedScalarFieldContainer[str]
    expires_at: str
    agency: AgencyState
    version: int
    def __init__(self, component: _Optional[str] = ..., steward: _Optional[str] = ..., operations: _Optional[_Mapping[str, Grant]] = ..., purposes: _Optional[_Iterable[str]] = ..., expires_at: _Optional[str] = ..., agency: _Optional[_Union[AgencyState, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class ListContractsRequest(_message.Message):
    __slots__ = ("pattern", "page_size", "page_token")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    page_size: int
    page_token: str
    def __init__(self, pattern: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListContractsResponse(_message.Message):
    __slots__ = ("model", "set_version", "content_hash", "contracts", "next_page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CONTRACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    set_version: int
    content_hash: str
    contracts: _containers.RepeatedCompositeFieldContainer[ConsentContract]
    next_page_token: str
    def __init__(self, model: _Optional[str] = ..., set_version: _Optional[int] = ..., content_hash: _Optional[str] = ..., contracts: _Optional[_Iterable[_Union[ConsentContract, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetContractRequest(_message.Message):
    __slots__ = ("component",)
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    component: str
    def __init__(self, component: _Optional[str] = ...) -> None: ...

class GetContractResponse(_message.Message):
    __slots__ = ("contract", "set_version")
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    contract: ConsentContract
    set_version: int
    def __init__(self, contract: _Optional[_Union[ConsentContract, _Mapping]] = ..., set_version: _Optional[int] = ...) -> None: ...

class CheckPermissionRequest(_message.Message):
    __slots__ = ("node_id", "operation", "component", "at_time")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    AT_TIME_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    operation: str
    component: str
    at_time: str
    def __init__(self, node_id: _Optional[str] = ..., operation: _Optional[str] = ..., component: _Optional[str] = ..., at_time: _Optional[str] = ...) -> None: ...

class CheckPermissionResponse(_message.Message):
    __slots__ = ("allowed", "reason", "set_version")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SET_VERSION_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: str
    set_version: int
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., set_version: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("node_id", "role", "organisation", "public_key", "status", "registered_at", "removed_at")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    REMOVED_AT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    organisation: str
    public_key: str
    status: str
    registered_at: str
    removed_at: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., organisation: _Optional[str] = ..., public_key: _Optional[str] = ..., status: _Optional[str] = ..., registered_at: _Optional[str] = ..., removed_at: _Optional[str] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ("include_removed", "page_size", "page_token")
    INCLUDE_REMOVED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    include_removed: bool
    page_size: int
    page_token: str
    def __init__(self, include_removed: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes", "next_page_token")
    NODES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    next_page_token: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SignedEnvelope(_message.Message):
    __slots__ = ("node_id", "nonce", "timestamp", "signature")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    nonce: str
    timestamp: str
    signature: str
    def __init__(self, node_id: _Optional[str] = ..., nonce: _Optional[str] = ..., timestamp: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class ContractChange(_message.Message):
    __slots__ = ("operation", "components", "roles", "nodes", "everyone")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    EVERYONE_FIELD_NUMBER: _ClassVar[int]
    operation: str
    components: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    nodes: _containers.RepeatedScalarFieldContainer[str]
    everyone: bool
    def __init__(self, operation: _Optional[str] = ..., components: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ..., nodes: _Optional[_Iterable[str]] = ..., everyone: _Optional[bool] = ...) -> None: ...

class SetAgency(_message.Message):
    __slots__ = ("components", "state", "reason")
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    components: _containers.RepeatedScalarFieldContainer[str]
    state: str
    reason: str
    def __init__(self, components: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RegisterNode(_message.Message):
    __slots__ = ("node_id", "role", "organisation", "public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ORGANISATION_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    organisation: str
    public_key: str
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., organisation: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class RemoveNode(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SetParameter(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class ProposalSpec(_message.Message):
    __slots__ = ("grant", "revoke", "set_agency", "register_node", "remove_node", "set_parameter")
    GRANT_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    SET_AGENCY_FIELD_NUMBER: _ClassVar[int]
    REGISTER_NODE_FIELD_NUMBER: _ClassVar[int]
    REMOVE_NODE_FIELD_NUMBER: _ClassVar[int]
    SET_PARAMETER_FIELD_NUMBER: _ClassVar[int]
    grant: ContractChange
    revoke: ContractChange
    set_agency: SetAgency
    register_node: RegisterNode
    remove_node: RemoveNode
    set_parameter: SetParameter
    def __init__(self, grant: _Optional[_Union[ContractChange, _Mapping]] = ..., revoke: _Optional[_Union[ContractChange, _Mapping]] = ..., set_agency: _Optional[_Union[SetAgency, _Mapping]] = ..., register_node: _Optional[_Union[RegisterNode, _Mapping]] = ..., remove_node: _Optional[_Union[RemoveNode, _Mapping]] = ..., set_parameter: _Optional[_Union[SetParameter, _Mapping]] = ...) -> None: ...

class SubmitProposalRequest(_message.Message):
    __slots__ = ("title", "deadline", "spec", "auth")
    TITLE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    title: str
    deadline: str
    spec: ProposalSpec
    auth: SignedEnvelope
    def __init__(self, title: _Optional[str] = ..., deadline: _Optional[str] = ..., spec: _Optional[_Union[ProposalSpec, _Mapping]] = ..., auth: _Optional[_Union[SignedEnvelope, _Mapping]] = ...) -> None: ...

class Tally(_message.Message):
    __slots__ = ("yes", "no", "abstain", "eligible", "quorum", "majority", "quorum_reached", "majority_reached")
    YES_FIELD_NUMBER: _ClassVar[int]
    NO_FIELD_NUMBER: _ClassVar[int]
    ABSTAIN_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    QUORUM_FIELD_NUMBER: _ClassVar[int]
    MAJORITY_FIELD_NUMBER: _ClassVar[int]
    QUORUM_REACHED_FIELD_NUMBER: _ClassVar[int]
    MAJORITY_REACHED_FIELD_NUMBER: _ClassVar[int]
    yes: int
    no: int
    abstain: int
    eligible: int
    quorum: float
    majority: float
    quorum_reached: bool
    majority_reached: bool
    def __init__(self, yes: _Optional[int] = ..., no: _Optional[int] = ..., abstain: _Optional[int] = ..., eligible: _Optional[int] = ..., quorum: _Optional[float] = ..., majority: _Optional[float] = ..., quorum_reached: _Optional[bool] = ..., majority_reached: _Optional[bool] = ...) -> None: ...

class Proposal(_message.Message):
    __slots__ = ("proposal_id", "proposer", "kind", "title", "spec", "status", "created_at", "deadline", "closed_at", "tally", "outcome", "auth", "requested_deadline")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    PROPOSER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    TALLY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    proposer: str
    kind: str
    title: str
    spec: ProposalSpec
    status: str
    created_at: str
    deadline: str
    closed_at: str
    tally: Tally
    outcome: str
    auth: SignedEnvelope
    requested_deadline: str
    def __init__(self, proposal_id: _Optional[str] = ..., proposer: _Optional[str] = ..., kind: _Optional[str] = ..., title: _Optional[str] = ..., spec: _Optional[_Union[ProposalSpec, _Mapping]] = ..., status: _Optional[str] = ..., created_at: _Optional[str] = ..., deadline: _Optional[str] = ..., closed_at: _Optional[str] = ..., tally: _Optional[_Union[Tally, _Mapping]] = ..., outcome: _Optional[str] = ..., auth: _Optional[_Union[SignedEnvelope, _Mapping]] = ..., requested_deadline: _Optional[str] = ...) -> None: ...

class SubmitProposalResponse(_message.Message):
    __slots__ = ("proposal",)
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    proposal: Proposal
    def __init__(self, proposal: _Optional[_Union[Proposal, _Mapping]] = ...) -> None: ...

class CastVoteRequest(_message.Message):
    __slots__ = ("proposal_id", "choice", "auth")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    choice: str
    auth: SignedEnvelope
    def __init__(self, proposal_id: _Optional[str] = ..., choice: _Optional[str] = ..., auth: _Optional[_Union[SignedEnvelope, _Mapping]] = ...) -> None: ...

class CastVoteResponse(_message.Message):
    __slots__ = ("proposal",)
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    proposal: Proposal
    def __init__(self, proposal: _Optional[_Union[Proposal, _Mapping]] = ...) -> None: ...

class Vote(_message.Message):
    __slots__ = ("proposal_id", "voter", "choice", "nonce", "timestamp", "signature")
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    VOTER_FIELD_NUMBER: _ClassVar[int]
    CHOICE_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    voter: str
    choice: str
    nonce: str
    timestamp: str
    signature: str
    def __init__(self, proposal_id: _Optional[str] = ..., voter: _Optional[str] = ..., choice: _Optional[str] = ..., nonce: _Optional[str] = ..., timestamp: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class ListProposalsRequest(_message.Message):
    __slots__ = ("status", "page_size", "page_token")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    status: str
    page_size: int
    page_token: str
    def __init__(self, status: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProposalsResponse(_message.Message):
    __slots__ = ("proposals", "next_page_token")
    PROPOSALS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    proposals: _containers.RepeatedCompositeFieldContainer[Proposal]
    next_page_token: str
    def __init__(self, proposals: _Optional[_Iterable[_Union[Proposal, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetProposalRequest(_message.Message):
    __slots__ = ("proposal_id",)
    PROPOSAL_ID_FIELD_NUMBER: _ClassVar[int]
    proposal_id: str
    def __init__(self, proposal_id: _Optional[str] = ...) -> None: ...

class GetProposalResponse(_message.Message):
    __slots__ = ("proposal", "votes")
    PROPOSAL_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    proposal: Proposal
    votes: _containers.RepeatedCompositeFieldContainer[Vote]
    def __init__(self, proposal: _Optional[_Union[Proposal, _Mapping]] = ..., votes: _Optional[_Iterable[_Union[Vote, _Mapping]]] = ...) -> None: ...
