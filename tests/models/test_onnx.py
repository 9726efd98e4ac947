"""ONNX export and onnxruntime inference: same logits as torch, LoRA merged, heads pruned, dynamic axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentinel.models.components import model_layout
from sentinel.models.head_mask import apply_head_mask, mask_of_pruned
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora, save_adapter
from sentinel.models.onnx_export import (
    META_FAMILY,
    META_MODEL,
    META_PARAMETERS,
    META_PRUNED,
    OnnxClassifier,
    export_onnx,
    read_metadata,
)
from sentinel.models.pruning import count_parameters, pruned_heads

pytestmark = pytest.mark.slow  # each export takes a few seconds

SHORT = ["hi", "ok then", "yes", "a b c", "no"]
LONG = [
    "the quick brown fox jumps over the lazy dog again and again",
    "consent matters for every head of every layer in the model",
    "short",
    "onnxruntime should agree with torch on all of these sentences",
    "x",
]


def _adapted(preset: str, tmp_path: Path) -> tuple[LoadedModel, torch.nn.Module, Path]:
    """A base model, the same model with a non-trivial LoRA adapter, and that adapter saved."""
    peft = attach_lora(load_base_model(preset), rank=4)
    with torch.no_grad():  # B starts at zero; make the adapter change the function
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(7))
    adapter_dir = save_adapter(peft, tmp_path / f"{preset}-adapter")
    return load_base_model(preset), peft.eval(), adapter_dir


def _check_logits(path: Path, reference: torch.nn.Module, base: LoadedModel, mask: np.ndarray) -> None:
    """onnxruntime logits equal the torch reference (adapter on, heads masked) for 2 batch sizes x 2 lengths."""
    classifier = OnnxClassifier(path)
    for texts in (SHORT[:1], SHORT, LONG[:2], LONG):
        encoded = base.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad(), apply_head_mask(reference, mask):
            expected = reference(**encoded).logits.numpy()
        got = classifier.logits(texts)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.fixture(scope="module")
def bert_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LoadedModel, torch.nn.Module, np.ndarray]:
    tmp_path = tmp_path_factory.mktemp("bert")
    base, peft, adapter_dir = _adapted("tiny-bert", tmp_path)
    mask = mask_of_pruned({0: [1, 2], 1: [0]}, model_layout(base.model))
    params_before = count_parameters(base.model)
    path = export_onnx(
        base.model, base.tokenizer, tmp_path / "out" / "bert.onnx",
        adapter_dir=adapter_dir, head_mask=mask, metadata={"consent.layer.0.head.0": '{"steward": "x"}'},
        name="tiny-bert",
    )
    assert count_parameters(base.model) == params_before and pruned_heads(base.model) == {}  # input untouched
    return path, base, peft, mask


def test_bert_logits_match_torch_with_lora_merged_and_heads_pruned(bert_export) -> None:
    path, base, peft, mask = bert_export
    _check_logits(path, peft, base, mask)


def test_metadata_records_model_family_pruning_and_extra_entries(bert_export) -> None:
    path, base, _, _ = bert_export
    meta = read_metadata(path)
    assert meta[META_MODEL] == "tiny-bert"
    assert meta[META_FAMILY] == "bert"
    assert meta[META_PRUNED] == '{"0": [1, 2], "1": [0]}'
    assert int(meta[META_PARAMETERS]) < count_parameters(base.model)
    assert meta["consent.layer.0.head.0"] == '{"steward": "x"}'
    assert OnnxClassifier(path).metadata == meta


def test_export_leaves_only_the_model_and_its_tokenizer(bert_export) -> None:
    path, _, _, _ = bert_export
    assert sorted(p.name for p in path.parent.iterdir()) == ["bert.onnx", "bert.tokenizer"]


def test_run_takes_token_ids_and_matches_logits(bert_export) -> None:
    path, base, _, _ = bert_export
    classifier = OnnxClassifier(path, tokenizer=base.tokenizer)
    encoded = base.tokenizer(LONG, padding=True, return_tensors="np")
    np.testing.assert_allclose(
        classifier.run(encoded["input_ids"], encoded["attention_mask"]), classifier.logits(LONG), atol=1e-6
    )


def test_reserved_metadata_keys_are_rejected(tmp_path: Path) -> None:
    base = load_base_model("tiny-bert")
    with pytest.raises(ValueError, match="reserved"):
        export_onnx(base.model, base.tokenizer, tmp_path / "m.onnx", metadata={META_FAMILY: "gpt2"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("preset", "pattern"),
    [("tiny-gpt2", {0: [0, 1, 2], 1: [2]}), ("tiny-llama", {0: [0, 1], 1: [1, 2]})],  # llama: partial GQA groups
)
def test_decoder_families_export_too(tmp_path: Path, preset: str, pattern: dict[int, list[int]]) -> None:
    base, peft, adapter_dir = _adapted(preset, tmp_path)
    mask = mask_of_pruned(pattern, model_layout(base.model))
    path = export_onnx(base.model, base.tokenizer, tmp_path / f"{preset}.onnx", adapter_dir=adapter_dir, head_mask=mask)
    _check_logits(path, peft, base, mask)
