"""Distillation on central nodes, coordinator side: the ``train.distill`` message, the reply check, the edge bundle.

The coordinator sends each central node the exact global model (factors of
ΔW, the head, the global head mask) and the distillation settings; the node
distils it into the pruned student on its own texts (``client.distill``) and
replies with the student's spec, its changed weights and its evaluation.
Nothing in the reply is trusted: the spec must prune exactly the heads the
mask says and narrow only the FFN layers consent allows, to the width the
settings give; every array must be a weight the student has, of the shape the
spec gives, float32 and finite; every metric in range. The accepted student
(the one closest to its teacher on its node's held-out data) is exported as
the edge bundle (``models.edge_export.export_bundle``: ONNX, tokenizer,
manifest with hashes) whose manifest hash the ledger can record.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pydantic
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from sentinel.client.distill import student_payload
from sentinel.ledger.recorder import content_hash_of_arrays
from sentinel.ledger.signing import payload_signature_valid
from sentinel.models.components import model_layout
from sentinel.models.distill_consent import frozen_parameter_names, kept_heads
from sentinel.models.edge_bundle import Precision, manifest_sha256
from sentinel.models.edge_export import export_bundle
from sentinel.models.ffn import widths_for
from sentinel.models.global_model import materialise
from sentinel.models.head_mask import pruned_of_mask
from sentinel.models.loading import LoadedModel
from sentinel.models.pruning import count_parameters
from sentinel.models.student import StudentSpec, apply_student_spec, load_student
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, global_view_record
from sentinel.server.aggregation import exact_factorise_all
from sentinel.server.outcome import NodeInfo
from sentinel.server.replies import MalformedReplyError
from sentinel.server.state import GlobalState

__all__ = [
    "DistillPlan",
    "DistillSettings",
    "ExportedStudent",
    "StudentReply",
    "StudentReplyMetrics",
    "check_distill_reply",
    "configure_distill",
    "distill_on_central_nodes",
    "exact_view_record",
    "expected_student_shapes",
    "export_student",
]

ConfigOf = Callable[[NodeInfo], ConfigRecord]
FrozenFn = Callable[[NodeInfo], Iterable[str]]
"""central node → the component ids it may not ``distill`` (consent)."""
"""node → its train-message config for this round (``SentinelStrategy.node_config``), which the node validates."""

Share = Annotated[float, pydantic.Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, pydantic.Field(ge=0.0, allow_inf_nan=False)]


class DistillSettings(pydantic.BaseModel):
    """What the coordinator asks of a distillation: steps, optimiser, temperature, FFN narrowing share."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    steps: int = pydantic.Field(default=50, ge=1, le=100_000)
    learning_rate: float = pydantic.Field(default=5e-5, gt=0, le=1.0)
    temperature: float = pydantic.Field(default=2.0, gt=0, le=100.0)
    ffn_keep: float = pydantic.Field(default=1.0, gt=0, le=1.0, description="Share of a permitted layer's FFN width kept.")
    revert_if_worse: bool = True


