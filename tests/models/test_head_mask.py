"""Head gates and masks: exact removal of a head's contribution, PEFT support, the mask file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentinel.models.components import attention_modules, model_layout
from sentinel.models.head_mask import (
    HeadMaskError,
    HeadMaskFile,
    apply_head_mask,
    install_head_gates,
    load_head_mask,
    pruned_of_mask,
    save_head_mask,
)
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora

TEXTS = ["the quick brown fox", "consent matters a lot", "short"]


def _batch(base: LoadedModel) -> dict[str, torch.Tensor]:
    return dict(base.tokenizer(TEXTS, padding=True, return_tensors="pt"))


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _zero_o_columns(model: torch.nn.Module, layer: int, head: int) -> None:
    """Zero the o-projection input features of one head (Conv1D stores them as rows)."""
    o = attention_modules(model)[layer].o
    d = model_layout(model).head_dim
    with torch.no_grad():
        if o.transposed:
            o.module.weight[head * d : (head + 1) * d, :] = 0
        else:
            o.module.weight[:, head * d : (head + 1) * d] = 0


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_masking_a_head_equals_zeroing_its_o_columns(preset: str) -> None:
    base, zeroed = load_base_model(preset), load_base_model(preset)
    batch = _batch(base)
    mask = np.ones((2, 4))
    mask[0, 1] = mask[1, 3] = 0
    _zero_o_columns(zeroed.model, 0, 1)
    _zero_o_columns(zeroed.model, 1, 3)
    with apply_head_mask(base.model, mask):
        masked = _logits(base.model, batch)
    assert torch.allclose(masked, _logits(zeroed.model, batch), atol=1e-6)
    assert not torch.allclose(masked, _logits(base.model, batch), atol=1e-6)  # the mask did something


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_masking_a_head_that_already_contributes_nothing_changes_nothing(preset: str) -> None:
    base = load_base_model(preset)
    _zero_o_columns(base.model, 1, 2)
    batch = _batch(base)
    mask = np.ones((2, 4))
    mask[1, 2] = 0
    before = _logits(base.model, batch)
    with apply_head_mask(base.model, mask):
        assert torch.allclose(_logits(base.model, batch), before, atol=1e-6)


def test_remove_restores_the_model_bit_for_bit() -> None:
    base = load_base_model("tiny-bert")
    batch = _batch(base)
    before = _logits(base.model, batch)
    gates = apply_head_mask(base.model, np.zeros((2, 4)))
    assert not torch.equal(_logits(base.model, batch), before)
    gates.remove()
    gates.remove()  # idempotent
    assert torch.equal(_logits(base.model, batch), before)


def test_gates_scale_and_can_be_changed_in_place() -> None:
    base = load_base_model("tiny-gpt2")
    batch = _batch(base)
    half = torch.full((2, 4), 0.5)
    with install_head_gates(base.model, half) as gates:
        at_half = _logits(base.model, batch)
        gates.gates.data.fill_(1.0)
        at_one = _logits(base.model, batch)
    assert torch.allclose(at_one, _logits(base.model, batch), atol=1e-6)
    assert not torch.allclose(at_half, at_one, atol=1e-6)


def test_gate_gradients_are_available() -> None:
    base = load_base_model("tiny-llama")
    batch = _batch(base)
    with install_head_gates(base.model, requires_grad=True) as gates:
        base.model(**batch, labels=torch.tensor([0, 1, 1])).loss.backward()
        assert gates.gates.grad is not None
        assert gates.gates.grad.shape == (2, 4)
        assert (gates.gates.grad != 0).any()


def test_mask_on_a_peft_model_masks_the_lora_path_too() -> None:
    base = load_base_model("tiny-bert")
    peft = attach_lora(base, rank=2)
    with torch.no_grad():  # make LoRA contribute, so masking only the base path would be visible
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    merged_ref = load_base_model("tiny-bert")
    batch = _batch(base)
    mask = np.ones((2, 4))
    mask[0, 0] = 0
    with apply_head_mask(peft, mask):
        masked_peft = _logits(peft, batch)
    # The same function computed on the merged model with that head's o columns zeroed.
    merged = peft.merge_and_unload()
    merged_ref.model.load_state_dict(merged.state_dict())
    _zero_o_columns(merged_ref.model, 0, 0)
    assert torch.allclose(masked_peft, _logits(merged_ref.model, batch), atol=1e-5)


def test_bad_masks_are_rejected() -> None:
    base = load_base_model("tiny-bert")
    with pytest.raises(HeadMaskError, match=r"\[num_layers, num_heads\] = \[2, 4\]"):
        apply_head_mask(base.model, np.ones((4, 2)))
    with pytest.raises(HeadMaskError, match="0 .* or 1"):
        apply_head_mask(base.model, np.full((2, 4), 0.5))


# ---------------------------------------------------------------- file format


def test_full_form_round_trips(tmp_path: Path) -> None:
    layout = model_layout(load_base_model("tiny-bert").model)
    mask = np.array([[1, 0, 1, 1], [0, 0, 1, 1]], dtype=np.float32)
    path = save_head_mask(tmp_path / "mask.json", mask)
    assert json.loads(path.read_text())["num_heads"] == 4
    np.testing.assert_array_equal(load_head_mask(path, layout), mask)
    assert pruned_of_mask(mask) == {0: [1], 1: [0, 1]}


def test_pruned_form_loads(tmp_path: Path) -> None:
    layout = model_layout(load_base_model("tiny-bert").model)
    path = tmp_path / "mask.json"
    path.write_text(json.dumps({"pruned": {"1": [0, 3]}}))
    np.testing.assert_array_equal(load_head_mask(path, layout), [[1, 1, 1, 1], [0, 1, 1, 0]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"num_layers": 2, "num_heads": 4, "mask": [[1, 1, 1, 1]]}, "`mask` has 1 rows"),
        ({"num_layers": 2, "num_heads": 4, "mask": [[1, 1, 1], [1, 1, 1, 1]]}, "row 0 has 3 entries"),
        ({"num_layers": 2, "num_heads": 4, "mask": [[1, 2, 1, 1], [1, 1, 1, 1]]}, "values must be 0 or 1"),
        ({"num_layers": 2, "num_heads": 4}, "needs all of"),
        ({"pruned": {"0": [1]}, "num_layers": 2}, "not both"),
        ({"pruned": {"0": [1, 1]}}, "lists a head twice"),
        ({"pruned": {"0": [-1]}}, "greater than or equal to 0"),
        ({"pruned": {"5": [0]}}, "layer 5 out of range"),
        ({"pruned": {"0": [4]}}, "head 4 out of range"),
        ({"num_layers": 3, "num_heads": 4, "mask": [[1] * 4] * 3}, "the model has 2 x 4"),
        ({"mask_typo": []}, "Extra inputs"),
    ],
)
def test_invalid_files_name_the_problem(tmp_path: Path, content: dict, message: str) -> None:
    layout = model_layout(load_base_model("tiny-bert").model)
    path = tmp_path / "mask.json"
    path.write_text(json.dumps(content))
    with pytest.raises(HeadMaskError, match=message) as info:
        load_head_mask(path, layout)
    assert str(path) in str(info.value)


def test_broken_json_reports_file_and_line(tmp_path: Path) -> None:
    layout = model_layout(load_base_model("tiny-bert").model)
    path = tmp_path / "mask.json"
    path.write_text('{\n  "pruned": {\n    "0": [1,\n}\n')
    with pytest.raises(HeadMaskError, match=rf"{path.name}:4:\d+: not valid JSON"):
        load_head_mask(path, layout)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    layout = model_layout(load_base_model("tiny-bert").model)
    with pytest.raises(HeadMaskError, match="cannot read head mask file"):
        load_head_mask(tmp_path / "nope.json", layout)


def test_schema_object_validates_directly() -> None:
    assert HeadMaskFile.model_validate({"pruned": {0: [2]}}).pruned == {0: [2]}
