"""The Flower ClientApp of a Sentinel node: profile handshake, local training, evaluation, distillation.

Thin by design: it parses messages, calls ``client.training`` and packs the reply.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sentinel.client.data import Example, load_examples
from sentinel.client.data.federated import federated_split, node_train_val, own_train_val
from sentinel.client.error_feedback import (
    STATE_RESIDUAL,
    load_residual,
    residual_from_record,
    residual_record,
    residual_store_dir,
    save_residual,
)
from sentinel.client.frames import Factor, FrameScale, Subframe
from sentinel.client.node import NodeIdentity, cached_base_model, node_identity, node_key, node_public_key
from sentinel.client.training import GlobalView, LocalUpdate, resolve_device, train_local
from sentinel.ledger.crypto import Ed25519PrivateKey, public_key_b64
from sentinel.ledger.recorder import content_hash_of_arrays, update_submitted_payload
from sentinel.ledger.signing import sign_payload
from sentinel.models.edge_bundle import BundleRunner, manifest_sha256
from sentinel.models.loading import LoadedModel
from sentinel.models.regrowth import HeadBoost
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, parse_global_view, to_array_record
from sentinel.protos.vocabulary import Role, node_id_of_key, parse_component

app = ClientApp()

MAX_BOOST_FACTOR = 100.0
"""The largest learning-rate factor a node accepts for regrown heads (``boost-lr-factor``)."""


class TrainInstruction(BaseModel):
    """The config of a train message, validated at the boundary."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    server_round: int = Field(alias=P.C_ROUND, ge=1)
    role: Role = Field(alias=P.C_ROLE)
    lora_rank: int = Field(alias=P.C_RANK, ge=1)
    local_steps: int = Field(alias=P.C_STEPS, ge=1)
    local_epochs: float = Field(alias=P.C_EPOCHS, ge=0, default=0.0)
    batch_size: int = Field(alias=P.C_BATCH, ge=1)
    learning_rate: float = Field(alias=P.C_LR, gt=0)
    seed: int = Field(alias=P.C_SEED)
    model: str = Field(alias=P.C_MODEL)
    dataset: str = Field(alias=P.C_DATASET)
    partition: str = Field(alias=P.C_PARTITION)
    num_partitions: int = Field(alias=P.C_NUM_PARTITIONS, ge=1)
    dirichlet_alpha: float = Field(alias=P.C_ALPHA, gt=0)
    test_fraction: float = Field(alias=P.C_TEST_FRACTION)
    val_fraction: float = Field(alias=P.C_VAL_FRACTION)
    max_length: int = Field(alias=P.C_MAX_LENGTH, ge=4)
    consent_restricted: bool = Field(alias=P.C_RESTRICTED, default=False)
    permitted: list[str] = Field(alias=P.C_PERMITTED, default_factory=list)
    contract_version: int = Field(alias=P.C_CONTRACT_VERSION, default=0, ge=0)
    run_seed: int = Field(alias=P.C_RUN_SEED, default=0)
    num_labels: int | None = Field(alias=P.C_NUM_LABELS, default=None, ge=2)
    boost_heads: list[str] = Field(alias=P.C_BOOST_HEADS, default_factory=list)
    boost_factor: float | None = Field(alias=P.C_BOOST_FACTOR, default=None, ge=1.0, le=MAX_BOOST_FACTOR)
    adapter_start: Literal["", "continue"] = Field(alias=P.C_ADAPTER_START, default="")
    frame_gain: float = Field(alias=P.C_FRAME_GAIN, default=1.0, gt=0, le=P.MAX_FRAME_GAIN)
    frame_scale: FrameScale = Field(alias=P.C_FRAME_SCALE, default="balanced")
    frame_rank: int = Field(alias=P.C_FRAME_RANK, default=0, ge=0, le=P.MAX_LORA_RANK)
    subframe: Subframe = Field(alias=P.C_SUBFRAME, default="top")
    error_feedback: bool = Field(alias=P.C_ERROR_FEEDBACK, default=False)
    measure_gradient: bool = Field(alias=P.C_MEASURE_GRADIENT, default=True)

    @field_validator("boost_heads")
    @classmethod
    def _boost_heads_are_heads(cls, heads: list[str]) -> list[str]:
        for cid in heads:
            if parse_component(cid).kind != "head":
                raise ValueError(f"`{P.C_BOOST_HEADS}`: {cid!r} is not an attention head (`layer.<i>.head.<j>`)")
        return heads

    @model_validator(mode="after")
    def _frame_holds_the_adapter(self) -> TrainInstruction:
        if self.frame_rank and self.frame_rank < self.lora_rank:
            raise ValueError(f"`{P.C_FRAME_RANK}` ({self.frame_rank}) is below this node's `{P.C_RANK}` ({self.lora_rank})")
        return self

    @model_validator(mode="after")
    def _boost_is_whole(self) -> TrainInstruction:
        if bool(self.boost_heads) != (self.boost_factor is not None):
            raise ValueError(f"`{P.C_BOOST_HEADS}` and `{P.C_BOOST_FACTOR}` come together or not at all")
        return self

    def boost(self) -> HeadBoost | None:
        """The regrown heads to train at a boosted rate this round (checked against the model in ``train_local``)."""
        if self.boost_factor is None:
            return None
        return HeadBoost(tuple(dict.fromkeys(self.boost_heads)), self.boost_factor)

    def steps_for(self, num_train: int) -> int:
        """Optimiser steps this round: from local epochs when given, else local steps."""
        if self.local_epochs > 0:
            return max(1, math.ceil(self.local_epochs * num_train / self.batch_size))
        return self.local_steps


