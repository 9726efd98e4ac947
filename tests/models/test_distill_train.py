"""Short distillation runs with tiny models: KL(teacher ‖ student) drops on held-out data."""

from __future__ import annotations

import math

import pytest
import torch
from sentinel.models.components import model_layout
from sentinel.models.distill_train import distill, kl_divergence, with_teacher_logits
from sentinel.models.head_mask import mask_of_pruned
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora
from sentinel.models.student import build_student

WORDS = "good bad great awful fine poor nice terrible lovely dull bright grim".split()


def _texts(seed: int, n: int) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (int(3 + j % 5),), generator=gen)) for j in range(n)]


def _batches(base: LoadedModel, seed: int, n_batches: int, size: int = 8) -> list[dict[str, torch.Tensor]]:
    texts = _texts(seed, n_batches * size)
    return [dict(base.tokenizer(texts[i : i + size], padding=True, return_tensors="pt")) for i in range(0, len(texts), size)]


POSITIVE = {"good", "great", "fine", "nice", "lovely", "bright"}


def _rule_labels(batch_texts: list[str]) -> torch.Tensor:
    return torch.tensor([int(t.split()[0] in POSITIVE) for t in batch_texts])


def _teacher(preset: str, task: str = "classification") -> LoadedModel:
    """A tiny model trained briefly on a word rule, so its outputs depend on the input.

    A random tiny model answers almost the same for every text, which a pruned
    student matches from the start; a trained teacher gives it something to learn.
    """
    base = load_base_model(preset, task=task, seed=1)
    texts = _texts(1234, 64)
    optimizer = torch.optim.AdamW(base.model.parameters(), lr=3e-3)
    base.model.train()
    for step in range(30):
        chunk = texts[(step * 16) % 64 : (step * 16) % 64 + 16]
        batch = dict(base.tokenizer(chunk, padding=True, return_tensors="pt"))
        if task == "classification":
            batch["labels"] = _rule_labels(chunk)
        else:
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        optimizer.zero_grad()
        base.model(**batch).loss.backward()
        optimizer.step()
    base.model.eval()
    return base


def _student(teacher: LoadedModel) -> torch.nn.Module:
    mask = mask_of_pruned({0: [0, 1], 1: [2, 3]}, model_layout(teacher.model))
    return build_student(teacher.model, mask, ffn_layers=[0, 1], ffn_keep=0.25).model


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_distillation_lowers_kl_on_held_out_batches(preset: str) -> None:
    teacher = _teacher(preset)
    student = _student(teacher)
    train, held = _batches(teacher, 0, 6), _batches(teacher, 99, 3)
    result = distill(teacher.model, student, train, steps=40, lr=2e-3, held_out=held)
    assert result.student is student and result.steps == 40 and len(result.losses) == 40
    assert result.kl_before > 0
    assert result.kl_after < 0.5 * result.kl_before
    assert math.isclose(result.kl_after, kl_divergence(teacher.model, student, held), rel_tol=1e-9)
    assert not student.training


def test_teacher_is_not_changed_and_precomputed_logits_give_the_same_run() -> None:
    teacher = _teacher("tiny-bert")
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    train, held = _batches(teacher, 0, 3), _batches(teacher, 99, 2)
    a, b = _student(teacher), _student(teacher)
    run_a = distill(teacher.model, a, train, steps=5, lr=1e-3, held_out=held, seed=3)
    run_b = distill(teacher.model, b, with_teacher_logits(teacher.model, train), steps=5, lr=1e-3, held_out=held, seed=3)
    assert run_a.losses == pytest.approx(run_b.losses, rel=1e-5)
    assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in before.items())


def test_labels_are_mixed_in_when_present() -> None:
    teacher = _teacher("tiny-bert")
    train = [{**b, "labels": torch.ones(b["input_ids"].shape[0], dtype=torch.long)} for b in _batches(teacher, 0, 2)]
    soft = distill(teacher.model, _student(teacher), _batches(teacher, 0, 2), steps=1, alpha=0.5)
    mixed = distill(teacher.model, _student(teacher), train, steps=1, alpha=0.5)
    assert soft.losses[0] != pytest.approx(mixed.losses[0])
    assert math.isnan(soft.kl_before) and math.isnan(soft.kl_after)  # no held-out batches


def test_a_peft_student_trains_only_its_adapter() -> None:
    teacher = _teacher("tiny-bert")
    student = attach_lora(_student(teacher), rank=2, train_head=False)
    frozen = {n: p.clone() for n, p in student.named_parameters() if not p.requires_grad}
    distill(teacher.model, student, _batches(teacher, 0, 2), steps=3, lr=1e-2)
    assert all(torch.equal(p, frozen[n]) for n, p in student.named_parameters() if n in frozen)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in student.named_parameters())


def test_causal_lm_distils_per_real_token() -> None:
    teacher = _teacher("tiny-gpt2", task="causal-lm")
    student = _student(teacher)
    held = _batches(teacher, 99, 2)
    result = distill(teacher.model, student, _batches(teacher, 0, 4), steps=20, lr=3e-3, held_out=held)
    assert result.kl_after < result.kl_before


def test_make_optimizer_is_used() -> None:
    teacher = _teacher("tiny-bert")
    student = _student(teacher)
    made: list[torch.optim.Optimizer] = []

    def make(model: torch.nn.Module) -> torch.optim.Optimizer:
        made.append(torch.optim.SGD(model.parameters(), lr=0.0))
        return made[-1]

    before = {k: v.clone() for k, v in student.state_dict().items()}
    distill(teacher.model, student, _batches(teacher, 0, 1), steps=2, make_optimizer=make)
    assert len(made) == 1
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # lr 0: nothing moved


def test_bad_arguments_are_rejected() -> None:
    teacher = _teacher("tiny-bert")
    with pytest.raises(ValueError, match="steps"):
        distill(teacher.model, _student(teacher), [], steps=-1)
    with pytest.raises(ValueError, match="lr"):
        distill(teacher.model, _student(teacher), [], steps=1, lr=0.0)
    with pytest.raises(ValueError, match="empty"):
        distill(teacher.model, _student(teacher), [], steps=1)
    assert distill(teacher.model, _student(teacher), [], steps=0).steps == 0
