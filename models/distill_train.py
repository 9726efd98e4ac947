"""A short distillation run: the student learns the teacher's outputs on (unlabelled) text.

What a central node does on ``train.distill``: teacher = base + global adapter
with all heads, student = the pruned model (`models.student`); the loss is
`models.distill.distillation_loss` (soft targets, plus hard labels where a
batch has them). Before and after training the student's divergence from the
teacher, ``KL(teacher ‖ student)`` at temperature 1, is measured on held-out
batches, so the coordinator can see what distillation bought.

Batches are dicts of model inputs (``input_ids``, ``attention_mask``, …);
``labels`` is optional, and ``teacher_logits`` (from `with_teacher_logits`)
saves running the teacher at every step. Classifiers give one distribution per
example; causal LMs one per real token (``attention_mask == 1``), and their
``labels`` are not used (the soft term alone).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from sentinel.models.distill import distillation_loss
from sentinel.models.loading import seeded

__all__ = ["DistillResult", "distill", "kl_divergence", "with_teacher_logits"]

Batch = Mapping[str, torch.Tensor]
TEACHER_LOGITS = "teacher_logits"
"""Batch key holding precomputed teacher logits (see `with_teacher_logits`)."""
_NOT_INPUTS = ("labels", TEACHER_LOGITS)


@dataclass
class DistillResult:
    """The trained student (the same object that was passed in) and what the run measured.

    `kl_before`/`kl_after`: mean ``KL(teacher ‖ student)`` per distribution on
    the held-out batches (NaN without them); `kl_after` is the returned
    student's. `losses`: the training loss per step. `reverted`: the run made
    held-out KL worse and `revert_if_worse` put the student's weights back.
    """

    student: torch.nn.Module
    steps: int
    kl_before: float
    kl_after: float
    losses: list[float] = field(default_factory=list)
    reverted: bool = False


def _inputs(batch: Batch, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k not in _NOT_INPUTS}


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _rows(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Logits as ``[rows, classes]``: one row per example, or per real token for ``[B, T, V]`` logits."""
    if logits.dim() == 3:
        mask = batch.get("attention_mask")
        if mask is None:
            return logits.reshape(-1, logits.shape[-1])
        return logits[mask.to(logits.device).bool()]
    return logits


def _teacher_logits(teacher: torch.nn.Module, batch: Batch) -> torch.Tensor:
    if TEACHER_LOGITS in batch:
        return batch[TEACHER_LOGITS]
    with torch.no_grad():
        return teacher(**_inputs(batch, _device(teacher))).logits


def with_teacher_logits(teacher: torch.nn.Module, batches: Iterable[Batch]) -> list[dict[str, torch.Tensor]]:
    """Copies of `batches` with the teacher's logits added under ``teacher_logits`` (teacher in eval mode).

    The teacher is fixed during distillation, so computing its logits once
    makes every later epoch cost only the student's forward and backward.
    """
    was_training = teacher.training
    teacher.eval()
    try:
        return [{**batch, TEACHER_LOGITS: _teacher_logits(teacher, batch).detach().cpu()} for batch in batches]
    finally:
        teacher.train(was_training)


@torch.no_grad()
def kl_divergence(
    teacher: torch.nn.Module, student: torch.nn.Module, batches: Iterable[Batch], temperature: float = 1.0
) -> float:
    """Mean ``KL(softmax(t/T) ‖ softmax(s/T))`` per distribution (example, or real token) over `batches`.

    Both models run in eval mode; their modes are restored. NaN for no batches.
    """
    modes = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    total, rows = 0.0, 0
    try:
        for batch in batches:
            t = _rows(_teacher_logits(teacher, batch).to(_device(student)), batch).double() / temperature
            s = _rows(student(**_inputs(batch, _device(student))).logits, batch).double() / temperature
            kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="sum", log_target=True)
            total += float(kl)
            rows += int(s.shape[0])
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    return total / rows if rows else math.nan


def _labels(batch: Batch, logits: torch.Tensor) -> torch.Tensor | None:
    labels = batch.get("labels")
    if labels is None or logits.dim() != 2:
        return None
    return labels.to(logits.device)


def distill(
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    batches: Iterable[Batch],
    steps: int,
    lr: float = 5e-5,
    temperature: float = 2.0,
    *,
    alpha: float = 0.5,
    held_out: Sequence[Batch] | None = None,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    revert_if_worse: bool = False,
) -> DistillResult:
    """Train `student` for `steps` optimiser steps to match `teacher`; returns it with KL before and after.

    Parameters
    ----------
    teacher, student
        Models with the same output space. The teacher is never changed. The
        student is trained in place (its parameters with ``requires_grad``:
        every weight of a plain model, the adapter of a PeftModel) and
        returned in eval mode.
    batches
        Training batches, cycled when fewer than `steps`; ``labels`` optional
        (mixed in with weight ``1 - alpha``), ``teacher_logits`` optional.
    steps, lr, weight_decay
        AdamW steps, learning rate and decoupled weight decay.
    temperature, alpha
        As in `models.distill.distillation_loss`.
    held_out
        Batches on which ``KL(teacher ‖ student)`` is measured before and after.
    max_grad_norm
        Clip the gradient norm to this (None: no clipping).
    make_optimizer
        Builds the optimiser from the student instead of AdamW (for example to
        boost newly grown heads with `models.regrowth.HeadLRBoost`).
    seed
        Seeds dropout; the caller's random state is left untouched.
    on_step
        Called with ``(step, loss)`` after every step (progress, logging).
    revert_if_worse
        With `held_out`: when training raised held-out KL (a student that starts
        very close to its teacher can drift on a small data set), restore the
        weights it had before, so distillation never leaves it further away.
    """
    if steps < 0:
        raise ValueError(f"`steps` must be >= 0, got {steps}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"`lr` must be a finite number > 0, got {lr!r}")
    held = list(held_out) if held_out is not None else []
    kl_before = kl_divergence(teacher, student, held) if held else math.nan
    initial = {k: v.detach().clone() for k, v in student.state_dict().items()} if revert_if_worse and held else None
    trainable = [p for p in student.parameters() if p.requires_grad]
    if steps and not trainable:
        raise ValueError(
            "`student` has no parameter with requires_grad; nothing to train (a student built from a merged "
            "PeftModel inherits its frozen weights: set `requires_grad` on what should learn, or attach LoRA)"
        )
    optimizer = (
        make_optimizer(student)
        if make_optimizer is not None
        else torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
    )
    teacher_mode = teacher.training
    teacher.eval()
    student.train()
    losses: list[float] = []
    device = _device(student)
    source = itertools.cycle(batches) if steps else iter(())
    try:
        with seeded(seed):
            for step, batch in zip(range(steps), source, strict=False):
                target = _rows(_teacher_logits(teacher, batch).to(device), batch)
                logits = _rows(student(**_inputs(batch, device)).logits, batch)
                loss = distillation_loss(logits, target, _labels(batch, logits), temperature=temperature, alpha=alpha)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                losses.append(float(loss.detach()))
                if on_step is not None:
                    on_step(step + 1, losses[-1])
    finally:
        teacher.train(teacher_mode)
        student.eval()
    if len(losses) < steps:
        raise ValueError("`batches` is empty: distillation needs at least one batch")
    kl_after = kl_divergence(teacher, student, held) if held else math.nan
    reverted = initial is not None and kl_after > kl_before
    if reverted:
        student.load_state_dict(initial)
        kl_after = kl_before
    return DistillResult(student, len(losses), kl_before, kl_after, losses, reverted)