def declared_examples(ident: NodeIdentity) -> int | None:
    """The training examples this node declares: its operator's ``declared-examples``, else the size of its own dataset.

    A node on a partition of the run's data declares nothing unless told to: the
    coordinator knows its partition's size.
    """
    if ident.declared_examples is not None:
        return ident.declared_examples
    if ident.dataset:
        return len(load_examples(ident.dataset))
    return None


@app.query("profile")
def profile(msg: Message, context: Context) -> Message:
    """Tell the coordinator who this node is: partition, configured role, public key."""
    ident = node_identity(context)
    run_seed = int(msg.content[P.REC_CONFIG].get(P.C_RUN_SEED, 0)) if P.REC_CONFIG in msg.content else 0
    record = ConfigRecord(
        {
            P.P_PARTITION_ID: ident.partition_id,
            P.P_NUM_PARTITIONS: ident.num_partitions,
            P.P_ROLE: ident.role or "",
            P.P_PUBLIC_KEY: node_public_key(ident, run_seed),
            **({P.P_OWN_DATA: True} if ident.dataset else {}),
            **({P.P_DECLARED_EXAMPLES: declared} if (declared := declared_examples(ident)) is not None else {}),
            **({P.P_LORA_RANK: ident.lora_rank} if ident.lora_rank is not None else {}),
        }
    )
    return Message(RecordDict({P.REC_PROFILE: record}), reply_to=msg)


@dataclass(frozen=True)
class RoundInputs:
    """What a train or evaluate message resolves to on this node."""

    identity: NodeIdentity
    instruction: TrainInstruction
    base: LoadedModel
    train_set: list[Example]
    val_set: list[Example]
    view: GlobalView
    train_factor: Factor | None = None
    """The factor to train in the shared frame (``client.frames``); None: a fresh adapter."""


