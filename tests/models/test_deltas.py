"""Dense LoRA updates: B·A per module, and adding them to base weights equals PEFT's merge."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sentinel.models.deltas import add_weight_deltas, lora_weight_deltas
from sentinel.models.exceptions import AdapterError
from sentinel.models.lora import adapter_arrays, attach_lora, lora_pairs, lora_scaling


def _trained_adapter(base, rank: int = 3, alpha: float | None = None):
    peft_model = attach_lora(base, rank=rank, alpha=alpha)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return peft_model


@pytest.mark.parametrize("alpha", [None, 5.0])
def test_adding_deltas_equals_peft_merge(tiny_base, alpha) -> None:
    original = copy.deepcopy(tiny_base.model)
    peft_model = _trained_adapter(tiny_base, alpha=alpha)
    arrays = adapter_arrays(peft_model)
    deltas = lora_weight_deltas(arrays, lora_scaling(peft_model))
    enc = tiny_base.tokenizer(["merge me", "and me too"], padding=True, return_tensors="pt")
    with torch.no_grad():
        adapted_logits = peft_model(**enc).logits
    merged = peft_model.merge_and_unload()

    add_weight_deltas(original, deltas)
    mine = dict(original.named_parameters())
    for name, param in merged.named_parameters():
        if name.split(".")[0] in ("classifier", "score"):
            continue  # the head is an adapter copy, not a LoRA product
        torch.testing.assert_close(mine[name], param, rtol=1e-6, atol=1e-6, msg=name)
    # Same function as the adapted model, head included via the adapter's head copy.
    head = {k: v for k, v in merged.state_dict().items() if k.split(".")[0] in ("classifier", "score")}
    original.load_state_dict(head, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(original(**enc).logits, adapted_logits, rtol=1e-5, atol=1e-5)


def test_deltas_are_scaled_products_in_linear_orientation(tiny_base) -> None:
    peft_model = _trained_adapter(tiny_base, rank=2, alpha=3.0)
    arrays = adapter_arrays(peft_model)
    deltas = lora_weight_deltas(arrays, 1.5)
    for path, pair in lora_pairs(arrays).items():
        b, a = arrays[pair.b_key], arrays[pair.a_key]
        assert deltas[path].shape == (b.shape[0], a.shape[1])
        assert deltas[path].dtype == np.float32
        np.testing.assert_allclose(deltas[path], 1.5 * b @ a, rtol=1e-6, atol=1e-7)
    if tiny_base.family == "gpt2":
        assert deltas["transformer.h.0.attn.c_attn"].shape == (96, 32)  # out x in, though Conv1D stores in x out


def test_add_weight_deltas_accepts_a_peft_model(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    path = next(iter(lora_pairs(adapter_arrays(peft_model))))
    base_weight = dict(tiny_base.model.named_modules())[path].base_layer.weight
    before = base_weight.detach().clone()
    delta = np.ones(tuple(before.shape) if tiny_base.family != "gpt2" else tuple(before.T.shape), np.float32)
    add_weight_deltas(peft_model, {path: delta})
    assert torch.equal(base_weight, before + 1.0)


def test_bad_deltas_are_rejected_before_any_change(tiny_base) -> None:
    model = tiny_base.model
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    path = next(iter(lora_pairs(adapter_arrays(attach_lora(copy.deepcopy(tiny_base), rank=2)))))
    shape = (96, 32) if tiny_base.family == "gpt2" else tuple(dict(model.named_modules())[path].weight.shape)
    good = np.ones(shape, np.float32)
    with pytest.raises(AdapterError, match="unknown module 'nowhere'"):
        add_weight_deltas(model, {path: good, "nowhere": good})
    with pytest.raises(AdapterError, match="shape"):
        add_weight_deltas(model, {path: good[:, :5]})
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())


def test_factors_that_do_not_multiply_are_rejected() -> None:
    arrays = {
        "base_model.model.x.lora_A.weight": np.zeros((2, 4), np.float32),
        "base_model.model.x.lora_B.weight": np.zeros((4, 3), np.float32),
    }
    with pytest.raises(AdapterError, match="do not multiply"):
        lora_weight_deltas(arrays, 1.0)
