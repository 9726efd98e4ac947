"""Distillation loss: value, edge cases, gradient flow and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from sentinel.models.distill import distillation_loss


def _hand_loss(student: list[list[float]], teacher: list[list[float]], labels: list[int], t: float, a: float) -> float:
    """The loss written out with plain Python floats, one row at a time."""
    kl_total, ce_total, n_labelled = 0.0, 0.0, 0
    for s_row, t_row, y in zip(student, teacher, labels, strict=True):
        s_z = sum(math.exp(v / t) for v in s_row)
        t_z = sum(math.exp(v / t) for v in t_row)
        p_s = [math.exp(v / t) / s_z for v in s_row]
        p_t = [math.exp(v / t) / t_z for v in t_row]
        kl_total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        if y != -100:
            z = sum(math.exp(v) for v in s_row)
            ce_total += -math.log(math.exp(s_row[y]) / z)
            n_labelled += 1
    kl = kl_total / len(student)
    ce = ce_total / n_labelled
    return a * t * t * kl + (1 - a) * ce


def test_matches_hand_computation_with_ignored_label() -> None:
    student = [[1.0, -0.5, 2.0], [0.3, 0.1, -1.2], [2.5, 0.0, 0.5]]
    teacher = [[0.5, 0.5, 1.0], [1.0, -1.0, 0.0], [0.0, 3.0, -2.0]]
    labels = [2, -100, 1]
    got = distillation_loss(
        torch.tensor(student, dtype=torch.float64),
        torch.tensor(teacher, dtype=torch.float64),
        torch.tensor(labels),
        temperature=3.0,
        alpha=0.3,
    )
    assert got.item() == pytest.approx(_hand_loss(student, teacher, labels, 3.0, 0.3), rel=1e-10)


def test_kl_term_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert distillation_loss(logits, logits.clone(), temperature=4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_zero_is_plain_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    got = distillation_loss(student, teacher, labels, alpha=0.0)
    assert torch.allclose(got, torch.nn.functional.cross_entropy(student, labels))


def test_all_labels_ignored_gives_only_the_soft_term() -> None:
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(3, 3, generator=gen), torch.randn(3, 3, generator=gen)
    labels = torch.full((3,), -100)
    got = distillation_loss(student, teacher, labels, temperature=2.0, alpha=0.5)
    soft_only = distillation_loss(student, teacher, None, temperature=2.0)
    assert torch.isfinite(got)
    assert torch.allclose(got, 0.5 * soft_only)


def test_token_level_logits_are_supported() -> None:
    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    labels = torch.randint(0, 7, (2, 5), generator=gen)
    flat = distillation_loss(student.reshape(10, 7), teacher.reshape(10, 7), labels.reshape(10))
    assert torch.allclose(distillation_loss(student, teacher, labels), flat)


def test_gradient_flows_only_to_the_student() -> None:
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(4, 3, generator=gen, requires_grad=True)
    teacher = torch.randn(4, 3, generator=gen, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0, 1, 2, 0])).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": 0.0}, "`temperature`"),
        ({"temperature": float("nan")}, "`temperature`"),
        ({"alpha": 1.5}, "`alpha`"),
        ({"alpha": -0.1}, "`alpha`"),
        ({"labels": torch.tensor([0.0, 1.0])}, "integer"),
        ({"labels": torch.tensor([0, 1, 1])}, "`labels` shape"),
        ({"labels": torch.tensor([0, 3])}, "`labels` must be in"),
    ],
)
def test_bad_arguments_are_rejected(kwargs: dict, message: str) -> None:
    student, teacher = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=message):
        distillation_loss(student, teacher, **kwargs)


def test_mismatched_logit_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="`teacher_logits`"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
