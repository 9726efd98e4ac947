"""Entropy-based gating: diffuse heads are turned down, in the same forward, and can be switched off."""

from __future__ import annotations

import math

import pytest
import torch
from sentinel.models.components import attention_modules, model_layout
from sentinel.models.gating import EntropyGate, enable_entropy_gating, key_validity, normalised_entropy
from sentinel.models.head_mask import install_head_gates
from sentinel.models.loading import LoadedModel, load_base_model

PRESETS = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
TEXTS = ["the quick brown fox jumps", "consent matters", "hi"]


def _batch(base: LoadedModel) -> dict[str, torch.Tensor]:
    return dict(base.tokenizer(TEXTS, padding=True, return_tensors="pt"))


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _sharpen_layer_but_flatten_head(base: LoadedModel, layer: int, flat_head: int) -> None:
    """Make layer `layer`'s heads focused (large q, k) except `flat_head`, which gets q = 0 (uniform)."""
    parts = attention_modules(base.model)[layer]
    d = model_layout(base.model).head_dim
    with torch.no_grad():
        parts.q.module.weight.mul_(60.0)
        parts.k.module.weight.mul_(60.0)
        if parts.q.transposed:
            parts.q.module.weight[:, flat_head * d : (flat_head + 1) * d] = 0
        else:
            parts.q.module.weight[flat_head * d : (flat_head + 1) * d] = 0
        if parts.q.module.bias is not None:
            parts.q.module.bias[flat_head * d : (flat_head + 1) * d] = 0


# ---------------------------------------------------------------- math


def test_normalised_entropy_is_one_for_uniform_and_zero_for_one_hot_over_real_keys() -> None:
    # One example, 2 heads, 3 queries, 4 keys; the last position is padding.
    valid = torch.tensor([True, True, True, False]).expand(1, 1, 3, 4).clone()
    uniform = torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0]).expand(3, 4)
    one_hot = torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(3, 4)
    probs = torch.stack([uniform, one_hot])[None]
    out = normalised_entropy(probs, valid)
    assert out.shape == (1, 2)
    assert out[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    assert out[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_causal_first_query_is_left_out() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])[None, None]  # query 0 sees only itself
    valid = key_validity(None, probs, is_causal=True)
    assert normalised_entropy(probs, valid).item() == pytest.approx(1.0, abs=1e-6)


def test_gate_formula() -> None:
    gate = EntropyGate(num_layers=1, num_heads=2, threshold=0.5, temperature=0.25)
    entropy = torch.tensor([[0.25, 0.75]])
    expected = [1 / (1 + math.exp(-(0.5 - 0.25) / 0.25)), 1 / (1 + math.exp(-(0.5 - 0.75) / 0.25))]
    assert gate(entropy, 0).squeeze().tolist() == pytest.approx(expected)


def test_bad_gate_arguments() -> None:
    with pytest.raises(ValueError, match="`temperature`"):
        EntropyGate(1, 1, temperature=0.0)
    with pytest.raises(ValueError, match="`threshold`"):
        EntropyGate(1, 1, threshold=2.0)


# ---------------------------------------------------------------- in a model


@pytest.mark.parametrize("preset", PRESETS)
def test_diffuse_heads_get_lower_gates(preset: str) -> None:
    base = load_base_model(preset)
    _sharpen_layer_but_flatten_head(base, layer=1, flat_head=2)
    with enable_entropy_gating(base.model, threshold=0.6, temperature=0.1) as gating:
        _logits(base.model, _batch(base))
        gates = gating.last_gates[1]
    assert gates.shape == (len(TEXTS), 4)
    others = gates[:, [0, 1, 3]]
    assert (gates[:, 2:3] < others).all()
    assert (gates[:, 2] < 0.5).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_output_changes_when_on_and_is_bit_identical_when_off_or_removed(preset: str) -> None:
    base = load_base_model(preset)
    batch = _batch(base)
    before = _logits(base.model, batch)
    gating = enable_entropy_gating(base.model)
    assert not torch.allclose(_logits(base.model, batch), before, atol=1e-6)
    gating.disable()
    assert torch.equal(_logits(base.model, batch), before)
    gating.enable()
    assert not torch.allclose(_logits(base.model, batch), before, atol=1e-6)
    gating.remove()
    assert torch.equal(_logits(base.model, batch), before)


def test_head_gates_apply_once_under_entropy_gating() -> None:
    halved_v = load_base_model("tiny-llama")
    with torch.no_grad():
        for parts in attention_modules(halved_v.model):
            parts.v.module.weight.mul_(0.5)  # context x 0.5, attention probabilities unchanged
    gated = load_base_model("tiny-llama")
    batch = _batch(gated)
    with install_head_gates(gated.model, torch.full((2, 4), 0.5)), enable_entropy_gating(gated.model):
        both = _logits(gated.model, batch)
    with enable_entropy_gating(halved_v.model):
        expected = _logits(halved_v.model, batch)
    assert torch.allclose(both, expected, atol=1e-6)


def test_learnable_threshold_receives_gradient() -> None:
    base = load_base_model("tiny-bert")
    with enable_entropy_gating(base.model, learnable=True) as gating:
        loss = base.model(**_batch(base), labels=torch.tensor([0, 1, 0])).loss
        loss.backward()
    assert isinstance(gating.gate.threshold, torch.nn.Parameter)
    assert gating.gate.threshold.grad is not None and gating.gate.threshold.grad.abs().sum() > 0
    # Masked keys have probability 0; the entropy's gradient there must stay finite.
    assert all(torch.isfinite(p.grad).all() for p in base.model.parameters() if p.grad is not None)
