"""Regrowth from kept weights (exact, also through a checkpoint) and the learning-rate boost for grown heads."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sentinel.models.components import model_layout
from sentinel.models.deltas import lora_weight_deltas
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import adapter_arrays, attach_lora, lora_scaling
from sentinel.models.pruning import PruningError, prune_heads, read_head_weights, regrow_heads
from sentinel.models.regrowth import (
    HeadLRBoost,
    head_update_slices,
    kept_head_deltas,
    record_from_arrays,
    record_to_arrays,
    restore_head_deltas,
)

PRESETS = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
TEXTS = ["the quick brown fox jumps", "consent matters", "a somewhat longer third sentence", "hi"]


def _batch(base: LoadedModel) -> dict[str, torch.Tensor]:
    return {**base.tokenizer(TEXTS, padding=True, return_tensors="pt"), "labels": torch.tensor([0, 1, 1, 0])}


def _train(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int = 3) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    model.eval()


def _same(a: object, b: object) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
        for x, y in zip(vars(a).values(), vars(b).values(), strict=True)
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_regrowth_restores_the_exact_kept_weights_after_training_and_a_checkpoint(preset: str) -> None:
    base = load_base_model(preset)
    original = read_head_weights(base.model)
    record = prune_heads(base.model, {0: [0, 1], 1: [3]})  # llama: layer 0 drops a whole kv group
    _train(base.model, _batch(base))  # the remaining heads (and shared biases) change
    trained = read_head_weights(base.model)
    arrays = record_to_arrays(record)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    restored = record_from_arrays({k: v.copy() for k, v in arrays.items()})  # as read back from a checkpoint
    regrow_heads(base.model, restored, init="restore")
    after = read_head_weights(base.model)
    for key in [(0, 0), (0, 1), (1, 3)]:
        assert _same(after[key], original[key]), key  # bit for bit what was pruned
    for key, weights in trained.items():
        assert _same(after[key], weights), key  # the heads that stayed keep their training
    if model_layout(base.model).num_kv_heads != model_layout(base.model).num_heads:
        kv = base.model.model.layers[0].self_attn.k_proj.weight[:8]
        assert torch.equal(kv, record.kv_weights[(0, 0)].k_weight)


def test_record_round_trip_keeps_counts_and_rejects_bad_keys() -> None:
    base = load_base_model("tiny-llama")
    record = prune_heads(base.model, {0: [0, 1]})
    back = record_from_arrays(record_to_arrays(record))
    assert back.heads == record.heads and set(back.weights) == set(record.weights)
    assert set(back.kv_weights) == set(record.kv_weights) == {(0, 0)}
    assert (back.params_before, back.params_after) == (record.params_before, record.params_after)
    with pytest.raises(PruningError, match="unknown prune-record key"):
        record_from_arrays({**record_to_arrays(record), "junk": np.zeros(1)})
    broken = {k: v for k, v in record_to_arrays(record).items() if not k.startswith("head/0/1/")}
    with pytest.raises(PruningError, match="differ"):
        record_from_arrays(broken)


def _global_deltas(preset: str, seed: int) -> tuple[LoadedModel, dict[str, np.ndarray]]:
    base = load_base_model(preset)
    peft = attach_lora(base, rank=2, seed=seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
    return base, lora_weight_deltas(adapter_arrays(peft), lora_scaling(peft))


@pytest.mark.parametrize("preset", PRESETS)
def test_kept_head_deltas_come_back_exactly_in_the_global_state(preset: str) -> None:
    base, deltas = _global_deltas(preset, 1)
    layout = model_layout(base.model)
    heads = {0: [0, 1], 1: [2]}
    kept = kept_head_deltas(deltas, layout, heads)
    later = {m: d + 0.5 for m, d in deltas.items()}  # rounds go by: every slice changes
    frozen = {m: d.copy() for m, d in later.items()}
    back = restore_head_deltas(later, kept)
    assert all(np.array_equal(later[m], frozen[m]) for m in later)  # input not mutated
    d = layout.head_dim
    for module, delta in back.items():
        if "layers.0." in module or "layer.0." in module or "h.0." in module:
            if module.endswith(("query", "q_proj")):
                np.testing.assert_array_equal(delta[: 2 * d], deltas[module][: 2 * d])
                np.testing.assert_array_equal(delta[2 * d :], later[module][2 * d :])
            if module.endswith(("attention.output.dense", "o_proj", "attn.c_proj")):
                np.testing.assert_array_equal(delta[:, : 2 * d], deltas[module][:, : 2 * d])
                np.testing.assert_array_equal(delta[:, 2 * d :], later[module][:, 2 * d :])
    if layout.num_kv_heads != layout.num_heads:  # layer 1 head 2 shares its kv head with head 3: not restored
        k1 = next(m for m in back if m.endswith("layers.1.self_attn.k_proj"))
        np.testing.assert_array_equal(back[k1], later[k1])
        k0 = next(m for m in back if m.endswith("layers.0.self_attn.k_proj"))
        np.testing.assert_array_equal(back[k0][:d], deltas[k0][:d])  # whole group {0, 1} kept


def test_restore_head_deltas_rejects_mismatches() -> None:
    base, deltas = _global_deltas("tiny-bert", 1)
    kept = kept_head_deltas(deltas, model_layout(base.model), {0: [1]})
    with pytest.raises(ValueError, match="lacks"):
        restore_head_deltas({}, kept)
    with pytest.raises(ValueError, match="malformed"):
        restore_head_deltas(deltas, {"nonsense": np.zeros(1)})


# ---------------------------------------------------------------- learning-rate boost


def _one_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], make, boost: dict | None, factor: float) -> None:
    """One optimiser step in eval mode (no dropout), so two runs from the same start see the same gradients."""
    optimizer = make([p for p in model.parameters() if p.requires_grad])
    handle = HeadLRBoost(optimizer, model, boost, factor) if boost else None
    optimizer.zero_grad()
    model(**batch).loss.backward()
    optimizer.step()
    if handle:
        handle.remove()


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.1), lambda p: torch.optim.AdamW(p, lr=1e-2)], ids=["sgd", "adamw"])
def test_boost_scales_only_the_grown_heads_updates(make) -> None:
    base = load_base_model("tiny-bert")
    prune_heads(base.model, {0: [1, 2]})  # layer 0 keeps heads 0 and 3; head 3 is at position 1
    batch = _batch(base)
    start = copy.deepcopy(base.model)
    plain, boosted = copy.deepcopy(start), copy.deepcopy(start)
    _one_step(plain, batch, make, None, 1.0)
    _one_step(boosted, batch, make, {0: [3]}, 4.0)
    d = 8
    attn = lambda m: m.bert.encoder.layer[0].attention  # noqa: E731
    owned = [  # (tensor getter, dim) of the slices head 3 owns
        (lambda m: attn(m).self.query.weight, 0),
        (lambda m: attn(m).self.key.bias, 0),
        (lambda m: attn(m).self.value.weight, 0),
        (lambda m: attn(m).output.dense.weight, 1),
    ]
    for get, dim in owned:
        step_plain = get(plain).narrow(dim, d, d) - get(start).narrow(dim, d, d)
        step_boost = get(boosted).narrow(dim, d, d) - get(start).narrow(dim, d, d)
        assert step_plain.abs().max() > 0
        torch.testing.assert_close(step_boost, 4.0 * step_plain, atol=1e-6, rtol=1e-4)
        torch.testing.assert_close(get(boosted).narrow(dim, 0, d), get(plain).narrow(dim, 0, d))  # head 0: base rate
    torch.testing.assert_close(attn(boosted).output.dense.bias, attn(plain).output.dense.bias)  # shared: base rate
    torch.testing.assert_close(boosted.classifier.weight, plain.classifier.weight)


def test_boost_on_a_peft_model_targets_lora_b_rows_and_lora_a_columns() -> None:
    base = load_base_model("tiny-gpt2")
    prune_heads(base.model, {1: [0]})
    peft = attach_lora(base, rank=2)
    slices = head_update_slices(peft, {1: [2]})
    names = {id(p): n for n, p in peft.named_parameters()}
    described = sorted((names[id(t)].split(".h.")[1], dim, start, stop) for t, dim, start, stop in slices)
    # layer 1 keeps heads 1, 2, 3: head 2 is at position 1; c_attn holds q|k|v of 3 heads x 8
    assert described == [
        ("1.attn.c_attn.lora_B.default.weight", 0, 8, 16),
        ("1.attn.c_attn.lora_B.default.weight", 0, 32, 40),
        ("1.attn.c_attn.lora_B.default.weight", 0, 56, 64),
        ("1.attn.c_proj.lora_A.default.weight", 1, 8, 16),
    ]
    with pytest.raises(PruningError, match="not present"):
        head_update_slices(peft, {1: [0]})


def test_boost_is_removable_and_validates_factor() -> None:
    base = load_base_model("tiny-bert")
    optimizer = torch.optim.SGD(base.model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="factor"):
        HeadLRBoost(optimizer, base.model, {0: [0]}, 0.0)
    with HeadLRBoost(optimizer, base.model, {0: [0]}, 2.0) as boost:
        assert len(boost.slices) == 7  # q, k, v weight rows and bias entries, o columns (the o bias is shared)
    assert boost._handles == []
