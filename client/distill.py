"""What a central node does on ``train.distill``: distil the global model into the pruned student.

Teacher = base + the global ΔW and head of the view the coordinator sent, with
every head. Student = that teacher with the view's head mask applied
physically (``models.student.build_student``) and, in the layers consent lets
it narrow, the FFN cut to a share of its width (neurons ranked by their
activations on this node's own texts). The student learns the teacher's soft
outputs on the node's own training texts (labels are not used: unlabelled text
is enough), for a configured number of steps (``models.distill_train.distill``);
KL(teacher ‖ student) on the node's validation split is measured before and
after. The input embeddings stay frozen (the teacher's, which the coordinator
has), and so do the components consent does not let this node ``distill``
(``models.distill_consent``), so the reply carries only the weights distillation changed. No Flower here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sentinel.client.data import Example
from sentinel.client.data.batching import iter_batches, sample_batches
from sentinel.client.training import GlobalView, materialise_global
from sentinel.models.components import model_layout
from sentinel.models.distill_consent import frozen_parameter_names, kept_heads
from sentinel.models.distill_train import distill, with_teacher_logits
from sentinel.models.global_model import evaluate_classifier
from sentinel.models.loading import LoadedModel
from sentinel.models.pruning import count_parameters
from sentinel.models.student import StudentSpec, build_student, student_arrays

__all__ = ["DistillSettings", "DistilledStudent", "distill_student", "student_payload"]


@dataclass(frozen=True)
class DistillSettings:
    """How to distil: optimiser steps, learning rate, temperature, FFN narrowing within consent."""

    steps: int
    learning_rate: float = 5e-5
    temperature: float = 2.0
    ffn_keep: float = 1.0
    """Share of each permitted layer's FFN width to keep (1.0: no narrowing)."""
    ffn_layers: tuple[int, ...] = ()
    """Layers whose FFN consent lets the student narrow; others keep their width."""
    revert_if_worse: bool = True
    frozen: tuple[str, ...] = ()
    """Components this node may not ``distill``: their student weights stay the teacher's (``models.distill_consent``)."""


@dataclass(frozen=True)
class DistilledStudent:
    """The distilled student as it travels back: its spec, changed weights and what the run measured."""

    spec: StudentSpec
    arrays: dict[str, np.ndarray]
    """``state_dict`` name → float32 value of every trainable parameter (the input embeddings are frozen, the teacher's)."""
    num_texts: int
    steps: int
    kl_before: float
    kl_after: float
    student_accuracy: float
    student_loss: float
    teacher_accuracy: float
    reverted: bool
    student_parameters: int
    teacher_parameters: int


def student_payload(node: str, server_round: int, content_hash: str, spec_json: str) -> dict[str, Any]:
    """What a central node signs over the student it returns: its key id, the round, the weights' hash, the spec's hash.

    The coordinator verifies it against the node's registered key before it
    exports anything, so a student is always the work of a known central node,
    exactly as received.
    """
    return {
        "kind": "student_submitted",
        "node": str(node),
        "round": int(server_round),
        "content_hash": content_hash,
        "spec_sha256": hashlib.sha256(spec_json.encode("utf-8")).hexdigest(),
    }


def _inputs_only(batches: Iterable[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """The batches without their labels: distillation learns from the teacher, not from labels."""
    return [{k: v for k, v in b.items() if k != "labels"} for b in batches]


def distill_student(
    base: LoadedModel,
    view: GlobalView,
    train: Sequence[Example],
    val: Sequence[Example],
    settings: DistillSettings,
    *,
    batch_size: int,
    max_length: int,
    seed: int,
    device: torch.device,
) -> DistilledStudent:
    """Distil the teacher of ``view`` into the pruned, narrowed student on this node's texts; measure it on ``val``."""
    if settings.steps < 1:
        raise ValueError(f"distillation needs at least one step, got {settings.steps}")
    if not train:
        raise ValueError("no training texts on this node: nothing to distil on")
    teacher = materialise_global(base, view).to(device).eval()
    texts = _inputs_only(sample_batches(base.tokenizer, train, batch_size, max_length, settings.steps, seed))
    student = build_student(
        teacher,
        view.head_mask,
        ffn_layers=settings.ffn_layers,
        ffn_keep=settings.ffn_keep,
        batches=texts[: min(len(texts), 8)],
    )
    model = student.model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    model.get_input_embeddings().weight.requires_grad_(False)
    names = [n for n, _ in model.named_parameters()]
    frozen = set(frozen_parameter_names(model_layout(teacher).family, names, settings.frozen, kept_heads(view.head_mask, model_layout(teacher))))
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    held_out = _inputs_only(iter_batches(base.tokenizer, val, batch_size, max_length)) if val else None
    result = distill(
        teacher,
        model,
        with_teacher_logits(teacher, texts),
        settings.steps,
        lr=settings.learning_rate,
        temperature=settings.temperature,
        held_out=held_out,
        seed=seed,
        revert_if_worse=settings.revert_if_worse and held_out is not None,
    )
    student_acc, student_loss = evaluate_classifier(model, iter_batches(base.tokenizer, val, batch_size, max_length))
    teacher_acc, _ = evaluate_classifier(teacher, iter_batches(base.tokenizer, val, batch_size, max_length))
    return DistilledStudent(
        spec=student.spec,
        arrays=student_arrays(model, trainable_only=True),
        num_texts=min(len(train), settings.steps * batch_size),
        steps=result.steps,
        kl_before=result.kl_before,
        kl_after=result.kl_after,
        student_accuracy=student_acc,
        student_loss=student_loss,
        teacher_accuracy=teacher_acc,
        reverted=result.reverted,
        student_parameters=count_parameters(model),
        teacher_parameters=count_parameters(teacher),
    )
