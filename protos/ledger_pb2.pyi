from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("seq", "timestamp", "kind", "actor", "payload_json", "prev_hash", "prev_signature", "hash", "signature", "node_signature", "node_public_key", "node")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    PREV_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NODE_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NODE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    timestamp: str
    kind: str
    actor: str
    payload_json: str
    prev_hash: str
    prev_signature: str
    hash: str
    signature: str
    node_signature: str
    node_public_key: str
    node: str
    def __init__(self, seq: _Optional[int] = ..., timestamp: _Optional[str] = ..., kind: _Optional[str] = ..., actor: _Optional[str] = ..., payload_json: _Optional[str] = ..., prev_hash: _Optional[str] = ..., prev_signature: _Optional[str] = ..., hash: _Optional[str] = ..., signature: _Optional[str] = ..., node_signature: _Optional[str] = ..., node_public_key: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class GetEntriesRequest(_message.Message):
    __slots__ = ("start", "page_size", "kind", "node", "page_token")
    START_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    start: int
    page_size: int
    kind: str
    node: str
    page_token: str
    def __init__(self, start: _Optional[int] = ..., page_size: _Optional[int] = ..., kind: _Optional[str] = ..., node: _Optional[str] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[Entry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetEntryRequest(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class GetNodeSummaryRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class Contribution(_message.Message):
    __slots__ = ("seq", "round", "score", "method")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    round: int
    score: str
    method: str
    def __init__(self, seq: _Optional[int] = ..., round: _Optional[int] = ..., score: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class NodeSummary(_message.Message):
    __slots__ = ("node", "registered", "role", "public_key", "submitted", "accepted", "rejected", "consent_violations", "contributions", "contribution_total", "token_balance")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    CONSENT_VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTIONS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_BALANCE_FIELD_NUMBER: _ClassVar[int]
    node: str
    registered: bool
    role: str
    public_key: str
    submitted: int
    accepted: int
    rejected: int
    consent_violations: int
    contributions: _containers.RepeatedCompositeFieldContainer[Contribution]
    contribution_total: str
    token_balance: int
    def __init__(self, node: _Optional[str] = ..., registered: _Optional[bool] = ..., role: _Optional[str] = ..., public_key: _Optional[str] = ..., submitted: _Optional[int] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ..., consent_violations: _Optional[int] = ..., contributions: _Optional[_Iterable[_Union[Contribution, _Mapping]]] = ..., contribution_total: _Optional[str] = ..., token_balance: _Optional[int] = ...) -> None: ...

class SignedHead(_message.Message):
    __slots__ = ("seq", "hash", "signature")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hash: str
    signature: str
    def __init__(self, seq: _Optional[int] = ..., hash: _Optional[str] = ..., signature: _Optional[str] = ...) -> None: ...

class VerifyChainRequest(_message.Message):
    __slots__ = ("public_key", "check_node_signatures", "head")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    CHECK_NODE_SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    check_node_signatures: bool
    head: SignedHead
    def __init__(self, public_key: _Optional[str] = ..., check_node_signatures: _Optional[bool] = ..., head: _Optional[_Union[SignedHead, _Mapping]] = ...) -> None: ...

class VerifyChainResponse(_message.Message):
    __slots__ = ("ok", "checked", "first_bad_seq", "reason", "problem", "public_key", "head_seq")
    OK_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    checked: int
    first_bad_seq: int
    reason: str
    problem: str
    public_key: str
    head_seq: int
    def __init__(self, ok: _Optional[bool] = ..., checked: _Optional[int] = ..., first_bad_seq: _Optional[int] = ..., reason: _Optional[str] = ..., problem: _Optional[str] = ..., public_key: _Optional[str] = ..., head_seq: _Optional[int] = ...) -> None: ...

class StreamEntriesRequest(_message.Message):
    __slots__ = ("start", "kind", "node")
    START_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    start: int
    kind: str
    node: str
    def __init__(self, start: _Optional[int] = ..., kind: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class GetBalancesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetBalancesResponse(_message.Message):
    __slots__ = ("balances",)
    class BalancesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    balances: _containers.ScalarMap[str, int]
    def __init__(self, balances: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("count", "head_seq", "head_hash", "public_key")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    HEAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    HEAD_HASH_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    count: int
    head_seq: int
    head_hash: str
    public_key: str
    def __init__(self, count: _Optional[int] = ..., head_seq: _Optional[int] = ..., head_hash: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...