def node_data(ident: NodeIdentity, ins: TrainInstruction) -> tuple[list[Example], list[Example], int]:
    """This node's train and validation examples and the run's label count (its own dataset, or its partition of the run's)."""
    if ident.dataset:  # this node's own data (`sentinel node --dataset`): all of it is the node's
        num_labels = ins.num_labels
        if num_labels is None:
            raise ValueError("the coordinator did not send `num-labels`, which a node with its own dataset needs")
        train_set, val_set = own_train_val(ident.dataset, num_labels, ins.val_fraction, ins.run_seed, ident.partition_id)
        return train_set, val_set, num_labels
    data = federated_split(ins.dataset, ins.num_partitions, ins.partition, ins.dirichlet_alpha, ins.test_fraction, ins.run_seed)
    train_set, val_set = node_train_val(data, ident.partition_id, ins.val_fraction, ins.run_seed)
    return train_set, val_set, data.num_labels


def node_inputs(
    msg: Message, context: Context
) -> tuple[NodeIdentity, TrainInstruction, LoadedModel, list[Example], list[Example]]:
    """Validate the message's config and load (cached) the base model and this node's train and validation data.

    The base model is built with the run's seed, as the coordinator builds it, so
    both sides start from the same weights.
    """
    ident = node_identity(context)
    ins = TrainInstruction.model_validate(dict(msg.content[P.REC_CONFIG]))
    train_set, val_set, num_labels = node_data(ident, ins)
    base = cached_base_model(ins.model, num_labels, ins.run_seed)
    return ident, ins, base, train_set, val_set


def resolve_round(msg: Message, context: Context) -> RoundInputs:
    """Validate the message and load (cached) the model, this node's data and its view of the global model."""
    ident, ins, base, train_set, val_set = node_inputs(msg, context)
    factors, head, head_mask = parse_global_view(from_array_record(msg.content[P.REC_ARRAYS]))
    factor = str(msg.content[P.REC_CONFIG].get(P.C_TRAIN_FACTOR, ""))
    if factor not in ("", "a", "b"):
        raise ValueError(f"`{P.C_TRAIN_FACTOR}` must be 'a', 'b' or '', got {factor!r}")
    view = GlobalView(factors=factors, head=head, head_mask=head_mask)
    return RoundInputs(ident, ins, base, train_set, val_set, view, cast(Factor, factor) if factor else None)  # checked above


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train a LoRA on the global model (in the shared frame, or fresh) within the permitted set and reply with it."""
    inputs = resolve_round(msg, context)
    ins = inputs.instruction
    kept = STATE_RESIDUAL in context.state
    if not (ins.error_feedback or kept):
        return update_reply(msg, context, local_update(inputs, inputs.train_set))
    store = residual_store(inputs.identity, ins, context)
    residual = None
    if ins.error_feedback:  # what this node trained but has not sent yet (none kept: start empty)
        record = context.state.array_records.get(STATE_RESIDUAL)  # this process's copy; after a restart, the disk's
        residual = residual_from_record(record) if record is not None else (load_residual(store, ins.server_round) or {})
    update = local_update(inputs, inputs.train_set, residual)
    if update.residual is not None:
        context.state[STATE_RESIDUAL] = residual_record(update.residual)
        save_residual(store, ins.server_round, update.residual)
    elif kept:  # error feedback has ended for this node: drop its remainder everywhere
        del context.state[STATE_RESIDUAL]
        shutil.rmtree(store, ignore_errors=True)
    return update_reply(msg, context, update)


def residual_store(ident: NodeIdentity, ins: TrainInstruction, context: Context) -> Path:
    """Where this node keeps its error-feedback residual on disk (``client.error_feedback.residual_store_dir``)."""
    key = node_key(ident.partition_id, ident.key_file, ins.run_seed)
    return residual_store_dir(ident.state_dir, ident.node_keys, ident.partition_id, key_id(key), context.run_id)


def local_update(
    inputs: RoundInputs, train_set: list[Example], residual: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
) -> LocalUpdate:
    """This round's local training on ``train_set``, as the train message instructs (``residual``: error feedback)."""
    ins = inputs.instruction
    return train_local(
        inputs.base,
        inputs.view,
        train_set,
        inputs.val_set,
        rank=ins.lora_rank,
        steps=ins.steps_for(len(train_set)),
        batch_size=ins.batch_size,
        learning_rate=ins.learning_rate,
        max_length=ins.max_length,
        seed=ins.seed,
        permitted=set(ins.permitted) if ins.consent_restricted else None,
        device=resolve_device(inputs.identity.device),
        frame=inputs.train_factor,
        continued=ins.adapter_start == "continue",
        frame_seed=ins.run_seed,
        frame_gain=ins.frame_gain,
        frame_scale=ins.frame_scale,
        frame_rank=ins.frame_rank or None,
        subframe=ins.subframe,
        measure_gradient=ins.measure_gradient,
        server_round=ins.server_round,
        boost=ins.boost(),
        residual=residual,
    )


