"""Building the pruned student: heads removed per the mask, FFNs narrowed only where allowed, spec round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentinel.models.components import model_layout
from sentinel.models.ffn import ffn_widths
from sentinel.models.head_mask import apply_head_mask, mask_of_pruned
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora
from sentinel.models.pruning import count_parameters, pruned_heads
from sentinel.models.student import StudentSpec, apply_student_spec, build_student, load_student, student_arrays, student_spec

PRESETS = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
TEXTS = ["the quick brown fox jumps", "consent matters", "a somewhat longer third sentence", "hi"]


def _batch(base: LoadedModel) -> dict[str, torch.Tensor]:
    return dict(base.tokenizer(TEXTS, padding=True, return_tensors="pt"))


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("preset", PRESETS)
def test_heads_only_student_computes_the_masked_teacher(preset: str) -> None:
    base = load_base_model(preset)
    batch = _batch(base)
    mask = mask_of_pruned({0: [0, 1], 1: [3]}, model_layout(base.model))
    params = count_parameters(base.model)
    student = build_student(base.model, mask)
    with apply_head_mask(base.model, mask):
        expected = _logits(base.model, batch)
    torch.testing.assert_close(_logits(student.model, batch), expected, atol=1e-5, rtol=1e-5)
    assert count_parameters(base.model) == params and pruned_heads(base.model) == {}  # teacher untouched
    assert student.spec.pruned_heads == {0: (0, 1), 1: (3,)} and student.spec.ffn_neurons == {}
    assert student.params_after < student.params_before == params


@pytest.mark.parametrize("preset", PRESETS)
def test_ffn_is_narrowed_only_in_allowed_layers(preset: str) -> None:
    base = load_base_model(preset)
    student = build_student(base.model, None, ffn_layers=[1], ffn_keep=0.25, batches=[_batch(base)])
    assert ffn_widths(student.model) == {0: 64, 1: 16}
    assert set(student.spec.ffn_neurons) == {1} and student.spec.ffn_widths == {1: 16}
    with pytest.raises(ValueError, match="not in `ffn_layers`"):
        build_student(base.model, None, ffn_layers=[1], ffn_keep={0: 8})


def test_explicit_widths_and_given_scores_are_used() -> None:
    base = load_base_model("tiny-bert")
    scores = {0: np.arange(64.0), 1: -np.arange(64.0)}
    student = build_student(base.model, None, ffn_layers=[0, 1], ffn_keep={0: 3, 1: 2}, ffn_scores=scores)
    assert student.spec.ffn_neurons == {0: (61, 62, 63), 1: (0, 1)}


def test_a_peft_teacher_is_merged_into_the_copy() -> None:
    base = load_base_model("tiny-bert")
    peft = attach_lora(base, rank=2)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    batch = _batch(base)
    expected = _logits(peft, batch)
    student = build_student(peft)
    torch.testing.assert_close(_logits(student.model, batch), expected, atol=1e-5, rtol=1e-5)
    assert not callable(getattr(student.model, "get_base_model", None))
    assert callable(getattr(peft, "get_base_model", None))  # the teacher keeps its adapter


@pytest.mark.parametrize("preset", PRESETS)
def test_spec_rebuilds_the_architecture_so_weights_load(preset: str) -> None:
    base = load_base_model(preset)
    mask = mask_of_pruned({0: [2], 1: [0, 1, 3]}, model_layout(base.model))
    student = build_student(base.model, mask, ffn_layers=[0, 1], ffn_keep=0.5)
    wire = StudentSpec.model_validate_json(student.spec.model_dump_json())
    assert wire == student.spec
    rebuilt = apply_student_spec(load_base_model(preset).model, wire)
    rebuilt.load_state_dict(student.model.state_dict())
    batch = _batch(base)
    torch.testing.assert_close(_logits(rebuilt, batch), _logits(student.model, batch))
    assert student_spec(rebuilt) == wire


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        StudentSpec.model_validate({"pruned_heads": {"0": [-1]}})
    with pytest.raises(ValueError):
        StudentSpec.model_validate({"unknown": {}})
    assert StudentSpec().num_pruned_heads == 0


def test_student_weights_travel_as_arrays_and_load_on_a_teacher_copy() -> None:
    base = load_base_model("tiny-bert")
    student = build_student(base.model, mask_of_pruned({0: [1]}, model_layout(base.model)), ffn_layers=[0], ffn_keep=0.5)
    with torch.no_grad():
        student.model.classifier.weight.add_(1.0)  # the "distilled" change
        student.model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    batch = _batch(base)
    full = load_student(base.model, student.spec, student_arrays(student.model))
    torch.testing.assert_close(_logits(full, batch), _logits(student.model, batch))
    partial = student_arrays(student.model, trainable_only=True)
    assert "bert.embeddings.word_embeddings.weight" not in partial
    torch.testing.assert_close(_logits(load_student(base.model, student.spec, partial), batch), _logits(student.model, batch))
    assert pruned_heads(base.model) == {}  # the teacher is not changed
    with pytest.raises(ValueError, match="does not have"):
        load_student(base.model, student.spec, {"nope": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        load_student(base.model, StudentSpec(), {"classifier.weight": partial["classifier.weight"][:, :3]})
