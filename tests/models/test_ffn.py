"""FFN narrowing: the narrowed layer computes the full layer with dropped neurons silenced, and keeps the top-scored ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentinel.models.ffn import (
    FFN_IDS_ATTR,
    ffn_activation_importance,
    ffn_layers_of,
    ffn_magnitude,
    ffn_sites,
    ffn_widths,
    keep_ffn_neurons,
    narrow_ffn,
    narrowed_ffn,
    widths_for,
)
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora
from sentinel.models.pruning import PruningError, count_parameters
from transformers.pytorch_utils import Conv1D

PRESETS = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
TEXTS = ["the quick brown fox jumps", "consent matters", "a somewhat longer third sentence", "hi"]


def _batch(base: LoadedModel) -> dict[str, torch.Tensor]:
    return dict(base.tokenizer(TEXTS, padding=True, return_tensors="pt"))


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _silence(model: torch.nn.Module, drop: dict[int, list[int]]) -> None:
    """Zero the down-projection inputs of the given neurons: what removing them must compute."""
    for site in ffn_sites(model):
        if site.layer in drop:
            down = model.get_submodule(site.down_path)
            with torch.no_grad():
                if isinstance(down, Conv1D):
                    down.weight[drop[site.layer], :] = 0.0
                else:
                    down.weight[:, drop[site.layer]] = 0.0


@pytest.mark.parametrize("preset", PRESETS)
def test_narrowing_equals_silencing_the_dropped_neurons(preset: str) -> None:
    base, reference = load_base_model(preset), load_base_model(preset)
    batch = _batch(base)
    keep = {0: list(range(0, 64, 3)), 1: [5, 1, 63]}
    _silence(reference.model, {layer: sorted(set(range(64)) - set(ids)) for layer, ids in keep.items()})
    before = count_parameters(base.model)
    record = keep_ffn_neurons(base.model, keep)
    torch.testing.assert_close(_logits(base.model, batch), _logits(reference.model, batch), atol=1e-5, rtol=1e-5)
    assert record.kept == {0: tuple(range(0, 64, 3)), 1: (1, 5, 63)}
    assert record.params_before == before > record.params_after == count_parameters(base.model)
    assert ffn_widths(base.model) == {0: 22, 1: 3}
    assert narrowed_ffn(base.model) == record.kept


def test_narrowing_twice_keeps_original_ids() -> None:
    base = load_base_model("tiny-bert")
    keep_ffn_neurons(base.model, {0: [2, 4, 6, 8]})
    keep_ffn_neurons(base.model, {0: [4, 8]})
    assert narrowed_ffn(base.model) == {0: (4, 8)}
    assert getattr(base.model.bert.encoder.layer[0], FFN_IDS_ATTR) == (4, 8)
    with pytest.raises(PruningError, match="no FFN neurons"):
        keep_ffn_neurons(base.model, {0: [2]})


def test_narrow_keeps_the_highest_scores() -> None:
    base = load_base_model("tiny-bert")
    scores = {0: np.arange(64, dtype=float)[::-1]}  # neuron 0 best
    record = narrow_ffn(base.model, {0: 5}, scores)
    assert record.kept == {0: (0, 1, 2, 3, 4)}


@pytest.mark.parametrize("preset", PRESETS)
def test_magnitude_and_activation_scores_have_one_entry_per_neuron(preset: str) -> None:
    base = load_base_model(preset)
    magnitude = ffn_magnitude(base.model)
    activation = ffn_activation_importance(base.model, [_batch(base)])
    for scores in (magnitude, activation):
        assert set(scores) == {0, 1}
        assert all(s.shape == (64,) and np.all(s >= 0) and np.isfinite(s).all() for s in scores.values())


def test_activation_importance_ignores_padding_and_silenced_neurons() -> None:
    base = load_base_model("tiny-bert")
    _silence(base.model, {0: [7]})  # a zero down column: the neuron moves nothing
    scores = ffn_activation_importance(base.model, [_batch(base)])
    assert scores[0][7] == 0.0
    alone = ffn_activation_importance(base.model, [dict(base.tokenizer(["hi"], return_tensors="pt"))])
    padded = dict(base.tokenizer(["hi", "a much longer sentence than hi"], padding=True, return_tensors="pt"))
    padded = {k: v[:1] for k, v in padded.items()}  # "hi" plus padding tokens
    np.testing.assert_allclose(ffn_activation_importance(base.model, [padded])[1], alone[1], rtol=1e-5)


def test_widths_for_rounds_and_never_widens() -> None:
    base = load_base_model("tiny-bert")
    assert widths_for(base.model, [0, 1], 0.5) == {0: 32, 1: 32}
    assert widths_for(base.model, [1], 0.3, multiple_of=8) == {1: 16}
    keep_ffn_neurons(base.model, {0: list(range(10))})
    assert widths_for(base.model, [0], 0.9) == {0: 10}
    with pytest.raises(ValueError, match="keep"):
        widths_for(base.model, [0], 0.0)
    with pytest.raises(PruningError, match="out of range"):
        widths_for(base.model, [5], 0.5)


def test_ffn_layers_of_reads_ffn_components_only() -> None:
    assert ffn_layers_of(["layer.0.ffn", "layer.3.head.1", "classifier", "layer.2.ffn"]) == {0, 2}
    with pytest.raises(ValueError, match="component"):
        ffn_layers_of(["layer.x.ffn"])


def test_bad_requests_are_rejected() -> None:
    base = load_base_model("tiny-bert")
    with pytest.raises(PruningError, match="keep no FFN neuron"):
        keep_ffn_neurons(base.model, {0: []})
    with pytest.raises(PruningError, match="out of range"):
        keep_ffn_neurons(base.model, {9: [1]})
    with pytest.raises(PruningError, match=r"width 0"):
        narrow_ffn(base.model, {0: 0})
    with pytest.raises(PruningError, match="merge_and_unload"):
        keep_ffn_neurons(attach_lora(load_base_model("tiny-bert"), rank=2), {0: [1]})


def test_narrowed_model_still_trains() -> None:
    base = load_base_model("tiny-llama")
    keep_ffn_neurons(base.model, {0: [1, 2, 3], 1: [0]})
    batch = {**_batch(base), "labels": torch.tensor([0, 1, 1, 0])}
    loss = base.model(**batch).loss
    loss.backward()
    assert base.model.model.layers[0].mlp.down_proj.weight.grad.shape == (32, 3)
