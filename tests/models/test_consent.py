"""Consent masks on LoRA: forbidden heads stay exactly untouched; violations are detected."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sentinel.models.components import head_parameter_slices, model_layout, projection_role
from sentinel.models.consent import head_units, restrict_lora_to_heads, touched_components, touched_heads
from sentinel.models.exceptions import ComponentError
from sentinel.models.lora import adapter_arrays, attach_lora, head_module_keys, lora_pairs
from sentinel.protos.vocabulary import head_id, parse_component

ALL_HEADS = {head_id(layer, head) for layer in range(2) for head in range(4)}
# Layer 0: heads 0 and 1 (a whole GQA group for tiny-llama); layer 1: head 3 alone (half a group).
PARTIAL = {"layer.0.head.0", "layer.0.head.1", "layer.1.head.3"}
PERMITTED_SETS = {"none": set(), "all": ALL_HEADS | {"classifier"}, "partial": PARTIAL}


def _train(peft_model, batch, steps: int) -> None:
    """A few AdamW steps (weight decay on) over one batch."""
    peft_model.train()
    optimiser = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1
    )
    for _ in range(steps):
        optimiser.zero_grad()
        peft_model(**batch).loss.backward()
        optimiser.step()
    peft_model.eval()


def _forbidden_slices_of_product(layout, arrays, permitted) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(forbidden, permitted) slices of every B·A, per head unit of each projection."""
    forbidden, allowed = [], []
    for path, pair in lora_pairs(arrays).items():
        layer, role = projection_role(layout.family, path)
        product = arrays[pair.b_key] @ arrays[pair.a_key]
        for unit in head_units(layout, role):
            piece = product[unit.start : unit.stop] if role != "o" else product[:, unit.start : unit.stop]
            ok = all(head_id(layer, h) in permitted for h in unit.heads)
            (allowed if ok else forbidden).append(piece)
    return forbidden, allowed


@pytest.mark.parametrize("which", list(PERMITTED_SETS))
def test_forbidden_gradients_are_exactly_zero(tiny_base, make_batch, which: str) -> None:
    permitted = PERMITTED_SETS[which]
    peft_model = attach_lora(tiny_base, rank=4)
    _randomise_b(peft_model)  # B != 0 so A receives gradients too
    mask = restrict_lora_to_heads(peft_model, permitted)
    peft_model.train()
    peft_model(**make_batch(tiny_base)).loss.backward()
    params = dict(peft_model.named_parameters())
    for name, trainable in mask.trainable.items():
        grad = params[name].grad
        assert grad is not None
        assert torch.count_nonzero(grad[~trainable]) == 0, name
        assert torch.count_nonzero(params[name][~trainable]) == 0, name
        if trainable.any():
            assert torch.count_nonzero(grad[trainable]) > 0, name
    if which == "all":
        assert mask.trainable == {}
    if which == "none":
        assert all(not t.any() for t in mask.trainable.values())
        # B of q, k, v (GPT-2: of the fused c_attn) and A of o, in 2 layers.
        assert len(mask.trainable) == 2 * (2 if tiny_base.family == "gpt2" else 4)


def _randomise_b(peft_model) -> None:
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("which", list(PERMITTED_SETS))
def test_training_never_changes_forbidden_heads(tiny_base, make_batch, which: str) -> None:
    permitted = PERMITTED_SETS[which]
    original = copy.deepcopy(tiny_base.model)
    peft_model = attach_lora(tiny_base, rank=4)
    layout = model_layout(peft_model)
    restrict_lora_to_heads(peft_model, permitted)
    _train(peft_model, make_batch(tiny_base), steps=4)
    arrays = adapter_arrays(peft_model)

    forbidden, allowed = _forbidden_slices_of_product(layout, arrays, permitted)
    assert all(np.count_nonzero(piece) == 0 for piece in forbidden)
    assert all(np.count_nonzero(piece) > 0 for piece in allowed)
    assert touched_heads(layout, arrays) == permitted & ALL_HEADS

    # End to end: merged weights equal the original ones in every forbidden head's slices.
    merged = dict(peft_model.merge_and_unload().named_parameters())
    before = dict(original.named_parameters())
    for cid in ALL_HEADS - permitted:
        ref = parse_component(cid)
        for s in head_parameter_slices(original, ref.layer, ref.head):
            width = s.stop - s.start
            after_slice = merged[s.param_name].narrow(s.dim, s.start, width)
            assert torch.equal(after_slice, before[s.param_name].narrow(s.dim, s.start, width)), cid
    head_changed = any(
        not torch.equal(merged[name], before[name]) for name in before if name.split(".")[0] in ("classifier", "score")
    )
    assert head_changed == ("classifier" in permitted)


