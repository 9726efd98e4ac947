"""Physical head pruning and regrowth: same function as masking, fewer parameters, exact restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentinel.models.components import model_layout
from sentinel.models.head_mask import apply_head_mask, mask_of_pruned
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import attach_lora
from sentinel.models.pruning import GroupedKVLinear, PruningError, count_parameters, prune_heads, pruned_heads, regrow_heads

PRESETS = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
TEXTS = ["the quick brown fox jumps", "consent matters", "a somewhat longer third sentence", "hi"]
PATTERNS = [
    {0: [1]},
    {0: [0, 1, 2]},  # a whole layer's heads but one
    {0: [0, 1], 1: [1, 2]},  # llama: layer 0 drops a whole kv group, layer 1 splits both groups
    {0: [3], 1: [0, 2, 3]},
]


def _batch(base: LoadedModel) -> dict[str, torch.Tensor]:
    return dict(base.tokenizer(TEXTS, padding=True, return_tensors="pt"))


def _logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_pruning_matches_masking_and_shrinks_the_model(preset: str, pattern: dict[int, list[int]]) -> None:
    base = load_base_model(preset)
    batch = _batch(base)
    with apply_head_mask(base.model, mask_of_pruned(pattern, model_layout(base.model))):
        masked = _logits(base.model, batch)
    before = count_parameters(base.model)
    record = prune_heads(base.model, pattern)
    assert torch.allclose(_logits(base.model, batch), masked, atol=1e-5)
    assert record.params_before == before
    assert record.params_after == count_parameters(base.model) < before
    assert pruned_heads(base.model) == pattern


def test_llama_gqa_keeps_a_shared_kv_head_until_its_whole_group_is_pruned() -> None:
    base = load_base_model("tiny-llama")  # 4 query heads, 2 kv heads: groups {0, 1}, {2, 3}
    attn = base.model.model.layers[0].self_attn
    record = prune_heads(base.model, {0: [0]})
    assert isinstance(attn.k_proj, GroupedKVLinear)
    assert attn.k_proj.out_features == 2 * 8  # both kv heads still there
    assert record.kv_weights == {}
    record2 = prune_heads(base.model, {0: [1]})
    assert not isinstance(attn.k_proj, GroupedKVLinear)  # groups even again: stock repeat_kv
    assert attn.k_proj.out_features == 8
    assert set(record2.kv_weights) == {(0, 0)}


def test_already_pruned_heads_are_ignored() -> None:
    base = load_base_model("tiny-bert")
    prune_heads(base.model, {0: [1]})
    params = count_parameters(base.model)
    record = prune_heads(base.model, {0: [1]})
    assert record.heads == {} and count_parameters(base.model) == params


@pytest.mark.parametrize(
    ("heads", "message"),
    [({0: [0, 1, 2, 3]}, "no head"), ({2: [0]}, "layer 2 out of range"), ({0: [4]}, "head 4 out of range")],
)
def test_bad_requests_are_rejected(heads: dict[int, list[int]], message: str) -> None:
    base = load_base_model("tiny-gpt2")
    with pytest.raises(PruningError, match=message):
        prune_heads(base.model, heads)


def test_peft_model_must_be_merged_first() -> None:
    peft = attach_lora(load_base_model("tiny-bert"), rank=2)
    with pytest.raises(PruningError, match="merge_and_unload"):
        prune_heads(peft, {0: [1]})


@pytest.mark.parametrize("preset", PRESETS)
def test_restore_regrowth_gives_back_the_original_logits(preset: str) -> None:
    base = load_base_model(preset)
    batch = _batch(base)
    original, params = _logits(base.model, batch), count_parameters(base.model)
    record = prune_heads(base.model, {0: [0, 1, 2], 1: [1, 2]})
    assert not torch.allclose(_logits(base.model, batch), original, atol=1e-6)
    remaining = regrow_heads(base.model, record)
    assert remaining.heads == {}
    assert torch.allclose(_logits(base.model, batch), original, atol=1e-6)
    assert count_parameters(base.model) == params
    assert pruned_heads(base.model) == {}


@pytest.mark.parametrize("preset", PRESETS)
def test_fresh_regrowth_leaves_the_function_unchanged_and_restores_parameters(preset: str) -> None:
    base = load_base_model(preset)
    batch = _batch(base)
    params = count_parameters(base.model)
    record = prune_heads(base.model, {0: [0, 1], 1: [3]})
    pruned_logits = _logits(base.model, batch)
    regrow_heads(base.model, record, init="fresh", seed=3)
    assert torch.allclose(_logits(base.model, batch), pruned_logits, atol=1e-6)
    assert count_parameters(base.model) == params
    # The regrown heads are new (random q), not the saved ones.
    restored = load_base_model(preset)
    q_new = _q_rows(base, 0, 0)
    assert not torch.allclose(q_new, _q_rows(restored, 0, 0))
    assert q_new.abs().sum() > 0


def _q_rows(base: LoadedModel, layer: int, head: int) -> torch.Tensor:
    d = model_layout(base.model).head_dim
    if base.family == "bert":
        return base.model.bert.encoder.layer[layer].attention.self.query.weight[head * d : (head + 1) * d]
    if base.family == "gpt2":
        return base.model.transformer.h[layer].attn.c_attn.weight[:, head * d : (head + 1) * d]
    return base.model.model.layers[layer].self_attn.q_proj.weight[head * d : (head + 1) * d]


def test_partial_regrowth_returns_what_is_still_pruned() -> None:
    base = load_base_model("tiny-llama")
    batch = _batch(base)
    record = prune_heads(base.model, {0: [0, 1, 3]})
    remaining = regrow_heads(base.model, record, heads={0: [1]})
    assert remaining.heads == {0: (0, 3)}
    assert pruned_heads(base.model) == {0: [0, 3]}
    reference = load_base_model("tiny-llama")
    with apply_head_mask(reference.model, np.array([[0, 1, 1, 0], [1, 1, 1, 1]])):
        expected = _logits(reference.model, batch)
    assert torch.allclose(_logits(base.model, batch), expected, atol=1e-5)
    regrow_heads(base.model, remaining)
    assert torch.allclose(_logits(base.model, batch), _logits(reference.model, batch), atol=1e-6)


def test_regrowing_heads_the_record_did_not_prune_is_an_error() -> None:
    base = load_base_model("tiny-bert")
    record = prune_heads(base.model, {0: [1]})
    with pytest.raises(PruningError, match="not pruned by this `record`"):
        regrow_heads(base.model, record, heads={0: [2]})
    with pytest.raises(PruningError, match="`init`"):
        regrow_heads(base.model, record, init="random")  # type: ignore[arg-type]
    regrow_heads(base.model, record)
    with pytest.raises(PruningError, match="already present"):
        regrow_heads(base.model, record)


@pytest.mark.parametrize("preset", PRESETS)
def test_pruned_model_still_trains(preset: str) -> None:
    base = load_base_model(preset)
    prune_heads(base.model, {0: [1, 2], 1: [0]})
    batch = _batch(base)
    labels = torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.Adam(base.model.parameters(), lr=1e-2)  # built after pruning
    base.model.eval()  # no dropout: the loss must fall deterministically
    losses = []
    for _ in range(6):
        loss = base.model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in base.model.parameters() if p.requires_grad and p.dim() > 1)