@dataclass(frozen=True)
class DistillPlan:
    """The distill messages, and what each central node was sent (its reply is checked against it)."""

    server_round: int
    messages: list[Message]
    nodes: dict[int, NodeInfo]
    head_mask: np.ndarray | None
    ffn_layers: tuple[int, ...]
    settings: DistillSettings
    frozen: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Node id → the components it may not ``distill`` (their weights must not be in its reply)."""


def exact_view_record(state: GlobalState, tolerance: float = 1e-6) -> ArrayRecord:
    """The exact global model as a view (ΔW factors at the rank each module has, the head, the head mask)."""
    parts, _ = exact_factorise_all(state.deltas, tolerance, min_rank=1)
    factors = {m: (p.a.astype(np.float32), p.b.astype(np.float32)) for m, p in parts.items()}
    return global_view_record(factors, state.head, state.head_mask)


def configure_distill(
    server_round: int,
    state: GlobalState,
    nodes: Sequence[NodeInfo],
    config_of: ConfigOf,
    settings: DistillSettings,
    ffn_layers: Iterable[int] = (),
    frozen_of: FrozenFn | None = None,
) -> DistillPlan:
    """One ``train.distill`` message per central node (others get none): the exact view and the settings.

    ``ffn_layers`` are the layers whose ``layer.{i}.ffn`` contract allows
    ``prune`` (``models.ffn.ffn_layers_of`` over the permitted components);
    with ``settings.ffn_keep < 1`` only they are narrowed. ``frozen_of`` gives
    each node the components it may not ``distill`` (``models.distill_consent``).
    """
    central = [n for n in sorted(nodes, key=lambda n: n.partition_id) if n.role == "central"]
    frozen = {n.node_id: tuple(sorted(frozen_of(n))) if frozen_of is not None else () for n in central}
    layers = tuple(sorted({int(i) for i in ffn_layers})) if settings.ffn_keep < 1.0 else ()
    view = exact_view_record(state)
    messages = []
    for node in central:
        config = config_of(node)
        config[P.C_ROUND] = server_round  # the round the node signs its student for
        config[P.C_DISTILL_STEPS] = settings.steps
        config[P.C_DISTILL_LR] = settings.learning_rate
        config[P.C_DISTILL_TEMPERATURE] = settings.temperature
        config[P.C_FFN_KEEP] = settings.ffn_keep
        config[P.C_FFN_LAYERS] = list(layers)
        config[P.C_REVERT_IF_WORSE] = settings.revert_if_worse
        config[P.C_DISTILL_FROZEN] = list(frozen[node.node_id])
        content = RecordDict({P.REC_ARRAYS: view, P.REC_CONFIG: config})
        messages.append(Message(content=content, message_type=P.MSG_DISTILL, dst_node_id=node.node_id))
    mask = None if state.head_mask is None else np.asarray(state.head_mask).copy()
    return DistillPlan(server_round, messages, {n.node_id: n for n in central}, mask, layers, settings, {n.node_id: frozen[n.node_id] for n in central})



class StudentReplyMetrics(pydantic.BaseModel):
    """The metrics of a distill reply, range-checked (a node cannot report a NaN or an accuracy of 2)."""

    model_config = pydantic.ConfigDict(extra="ignore", populate_by_name=True)

    num_texts: int = pydantic.Field(alias=P.M_EXAMPLES, ge=1)
    steps: int = pydantic.Field(alias=P.M_DISTILL_STEPS, ge=0)
    kl_before: NonNegative = pydantic.Field(alias=P.M_KL_BEFORE)
    kl_after: NonNegative = pydantic.Field(alias=P.M_KL_AFTER)
    student_accuracy: Share = pydantic.Field(alias=P.M_STUDENT_ACCURACY)
    student_loss: NonNegative = pydantic.Field(alias=P.M_STUDENT_LOSS)
    teacher_accuracy: Share = pydantic.Field(alias=P.M_TEACHER_ACCURACY)
    reverted: bool = pydantic.Field(alias=P.M_REVERTED)
    student_parameters: int = pydantic.Field(alias=P.M_STUDENT_PARAMETERS, ge=1)
    teacher_parameters: int = pydantic.Field(alias=P.M_TEACHER_PARAMETERS, ge=1)

    @pydantic.field_validator("num_texts", "steps", "student_parameters", "teacher_parameters", "reverted", mode="before")
    @classmethod
    def _integral(cls, value: object) -> object:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("must be an integer")
        return int(value) if isinstance(value, float) else value


@dataclass(frozen=True)
class StudentReply:
    """A checked distill reply: who sent it, the student's spec, its weights and its evaluation."""

    node: NodeInfo
    spec: StudentSpec
    arrays: dict[str, np.ndarray]
    metrics: StudentReplyMetrics


def _teacher(base: LoadedModel, state: GlobalState) -> torch.nn.Module:
    return materialise(base, state.deltas, state.head).eval()


def expected_student_shapes(teacher: torch.nn.Module, spec: StudentSpec) -> dict[str, tuple[int, ...]]:
    """``state_dict`` name → shape of the student ``spec`` describes, built on a copy of ``teacher``."""
    student = apply_student_spec(copy.deepcopy(teacher), spec)
    return {k: tuple(int(x) for x in v.shape) for k, v in student.state_dict().items()}


