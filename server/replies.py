"""Reading a node's train reply into a :class:`NodeResult`, validated at the boundary.

Every value comes from a node and is untrusted: the metrics are checked by a
strict pydantic model (an example count must be an integer, a loss a finite
number), the arrays and importance reports are read as numpy arrays, and any
failure becomes a :class:`MalformedReplyError` whose message names the field.
"""

from __future__ import annotations

import math

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sentinel.ledger.recorder import content_hash_of_arrays
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record
from sentinel.server.outcome import NodeInfo, NodeResult


class MalformedReplyError(ValueError):
    """A reply that does not follow the message schema; the message names what is wrong."""


class TrainReplyMetrics(BaseModel):
    """The metrics record of a train reply."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=False)

    num_examples: int = Field(alias=P.M_EXAMPLES, ge=0)
    train_loss: float = Field(alias=P.M_TRAIN_LOSS)
    val_accuracy: float = Field(alias=P.M_VAL_ACC)
    rank: int = Field(alias=P.M_RANK, ge=1)
    scaling: float = Field(alias=P.M_SCALING)
    contract_version: int = Field(alias=P.M_CONTRACT_VERSION, default=0, ge=0)

    @field_validator("num_examples", "rank", "contract_version", mode="before")
    @classmethod
    def _integral(cls, value: object) -> object:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("must be an integer")
        return value

    @field_validator("scaling")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be finite")
        return value


def _record(msg: Message, key: str, kind: type) -> object:
    if key not in msg.content:
        raise MalformedReplyError(f"reply has no `{key}` record")
    record = msg.content[key]
    if not isinstance(record, kind):
        raise MalformedReplyError(f"reply record `{key}` is a {type(record).__name__}, expected {kind.__name__}")
    return record


def parse_train_reply(msg: Message, node: NodeInfo) -> NodeResult:
    """The reply's content as a NodeResult; :class:`MalformedReplyError` names what does not follow the schema."""
    record = _record(msg, P.REC_ARRAYS, ArrayRecord)
    try:
        metrics = TrainReplyMetrics.model_validate(dict(_record(msg, P.REC_METRICS, MetricRecord)))  # type: ignore[call-overload]
    except ValidationError as e:
        err = e.errors()[0]
        raise MalformedReplyError(f"metric `{err['loc'][0]}`: {err['msg']}") from e
    try:
        arrays = from_array_record(record)  # type: ignore[arg-type]
        importance = from_array_record(msg.content[P.REC_IMPORTANCE]) if P.REC_IMPORTANCE in msg.content else {}
    except (TypeError, ValueError, AttributeError) as e:
        raise MalformedReplyError(f"arrays do not decode: {e}") from e
    result = NodeResult(
        node=node,
        accepted=True,
        num_examples=metrics.num_examples,
        train_loss=metrics.train_loss,
        val_accuracy=metrics.val_accuracy,
        rank=metrics.rank,
        scaling=metrics.scaling,
        contract_version=metrics.contract_version,
        bytes_up=record.count_bytes(),  # type: ignore[attr-defined]
        arrays=arrays,
        entropy=importance.get(P.KEY_ENTROPY),
        gradient_importance=importance.get(P.KEY_GRAD_IMPORTANCE),
        normalised_entropy=importance.get(P.KEY_ENTROPY_NORMALISED),
    )
    result.content_hash = content_hash_of_arrays(arrays)
    if P.REC_SIGNATURE in msg.content:
        signed = _record(msg, P.REC_SIGNATURE, ConfigRecord)
        try:
            result.signature = str(signed[P.S_SIGNATURE])  # type: ignore[index]
            result.claimed_hash = str(signed[P.S_CONTENT_HASH])  # type: ignore[index]
        except KeyError as e:
            raise MalformedReplyError(f"signature record lacks `{e.args[0]}`") from e
    return result
