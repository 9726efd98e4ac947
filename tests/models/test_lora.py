"""LoRA through PEFT: targets, heads, array round trips, save/load in PEFT format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import PeftModel
from sentinel.models.components import attention_modules
from sentinel.models.exceptions import AdapterError
from sentinel.models.loading import load_base_model
from sentinel.models.lora import (
    adapter_arrays,
    attach_lora,
    head_module_keys,
    load_adapter,
    load_adapter_arrays,
    lora_pairs,
    lora_scaling,
    save_adapter,
)


def _randomise(peft_model: PeftModel, seed: int = 1) -> None:
    """Give every trainable adapter entry a random value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))


def _logits(model: torch.nn.Module, base, texts=("one adapter", "two heads")) -> torch.Tensor:
    enc = base.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def test_default_targets_are_exactly_the_attention_projections(tiny_base) -> None:
    expected = {p.path for part in attention_modules(tiny_base.model) for p in (part.q, part.k, part.v, part.o)}
    peft_model = attach_lora(tiny_base, rank=2)
    assert set(lora_pairs(adapter_arrays(peft_model))) == expected


def test_fresh_adapter_computes_what_the_base_did(tiny_base) -> None:
    before = _logits(tiny_base.model, tiny_base)
    peft_model = attach_lora(tiny_base, rank=4)
    torch.testing.assert_close(_logits(peft_model, tiny_base), before)


def test_alpha_defaults_to_twice_the_rank(tiny_base) -> None:
    assert lora_scaling(attach_lora(tiny_base, rank=4)) == 2.0
    other = load_base_model(tiny_base.name)
    assert lora_scaling(attach_lora(other, rank=4, alpha=6.0)) == 1.5


def test_classification_head_trains_and_travels_with_the_adapter(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    arrays = adapter_arrays(peft_model)
    head_name = "classifier" if tiny_base.family == "bert" else "score"
    assert head_module_keys(arrays)
    assert all(f".{head_name}." in key for key in head_module_keys(arrays))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any(f"{head_name}.modules_to_save" in n for n in trainable)
    assert not any("lora" not in n and head_name not in n for n in trainable)


def test_without_train_head_or_for_causal_lm_there_is_no_head_in_the_adapter(tiny_base, tiny_lm) -> None:
    frozen_head = attach_lora(tiny_base, rank=2, train_head=False)
    assert head_module_keys(adapter_arrays(frozen_head)) == []
    assert all("lora_" in n for n, p in frozen_head.named_parameters() if p.requires_grad)
    assert head_module_keys(adapter_arrays(attach_lora(tiny_lm, rank=2))) == []


def test_initialisation_is_seeded(tiny_name) -> None:
    a = adapter_arrays(attach_lora(load_base_model(tiny_name), rank=2, seed=3))
    b = adapter_arrays(attach_lora(load_base_model(tiny_name), rank=2, seed=3))
    c = adapter_arrays(attach_lora(load_base_model(tiny_name), rank=2, seed=4))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_arrays_round_trip_exactly(tiny_base) -> None:
    source = attach_lora(tiny_base, rank=3)
    _randomise(source)
    arrays = adapter_arrays(source)
    assert all(a.dtype == np.float32 for a in arrays.values())
    target_base = load_base_model(tiny_base.name)
    target = attach_lora(target_base, rank=3, seed=9)
    load_adapter_arrays(target, arrays)
    again = adapter_arrays(target)
    assert again.keys() == arrays.keys()
    assert all(np.array_equal(again[k], arrays[k]) for k in arrays)
    torch.testing.assert_close(_logits(target, target_base), _logits(source, tiny_base), rtol=0, atol=0)


def test_arrays_are_copies(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    arrays = adapter_arrays(peft_model)
    key = next(iter(arrays))
    arrays[key] += 1.0
    assert not np.array_equal(adapter_arrays(peft_model)[key], arrays[key])


def test_loading_mismatched_arrays_names_the_key(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    arrays = adapter_arrays(peft_model)
    key = next(iter(lora_pairs(arrays).values())).a_key
    with pytest.raises(AdapterError, match="unknown adapter key 'bogus'"):
        load_adapter_arrays(peft_model, {**arrays, "bogus": np.zeros(1, np.float32)})
    with pytest.raises(AdapterError, match=f"missing adapter key '{key}'"):
        load_adapter_arrays(peft_model, {k: v for k, v in arrays.items() if k != key})
    with pytest.raises(AdapterError, match=f"adapter key '{key}': shape"):
        load_adapter_arrays(peft_model, {**arrays, key: np.zeros((5, 5), np.float32)})


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
def test_save_and_load_in_peft_format_reproduces_logits(tiny_base, tmp_path) -> None:
    peft_model = attach_lora(tiny_base, rank=2, alpha=3.0)
    _randomise(peft_model)
    expected = _logits(peft_model, tiny_base)
    directory = save_adapter(peft_model, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in directory.iterdir()}
    assert json.loads((directory / "adapter_config.json").read_text())["r"] == 2
    fresh = load_base_model(tiny_base.name)
    loaded = load_adapter(fresh, directory)
    assert isinstance(loaded, PeftModel)
    torch.testing.assert_close(_logits(loaded, fresh), expected)
    # PEFT's own loader on a freshly loaded base gives the same model.
    plain = PeftModel.from_pretrained(load_base_model(tiny_base.name).model, str(directory))
    torch.testing.assert_close(_logits(plain, fresh), expected)


def test_save_replaces_an_existing_adapter_and_leaves_no_temporaries(tiny_base, tmp_path) -> None:
    first = attach_lora(tiny_base, rank=2)
    save_adapter(first, tmp_path / "adapter")
    second_base = load_base_model(tiny_base.name)
    second = attach_lora(second_base, rank=4)
    save_adapter(second, tmp_path / "adapter")
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_load_adapter_rejects_a_directory_without_config(tiny_base, tmp_path) -> None:
    with pytest.raises(AdapterError, match="adapter_config.json"):
        load_adapter(tiny_base, tmp_path)


def test_lora_pairs_map_base_paths_and_need_both_factors(tiny_base) -> None:
    arrays = adapter_arrays(attach_lora(tiny_base, rank=2))
    pairs = lora_pairs(arrays)
    path, pair = next(iter(pairs.items()))
    assert not path.startswith("base_model.")
    assert arrays[pair.a_key].shape[0] == 2 and arrays[pair.b_key].shape[1] == 2
    with pytest.raises(AdapterError, match="no lora_B"):
        lora_pairs({k: v for k, v in arrays.items() if k != pair.b_key})


def test_bad_lora_arguments(tiny_base) -> None:
    with pytest.raises(ValueError, match="`rank`"):
        attach_lora(tiny_base, rank=0)
    with pytest.raises(ValueError, match="`dropout`"):
        attach_lora(tiny_base, rank=2, dropout=1.0)
    with pytest.raises(AdapterError, match="targets"):
        attach_lora(tiny_base, rank=2, targets=["no_such_module"])