def update_reply(msg: Message, context: Context, update: LocalUpdate) -> Message:
    """The signed train reply carrying ``update``."""
    ins = TrainInstruction.model_validate(dict(msg.content[P.REC_CONFIG]))
    metrics = {
        P.M_EXAMPLES: update.num_examples,
        P.M_TRAIN_LOSS: update.train_loss,
        P.M_VAL_ACC: update.val_accuracy,
        P.M_VAL_LOSS: update.val_loss,
        P.M_SCALING: update.scaling,
        P.M_RANK: update.rank,
        P.M_CONTRACT_VERSION: ins.contract_version,  # the contracts this update was trained under
    }
    importance = {P.KEY_ENTROPY: update.entropy, P.KEY_ENTROPY_NORMALISED: update.normalised_entropy}
    if update.gradient_importance is not None:
        importance[P.KEY_GRAD_IMPORTANCE] = update.gradient_importance
    return signed_update_reply(msg, context, update.arrays, metrics, importance)


def key_id(key: Ed25519PrivateKey) -> str:
    """This node's lasting id: derived from its public key, as the coordinator derives it."""
    return node_id_of_key(public_key_b64(key))


def signed_update_reply(
    msg: Message,
    context: Context,
    arrays: dict[str, np.ndarray],
    metrics: dict[str, int | float],
    importance: dict[str, np.ndarray],
) -> Message:
    """The train reply: the update's arrays, metrics and importance, signed by this node's key.

    The node vouches for its update by signing exactly the ledger's submission
    payload (node, round, content hash of the arrays, example count), where the
    node is its key id (``protos.vocabulary.node_id_of_key``), not Flower's node id.
    """
    ident = node_identity(context)
    ins = TrainInstruction.model_validate(dict(msg.content[P.REC_CONFIG]))
    content_hash = content_hash_of_arrays(arrays)
    key = node_key(ident.partition_id, ident.key_file, ins.run_seed)
    payload = update_submitted_payload(key_id(key), ins.server_round, content_hash, int(metrics[P.M_EXAMPLES]))
    signature = sign_payload(key, payload)
    content = RecordDict(
        {
            P.REC_ARRAYS: to_array_record(arrays),
            P.REC_METRICS: MetricRecord(dict(metrics)),
            P.REC_IMPORTANCE: to_array_record(importance),
            P.REC_SIGNATURE: ConfigRecord({P.S_CONTENT_HASH: content_hash, P.S_SIGNATURE: signature}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global model on this node's validation data: accuracy, loss, per-domain accuracy, ECE, KL from the base.

    An edge node whose operator configured an edge bundle (``edge-bundle`` in its
    node config) answers from the bundle through onnxruntime instead: the
    distilled student is the model it actually serves.
    """
    ident = node_identity(context)
    ins = TrainInstruction.model_validate(dict(msg.content[P.REC_CONFIG]))
    bundle = context.node_config.get(P.NODE_EDGE_BUNDLE)
    if bundle and (ident.role or ins.role) == "edge":
        return _bundle_evaluate_reply(msg, ident, ins, str(bundle))
    from sentinel.client.evaluation import global_model_metrics, metric_values

    inputs = resolve_round(msg, context)
    device = resolve_device(inputs.identity.device)
    metrics = global_model_metrics(inputs.base, inputs.view, inputs.val_set, ins.batch_size * 2, ins.max_length, device)
    content = RecordDict(
        {
            P.REC_METRICS: MetricRecord(metric_values(metrics, inputs.val_set)),
            P.REC_EVALUATOR: ConfigRecord({P.E_RUNTIME: P.RUNTIME_TORCH, P.E_BUNDLE_SHA256: ""}),
        }
    )
    return Message(content, reply_to=msg)


@lru_cache(maxsize=4)
def _bundle_runner(directory: str, manifest_sha256: str) -> BundleRunner:
    """The verified bundle at ``directory`` (reloaded when its manifest changes)."""
    del manifest_sha256  # part of the cache key only
    return BundleRunner(directory)


def _bundle_evaluate_reply(msg: Message, ident: NodeIdentity, ins: TrainInstruction, directory: str | Path) -> Message:
    """The evaluate reply of an edge node from an edge bundle (onnxruntime; the base model is never loaded)."""
    from sentinel.client.edge import evaluate_bundle
    from sentinel.client.evaluation import edge_metric_values

    _, val_set, _ = node_data(ident, ins)
    digest = manifest_sha256(directory)
    result = evaluate_bundle(_bundle_runner(str(directory), digest), val_set, batch_size=ins.batch_size * 2)
    content = RecordDict(
        {
            P.REC_METRICS: MetricRecord(edge_metric_values(result, val_set)),
            P.REC_EVALUATOR: ConfigRecord({P.E_RUNTIME: P.RUNTIME_ONNX, P.E_BUNDLE_SHA256: digest}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate("edge")
def evaluate_edge(msg: Message, context: Context) -> Message:
    """Edge nodes only: install the delivered edge bundle when one came with the message, then evaluate it.

    The bundle to evaluate is the one whose manifest hash the config names
    (``bundle-manifest-sha256``, the hash on the ledger). Delivered files are
    verified before they are installed (``client.edge_install``); a node asked
    about a bundle it does not hold and was not sent fails with that reason,
    and the coordinator sends it the files.
    """
    from sentinel.client.edge_install import bundle_store_dir, install_bundle, installed_bundle
    from sentinel.protos.records import bundle_files_of

    ident = node_identity(context)
    ins = TrainInstruction.model_validate(dict(msg.content[P.REC_CONFIG]))
    if (ident.role or ins.role) != "edge":
        raise PermissionError(f"`{P.MSG_EDGE_EVALUATE}` is for edge nodes; this node's role is {ident.role or ins.role!r}")
    digest = str(msg.content[P.REC_CONFIG].get(P.C_BUNDLE_SHA256, ""))
    key = node_key(ident.partition_id, ident.key_file, ins.run_seed)
    store = bundle_store_dir(ident.edge_bundle_dir, ident.node_keys, ident.partition_id, key_id(key))
    if P.REC_BUNDLE in msg.content:
        directory = install_bundle(store, digest, bundle_files_of(cast(ArrayRecord, msg.content[P.REC_BUNDLE])))
    else:
        found = installed_bundle(store, digest)
        if found is None:
            raise FileNotFoundError(f"edge bundle {digest[:12]} is not installed on this node and was not sent")
        directory = found
    return _bundle_evaluate_reply(msg, ident, ins, directory)


class DistillInstruction(BaseModel):
    """The distillation keys of a ``train.distill`` message's config, validated at the boundary."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    steps: int = Field(alias=P.C_DISTILL_STEPS, ge=1, le=100_000)
    learning_rate: float = Field(alias=P.C_DISTILL_LR, gt=0, le=1.0, default=5e-5)
    temperature: float = Field(alias=P.C_DISTILL_TEMPERATURE, gt=0, le=100.0, default=2.0)
    ffn_keep: float = Field(alias=P.C_FFN_KEEP, gt=0, le=1.0, default=1.0)
    ffn_layers: list[int] = Field(alias=P.C_FFN_LAYERS, default_factory=list)
    revert_if_worse: bool = Field(alias=P.C_REVERT_IF_WORSE, default=True)
    frozen: list[str] = Field(alias=P.C_DISTILL_FROZEN, default_factory=list)

    @field_validator("frozen")
    @classmethod
    def _components(cls, value: list[str]) -> list[str]:
        for cid in value:
            parse_component(cid)  # a component id, or a clear error naming it
        return value


@app.train("distill")
def train_distill(msg: Message, context: Context) -> Message:
    """Central nodes only: distil the global model (all heads) into the pruned student on this node's own texts.

    Replies with the student's spec, its changed weights and its evaluation on
    this node's validation split (accuracy, KL(teacher ‖ student) before and
    after), signed by this node's key (``client.distill.student_payload``).
    Any other role refuses with an error reply.
    """
    from sentinel.client.distill import DistillSettings, distill_student, student_payload

    ident = node_identity(context)
    ins = TrainInstruction.model_validate(dict(msg.content[P.REC_CONFIG]))
    if ins.role != "central" or ident.role not in (None, "central"):
        raise PermissionError(f"`{P.MSG_DISTILL}` is for central nodes; this node's role is {ident.role or ins.role!r}")
    settings = DistillInstruction.model_validate(dict(msg.content[P.REC_CONFIG]))
    inputs = resolve_round(msg, context)
    student = distill_student(
        inputs.base,
        inputs.view,
        inputs.train_set,
        inputs.val_set,
        DistillSettings(
            steps=settings.steps,
            learning_rate=settings.learning_rate,
            temperature=settings.temperature,
            ffn_keep=settings.ffn_keep,
            ffn_layers=tuple(settings.ffn_layers),
            revert_if_worse=settings.revert_if_worse,
            frozen=tuple(settings.frozen),
        ),
        batch_size=ins.batch_size,
        max_length=ins.max_length,
        seed=ins.seed,
        device=resolve_device(ident.device),
    )
    metrics = {
        P.M_EXAMPLES: student.num_texts,
        P.M_DISTILL_STEPS: student.steps,
        P.M_KL_BEFORE: student.kl_before,
        P.M_KL_AFTER: student.kl_after,
        P.M_STUDENT_ACCURACY: student.student_accuracy,
        P.M_STUDENT_LOSS: student.student_loss,
        P.M_TEACHER_ACCURACY: student.teacher_accuracy,
        P.M_REVERTED: int(student.reverted),
        P.M_STUDENT_PARAMETERS: student.student_parameters,
        P.M_TEACHER_PARAMETERS: student.teacher_parameters,
    }
    spec_json = student.spec.model_dump_json()
    content_hash = content_hash_of_arrays(student.arrays)
    key = node_key(ident.partition_id, ident.key_file, ins.run_seed)
    signature = sign_payload(key, student_payload(key_id(key), ins.server_round, content_hash, spec_json))
    content = RecordDict(
        {
            P.REC_ARRAYS: to_array_record(student.arrays),
            P.REC_METRICS: MetricRecord(metrics),
            P.REC_STUDENT: ConfigRecord({P.S_SPEC: spec_json}),
            P.REC_SIGNATURE: ConfigRecord({P.S_CONTENT_HASH: content_hash, P.S_SIGNATURE: signature}),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate("validate")
def validate(msg: Message, context: Context) -> Message:
    """Judge candidate updates against the exact global model on this node's validation data (signed verdicts)."""
    from sentinel.client.validation import validate_candidates

    ident, ins, base, _, val_set = node_inputs(msg, context)
    key = node_key(ident.partition_id, ident.key_file, ins.run_seed)
    content = validate_candidates(msg.content, base, val_set, ins, key_id(key), key, resolve_device(ident.device))
    return Message(content, reply_to=msg)


__all__ = [
    "DistillInstruction",
    "RoundInputs",
    "TrainInstruction",
    "app",
    "local_update",
    "node_data",
    "node_inputs",
    "resolve_round",
    "key_id",
    "signed_update_reply",
    "update_reply",
]
