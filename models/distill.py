"""Knowledge-distillation loss: a pruned student learns from the full teacher.

Central nodes distil "base + global adapter, all heads" (teacher) into the
pruned model (student); this module holds the loss they minimise, as a pure
function of logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label value that marks a position without a label (as in `torch.nn.CrossEntropyLoss`)."""


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 2.0,
    alpha: float = 0.5,
) -> torch.Tensor:
    """Hinton-style distillation loss mixing soft teacher targets and hard labels.

    ``loss = alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))
    + (1 - alpha) * CE(student, labels)``

    The ``T**2`` factor keeps the gradient scale of the soft term independent
    of the temperature (Hinton et al. 2015), so ``alpha`` means the same thing
    at every ``T``. The teacher is detached: gradients reach only the student.

    Parameters
    ----------
    student_logits, teacher_logits
        Logits of the same shape ``[..., num_classes]``; every leading position
        (an example, or a token for language models) is one distribution. For
        token-level distillation pass only real positions (for example
        ``logits[attention_mask.bool()]``): the KL term averages over all rows.
    labels
        Integer class ids of shape ``student_logits.shape[:-1]``; positions
        equal to ``-100`` are left out of the cross-entropy term. ``None`` means
        pure distillation: the loss is ``T**2 * KL`` and ``alpha`` is not used.
    temperature
        Softening temperature ``T > 0``.
    alpha
        Weight of the distillation term, in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        A scalar loss. KL is averaged over rows (``batchmean``); cross-entropy
        over labelled rows (0 when no row is labelled).

    Raises
    ------
    ValueError
        On mismatched shapes, non-integer labels, ``temperature <= 0`` or
        ``alpha`` outside ``[0, 1]``.
    """
    _check_arguments(student_logits, teacher_logits, labels, temperature, alpha)
    num_classes = student_logits.shape[-1]
    student = student_logits.reshape(-1, num_classes)
    teacher = teacher_logits.detach().reshape(-1, num_classes).to(student.dtype)

    student_log_probs = F.log_softmax(student / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher / temperature, dim=-1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    soft = temperature**2 * kl
    if labels is None:
        return soft

    flat_labels = labels.reshape(-1).long()
    labelled = flat_labels != IGNORE_INDEX
    if bool(labelled.any()):
        hard = F.cross_entropy(student, flat_labels, ignore_index=IGNORE_INDEX)
    else:
        hard = student.sum() * 0.0  # keeps the graph; mean over zero rows would be NaN
    return alpha * soft + (1.0 - alpha) * hard


def _check_arguments(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    alpha: float,
) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"`student_logits` shape {tuple(student_logits.shape)} differs from "
            f"`teacher_logits` shape {tuple(teacher_logits.shape)}; they must match."
        )
    if student_logits.dim() < 1 or student_logits.shape[-1] < 1:
        raise ValueError("`student_logits` must have a last (class) dimension of size >= 1.")
    if not student_logits.is_floating_point():
        raise ValueError(f"`student_logits` must be floating point, got {student_logits.dtype}.")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"`temperature` must be a finite number > 0, got {temperature!r}.")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}.")
    if labels is None:
        return
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"`labels` must hold integer class ids, got dtype {labels.dtype}.")
    if labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"`labels` shape {tuple(labels.shape)} must equal the logits shape without "
            f"its class dimension, {tuple(student_logits.shape[:-1])}."
        )
    real = labels[labels != IGNORE_INDEX]
    if real.numel() and (int(real.min()) < 0 or int(real.max()) >= student_logits.shape[-1]):
        raise ValueError(
            f"`labels` must be in [0, {student_logits.shape[-1] - 1}] or -100, "
            f"got values in [{int(real.min())}, {int(real.max())}]."
        )