def test_forbidden_classifier_is_frozen_and_remove_unfreezes(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    mask = restrict_lora_to_heads(peft_model, PARTIAL)
    frozen = [n for n, p in peft_model.named_parameters() if "modules_to_save" in n and not p.requires_grad]
    assert frozen and sorted(frozen) == sorted(mask.frozen)
    mask.remove()
    assert all(p.requires_grad for n, p in peft_model.named_parameters() if "modules_to_save" in n)


def test_remove_takes_the_gradient_hooks_off(tiny_base, make_batch) -> None:
    peft_model = attach_lora(tiny_base, rank=4)
    _randomise_b(peft_model)
    mask = restrict_lora_to_heads(peft_model, set())
    trainable = dict(mask.trainable)
    mask.remove()
    peft_model.train()
    peft_model(**make_batch(tiny_base)).loss.backward()
    params = dict(peft_model.named_parameters())
    assert any(torch.count_nonzero(params[name].grad[~t]) > 0 for name, t in trainable.items())


def test_unknown_permitted_component_is_rejected(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    with pytest.raises(ComponentError):
        restrict_lora_to_heads(peft_model, {"layer.9.head.0"})
    with pytest.raises(ValueError, match="bad component id"):
        restrict_lora_to_heads(peft_model, {"head 0"})


def _poke(arrays, path_suffix: str, role: str, unit_index: int, value: float = 1e-3) -> None:
    """Make one module's update B·A nonzero in exactly one head unit, as an unmasked update would.

    q/k/v: B rows of the unit (A is the random initial A). o: B all set, A zero
    outside the unit's columns.
    """
    pair = next(pr for p, pr in lora_pairs(arrays).items() if p.endswith(path_suffix))
    if role == "o":
        arrays[pair.b_key][:] = value
        arrays[pair.a_key][:] = 0.0
        arrays[pair.a_key][:, unit_index * 8 : (unit_index + 1) * 8] = value
    else:
        arrays[pair.b_key][unit_index * 8 : (unit_index + 1) * 8] = value


SUFFIXES = {
    "bert": {"q": "0.attention.self.query", "k": "0.attention.self.key", "o": "1.attention.output.dense"},
    "gpt2": {"q": "h.0.attn.c_attn", "k": "h.0.attn.c_attn", "o": "h.1.attn.c_proj"},
    "llama": {"q": "layers.0.self_attn.q_proj", "k": "layers.0.self_attn.k_proj", "o": "layers.1.self_attn.o_proj"},
}


def test_touched_heads_finds_exactly_the_heads_an_unmasked_update_touches(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    layout = model_layout(peft_model)
    arrays = adapter_arrays(peft_model)
    # Fresh adapter: A random, B zero, so the update changes nothing.
    assert touched_heads(layout, arrays) == set()
    suffixes = SUFFIXES[tiny_base.family]
    _poke(arrays, suffixes["q"], "q", 2)  # q rows of layer 0 head 2
    _poke(arrays, suffixes["o"], "o", 1)  # o columns of layer 1 head 1
    assert touched_heads(layout, arrays) == {"layer.0.head.2", "layer.1.head.1"}
    # k rows of key/value head 1 in layer 0 (GPT-2: c_attn rows after the 32 q rows).
    unit = 1 + 4 if tiny_base.family == "gpt2" else 1
    _poke(arrays, suffixes["k"], "k", unit)
    group = {"layer.0.head.2", "layer.0.head.3"} if tiny_base.family == "llama" else {"layer.0.head.1"}
    assert touched_heads(tiny_base.model, arrays) == {"layer.0.head.2", "layer.1.head.1"} | group
    assert touched_heads(layout, arrays, atol=1e-2) == set()


def test_touched_components_adds_a_changed_classifier(tiny_base) -> None:
    peft_model = attach_lora(tiny_base, rank=2)
    layout = model_layout(peft_model)
    reference = adapter_arrays(peft_model)
    arrays = {k: v.copy() for k, v in reference.items()}
    assert touched_components(layout, arrays, reference) == set()
    assert touched_components(layout, arrays) == {"classifier"}
    head_key = head_module_keys(arrays)[0]
    arrays[head_key] = arrays[head_key] + 0.5
    _poke(arrays, SUFFIXES[tiny_base.family]["q"], "q", 0)
    assert touched_components(layout, arrays, reference) == {"classifier", "layer.0.head.0"}