def _spec_problem(spec: StudentSpec, plan: DistillPlan, teacher: torch.nn.Module) -> str:
    """Why ``spec`` is not the student that was asked for ('' when it is)."""
    sent = {} if plan.head_mask is None else pruned_of_mask(plan.head_mask)
    got = {int(k): sorted(v) for k, v in spec.pruned_heads.items() if v}
    if got != {int(k): sorted(v) for k, v in sent.items()}:
        return f"the student prunes heads {got}, the global head mask prunes {sent}"
    outside = sorted(set(spec.ffn_neurons) - set(plan.ffn_layers))
    if outside:
        return f"the student narrows the FFN of layers {outside}, which consent does not allow"
    expected = widths_for(teacher, list(plan.ffn_layers), plan.settings.ffn_keep) if plan.ffn_layers else {}
    for layer, width in spec.ffn_widths.items():
        if width != expected.get(layer):
            return f"layer {layer}: the student keeps {width} FFN neurons, the settings give {expected.get(layer)}"
        if len(set(spec.ffn_neurons[layer])) != width:
            return f"layer {layer}: FFN neuron ids repeat"
    original = widths_for(teacher, list(expected), 1.0) if expected else {}
    for layer, ids in spec.ffn_neurons.items():
        if max(ids, default=-1) >= original.get(layer, 0):
            return f"layer {layer}: FFN neuron id {max(ids)} is outside the layer"
    return ""


