"""Short distillation runs with tiny models: KL(teacher ‖ student) drops on held-out data."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from sentinel.models.components import model_layout
from sentinel.models.distill_train import distill, kl_divergence, with_teacher_logits
from sentinel.models.head_mask import mask_of_pruned
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora
from sentinel.models.student import build_student

Batches = Callable[[LoadedModel, int, int], list[dict[str, torch.Tensor]]]


@pytest.fixture(scope="session")
def batches(word_rule) -> Batches:
    """``batches(base, seed, n)``: `n` tokenised batches of 8 word-rule texts drawn under `seed` (no labels)."""

    def make(base: LoadedModel, seed: int, n: int) -> list[dict[str, torch.Tensor]]:
        texts = word_rule.texts(seed, n * 8)
        return [dict(base.tokenizer(texts[i : i + 8], padding=True, return_tensors="pt")) for i in range(0, len(texts), 8)]

    return make


def _student(teacher: LoadedModel) -> torch.nn.Module:
    """Three of four heads per layer removed and FFNs narrowed to an eighth: far enough from the teacher to learn."""
    mask = mask_of_pruned({0: [0, 1, 2], 1: [1, 2, 3]}, model_layout(teacher.model))
    return build_student(teacher.model, mask, ffn_layers=[0, 1], ffn_keep=0.125).model


@pytest.fixture(scope="module", params=["tiny-bert", "tiny-gpt2", "tiny-llama"])
def trained_teacher(request: pytest.FixtureRequest, word_rule) -> LoadedModel:
    return word_rule.teacher(request.param)


@pytest.fixture
def bert_teacher() -> LoadedModel:
    """An untrained tiny-bert: enough for the mechanics (no KL claims)."""
    return load_base_model("tiny-bert", seed=1)


@pytest.mark.slow  # trains three teachers and distils three students
def test_distillation_lowers_kl_on_held_out_batches(trained_teacher: LoadedModel, batches: Batches) -> None:
    teacher = trained_teacher
    student = _student(teacher)
    train, held = batches(teacher, 0, 20), batches(teacher, 99, 3)  # held-out texts are never trained on
    result = distill(teacher.model, student, train, steps=40, lr=5e-4, held_out=held)
    assert result.student is student and result.steps == 40 and len(result.losses) == 40
    assert result.kl_before > 0
    assert result.kl_after < 0.75 * result.kl_before
    assert math.isclose(result.kl_after, kl_divergence(teacher.model, student, held), rel_tol=1e-9)
    assert not student.training


def test_teacher_is_not_changed_and_precomputed_logits_give_the_same_run(bert_teacher: LoadedModel, batches: Batches) -> None:
    teacher = bert_teacher
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    train, held = batches(teacher, 0, 3), batches(teacher, 99, 2)
    a, b = _student(teacher), _student(teacher)
    run_a = distill(teacher.model, a, train, steps=5, lr=1e-3, held_out=held, seed=3)
    run_b = distill(teacher.model, b, with_teacher_logits(teacher.model, train), steps=5, lr=1e-3, held_out=held, seed=3)
    assert run_a.losses == pytest.approx(run_b.losses, rel=1e-5)
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in before.items())


def test_labels_are_mixed_in_when_present(bert_teacher: LoadedModel, batches: Batches) -> None:
    teacher = bert_teacher
    train = [{**b, "labels": torch.ones(b["input_ids"].shape[0], dtype=torch.long)} for b in batches(teacher, 0, 2)]
    soft = distill(teacher.model, _student(teacher), batches(teacher, 0, 2), steps=1, alpha=0.5)
    mixed = distill(teacher.model, _student(teacher), train, steps=1, alpha=0.5)
    assert soft.losses[0] != pytest.approx(mixed.losses[0])
    assert math.isnan(soft.kl_before) and math.isnan(soft.kl_after)  # no held-out batches


def test_a_peft_student_trains_only_its_adapter(bert_teacher: LoadedModel, batches: Batches) -> None:
    teacher = bert_teacher
    student = attach_lora(_student(teacher), rank=2, train_head=False)
    frozen = {n: p.clone() for n, p in student.named_parameters() if not p.requires_grad}
    distill(teacher.model, student, batches(teacher, 0, 2), steps=3, lr=1e-2)
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if n in frozen)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in student.named_parameters())


@pytest.mark.slow
def test_causal_lm_distils_per_real_token(word_rule, batches: Batches) -> None:
    teacher = word_rule.teacher("tiny-gpt2", task="causal-lm")
    student = _student(teacher)
    held = batches(teacher, 99, 2)
    result = distill(teacher.model, student, batches(teacher, 0, 4), steps=20, lr=3e-3, held_out=held)
    assert result.kl_after < result.kl_before


def test_make_optimizer_is_used(bert_teacher: LoadedModel, batches: Batches) -> None:
    teacher = bert_teacher
    student = _student(teacher)
    made: list[torch.optim.Optimizer] = []

    def make(model: torch.nn.Module) -> torch.optim.Optimizer:
        made.append(torch.optim.SGD(model.parameters(), lr=0.0))
        return made[-1]

    before = {k: v.clone() for k, v in student.state_dict().items()}
    distill(teacher.model, student, batches(teacher, 0, 1), steps=2, make_optimizer=make)
    assert len(made) == 1
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # lr 0: nothing moved


def test_bad_arguments_are_rejected(bert_teacher: LoadedModel) -> None:
    teacher = bert_teacher
    with pytest.raises(ValueError, match="steps"):
        distill(teacher.model, _student(teacher), [], steps=-1)
    with pytest.raises(ValueError, match="lr"):
        distill(teacher.model, _student(teacher), [], steps=1, lr=0.0)
    with pytest.raises(ValueError, match="empty"):
        distill(teacher.model, _student(teacher), [], steps=1)
    assert distill(teacher.model, _student(teacher), [], steps=0).steps == 0


def test_revert_if_worse_puts_back_a_student_that_drifted(bert_teacher: LoadedModel, batches: Batches) -> None:
    teacher = bert_teacher
    student = build_student(teacher.model).model  # an exact copy: KL 0, any training can only drift away
    before = {k: v.clone() for k, v in student.state_dict().items()}
    held = batches(teacher, 99, 2)
    result = distill(teacher.model, student, batches(teacher, 0, 2), steps=3, lr=1e-2, held_out=held, revert_if_worse=True)
    assert result.reverted and result.kl_after == result.kl_before
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    kept = distill(teacher.model, build_student(teacher.model).model, batches(teacher, 0, 2), steps=3, lr=1e-2, held_out=held)
    assert not kept.reverted and kept.kl_after > kept.kl_before