def check_distill_reply(
    reply: Message, plan: DistillPlan, base: LoadedModel, state: GlobalState, *, require_signature: bool = True
) -> StudentReply:
    """The reply as a :class:`StudentReply`, or :class:`MalformedReplyError` naming what is wrong.

    With ``require_signature`` (the default) the reply must be signed by the
    node's registered key over exactly the weights and spec received.
    """
    src = reply.metadata.src_node_id
    if src not in plan.nodes:
        raise MalformedReplyError(f"a distill reply from node {src}, which was not asked to distil")
    if reply.has_error():
        raise MalformedReplyError(f"node {src} answered with an error: {reply.error.reason}")
    content = reply.content
    for key, kind in ((P.REC_ARRAYS, ArrayRecord), (P.REC_METRICS, MetricRecord), (P.REC_STUDENT, ConfigRecord)):
        if key not in content or not isinstance(content[key], kind):
            raise MalformedReplyError(f"distill reply has no `{key}` {kind.__name__}")
    try:
        metrics = StudentReplyMetrics.model_validate(dict(content[P.REC_METRICS]))
        spec = StudentSpec.model_validate_json(str(content[P.REC_STUDENT].get(P.S_SPEC, "")))
    except pydantic.ValidationError as e:
        raise MalformedReplyError(f"distill reply: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from e
    if metrics.steps > plan.settings.steps:
        raise MalformedReplyError(f"distill reply claims {metrics.steps} steps, {plan.settings.steps} were asked for")
    teacher = _teacher(base, state)
    problem = _spec_problem(spec, plan, teacher)
    if problem:
        raise MalformedReplyError(f"distill reply: {problem}")
    shapes = expected_student_shapes(teacher, spec)
    arrays = from_array_record(content[P.REC_ARRAYS])
    if not arrays:
        raise MalformedReplyError("distill reply carries no weights")
    frozen = set(frozen_parameter_names(model_layout(teacher).family, shapes, plan.frozen.get(src, ()), kept_heads(plan.head_mask, model_layout(teacher))))
    for name, value in arrays.items():
        if name not in shapes:
            raise MalformedReplyError(f"distill reply: `{name}` is not a weight of the student")
        if name in frozen:
            raise MalformedReplyError(f"distill reply changes `{name}`, which belongs to a component this node may not distill")
        if tuple(value.shape) != shapes[name]:
            raise MalformedReplyError(f"distill reply: `{name}` has shape {tuple(value.shape)}, the student's is {shapes[name]}")
        if value.dtype != np.float32:
            raise MalformedReplyError(f"distill reply: `{name}` is {value.dtype}, expected float32")
        if not np.isfinite(value).all():
            raise MalformedReplyError(f"distill reply: `{name}` has non-finite values")
    node = plan.nodes[src]
    if require_signature:
        _check_signature(content, node, plan.server_round, arrays, str(content[P.REC_STUDENT].get(P.S_SPEC, "")))
    return StudentReply(node, spec, arrays, metrics)


def _check_signature(content: RecordDict, node: NodeInfo, server_round: int, arrays: Mapping[str, np.ndarray], spec_json: str) -> None:
    """The reply is signed by ``node``'s registered key over the weights and the spec as received."""
    if not node.public_key:
        raise MalformedReplyError(f"node {node.key_id} has no registered key: its student cannot be authenticated")
    record = content[P.REC_SIGNATURE] if P.REC_SIGNATURE in content else None
    if not isinstance(record, ConfigRecord):
        raise MalformedReplyError("distill reply is not signed")
    payload = student_payload(node.key_id, server_round, content_hash_of_arrays(arrays), spec_json)
    if not payload_signature_valid(node.public_key, str(record.get(P.S_SIGNATURE, "")), payload):
        raise MalformedReplyError(f"distill reply: the signature is not node {node.key_id}'s over the student received")


@dataclass(frozen=True)
class ExportedStudent:
    """The edge bundle written from an accepted student."""

    path: Path
    manifest_sha256: str
    """The one hash that pins the bundle (what the ledger records)."""
    student_parameters: int
    teacher_parameters: int
    node: str
    """Key id of the central node that distilled it."""


def export_student(
    base: LoadedModel,
    state: GlobalState,
    reply: StudentReply,
    directory: str | Path,
    *,
    name: str | None = None,
    precision: Precision = "fp32",
    contracts: str | Mapping[str, Any] | None = None,
    max_length: int | None = None,
    model_card: Mapping[str, str] | None = None,
) -> ExportedStudent:
    """Rebuild the student on the coordinator's teacher and export it as the edge bundle (manifest with hashes)."""
    teacher = _teacher(base, state)
    student = load_student(teacher, reply.spec, reply.arrays)
    m = reply.metrics
    card = {
        "teacher": f"{base.name} + global adapter (round {state.round})",
        "distilled_by": reply.node.key_id,
        "student_accuracy": f"{m.student_accuracy:.4f}",
        "teacher_accuracy": f"{m.teacher_accuracy:.4f}",
        "kl_before": f"{m.kl_before:.6f}",
        "kl_after": f"{m.kl_after:.6f}",
        **dict(model_card or {}),
    }
    path = export_bundle(
        student,
        base.tokenizer,
        directory,
        name=name or base.name,
        precision=precision,
        contracts=contracts,
        max_length=max_length,
        model_card=card,
        teacher_parameters=count_parameters(teacher),
    )
    return ExportedStudent(path, manifest_sha256(path), count_parameters(student), count_parameters(teacher), reply.node.key_id)


@dataclass
class DistillationRound:
    """What one distillation produced: the checked replies, the rejected ones with why, and the chosen student."""

    replies: list[StudentReply] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    """Key id → why its reply was refused."""
    chosen: StudentReply | None = None
    exported: ExportedStudent | None = None


def distill_on_central_nodes(
    grid: Grid,
    server_round: int,
    state: GlobalState,
    nodes: Sequence[NodeInfo],
    config_of: ConfigOf,
    base: LoadedModel,
    bundle_dir: str | Path | None,
    settings: DistillSettings,
    *,
    ffn_layers: Iterable[int] = (),
    timeout: float | None = None,
    contracts: str | Mapping[str, Any] | None = None,
    max_length: int | None = None,
    require_signature: bool = True,
    precision: Precision = "fp32",
    frozen_of: FrozenFn | None = None,
) -> DistillationRound:
    """Send ``train.distill`` to the central nodes, check the replies, export the student closest to its teacher.

    The chosen student is the accepted one with the lowest KL(teacher ‖ student)
    after distillation on its node's held-out data; with ``bundle_dir`` it is
    exported there as the edge bundle.
    """
    plan = configure_distill(server_round, state, nodes, config_of, settings, ffn_layers, frozen_of)
    result = DistillationRound()
    if not plan.messages:
        return result
    answered: set[int] = set()
    for reply in grid.send_and_receive(plan.messages, timeout=timeout):
        src = reply.metadata.src_node_id
        answered.add(src)
        who = plan.nodes[src].key_id if src in plan.nodes else f"flower-{src}"
        try:
            result.replies.append(check_distill_reply(reply, plan, base, state, require_signature=require_signature))
        except MalformedReplyError as e:
            result.rejected[who] = str(e)
    for node_id, node in plan.nodes.items():
        if node_id not in answered:
            result.rejected[node.key_id] = "no reply within the timeout"
    if result.replies:
        result.chosen = min(result.replies, key=lambda r: (r.metrics.kl_after, r.node.partition_id))
        if bundle_dir is not None:
            result.exported = export_student(
                base, state, result.chosen, bundle_dir, precision=precision, contracts=contracts, max_length=max_length
            )
    return result
