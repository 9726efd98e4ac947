"""Component ids, layouts, attention modules and the weights each head owns."""

from __future__ import annotations

import pytest
import torch
from sentinel.models.components import (
    ModelLayout,
    attention_modules,
    check_component,
    head_parameter_slices,
    list_components,
    model_layout,
)
from sentinel.models.exceptions import ComponentError
from sentinel.models.lora import attach_lora
from sentinel.protos.vocabulary import ComponentRef, ffn_id, head_id, parse_component

EXPECTED_KV = {"bert": 4, "gpt2": 4, "llama": 2}


def test_layout_of_tiny_models_plain_and_wrapped(tiny_base) -> None:
    expected = ModelLayout(
        family=tiny_base.family,
        num_layers=2,
        num_heads=4,
        num_kv_heads=EXPECTED_KV[tiny_base.family],
        head_dim=8,
        hidden_size=32,
    )
    assert model_layout(tiny_base.model) == expected
    assert model_layout(attach_lora(tiny_base, rank=2)) == expected


def test_components_are_listed_in_order(tiny_base, tiny_lm) -> None:
    expected = ["embeddings"]
    for layer in range(2):
        expected += [f"layer.{layer}.head.{h}" for h in range(4)] + [f"layer.{layer}.ffn"]
    assert list_components(tiny_base.model) == expected + ["classifier"]
    assert list_components(tiny_lm.model) == expected + ["lm_head"]
    assert list_components(attach_lora(tiny_base, rank=2)) == expected + ["classifier"]


LAYOUT = ModelLayout(family="bert", num_layers=8, num_heads=12, num_kv_heads=12, head_dim=8, hidden_size=96)


def test_component_ids_round_trip() -> None:
    assert parse_component(head_id(3, 11)) == ComponentRef("layer.3.head.11", "head", 3, 11)
    assert parse_component(ffn_id(5)) == ComponentRef("layer.5.ffn", "ffn", 5, None)
    for name in ("embeddings", "classifier", "lm_head"):
        assert parse_component(name) == ComponentRef(name, name, None, None)  # type: ignore[arg-type]
    assert check_component(LAYOUT, head_id(3, 11)) == ComponentRef("layer.3.head.11", "head", 3, 11)


@pytest.mark.parametrize(
    "bad", ["layer.1.head", "layer.01.head.2", "layer.-1.head.0", "head.1", "layer.1.ffn.0", "Classifier", ""]
)
def test_bad_component_ids_raise_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="not a component id"):
        parse_component(bad)
    with pytest.raises(ComponentError, match="bad component id") as raised:
        check_component(LAYOUT, bad)
    assert isinstance(raised.value, ValueError) and isinstance(raised.value.__cause__, ValueError)


def test_check_component_rejects_out_of_range(tiny_base) -> None:
    layout = model_layout(tiny_base.model)
    check_component(layout, "layer.1.head.3")
    with pytest.raises(ComponentError, match="layer 2 out of range"):
        check_component(layout, "layer.2.head.0")
    with pytest.raises(ComponentError, match="head 4 out of range"):
        check_component(layout, "layer.0.head.4")


def test_attention_modules_point_at_real_modules(tiny_base) -> None:
    for model in (tiny_base.model, attach_lora(tiny_base, rank=2)):
        modules = dict(model.named_modules())
        params = dict(model.named_parameters())
        parts = attention_modules(model)
        assert [p.layer for p in parts] == [0, 1]
        for part in parts:
            for proj in (part.q, part.k, part.v, part.o):
                assert proj.path in modules
                assert params[proj.weight_name] is proj.module.weight
    if tiny_base.family == "gpt2":
        part = attention_modules(tiny_base.model)[0]
        assert part.q.path == part.k.path == part.v.path
        assert (part.q.offset, part.k.offset, part.v.offset) == (0, 32, 64)
        assert part.q.transposed and part.o.transposed
    if tiny_base.family == "bert":
        # The attention output dense, not the FFN output dense.
        assert attention_modules(tiny_base.model)[0].o.path.endswith("attention.output.dense")


def _perturb(model: torch.nn.Module, slices, scale: float = 0.5) -> None:
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for s in slices:
            view = params[s.param_name].narrow(s.dim, s.start, s.stop - s.start)
            view.add_(scale * torch.randn(view.shape, generator=generator))


def _layer0_attention(base) -> torch.Tensor:
    enc = base.tokenizer(["attention heads are addressable"], return_tensors="pt")
    with torch.no_grad():
        return base.model(**enc, output_attentions=True).attentions[0][0]


def _group(family: str, head: int) -> int:
    return head // (4 // EXPECTED_KV[family])


@pytest.mark.parametrize("head", [0, 3])
def test_head_slices_hold_exactly_that_heads_weights(tiny_base, head: int) -> None:
    """Perturbing a head's slices changes its attention (and only its kv group's)."""
    before = _layer0_attention(tiny_base)
    _perturb(tiny_base.model, head_parameter_slices(tiny_base.model, 0, head))
    after = _layer0_attention(tiny_base)
    for h in range(4):
        changed = not torch.allclose(before[h], after[h], atol=1e-6)
        # q is private to the head; k/v are shared by the heads of one GQA group.
        assert changed == (_group(tiny_base.family, h) == _group(tiny_base.family, head)), h


def test_weights_outside_a_heads_slices_leave_its_attention_alone(tiny_base) -> None:
    head = 1
    mine = {(s.param_name, s.dim, s.start) for s in head_parameter_slices(tiny_base.model, 0, head)}
    others = [
        s
        for h in range(4)
        for s in head_parameter_slices(tiny_base.model, 0, h)
        if (s.param_name, s.dim, s.start) not in mine
    ]
    before = _layer0_attention(tiny_base)
    _perturb(tiny_base.model, others)
    after = _layer0_attention(tiny_base)
    torch.testing.assert_close(after[head], before[head])
    assert not torch.allclose(after[3], before[3], atol=1e-6)


def test_head_slices_tile_the_projections(tiny_base) -> None:
    """Over all heads, q slices and o slices cover each feature once; k/v once per group."""
    parts = attention_modules(tiny_base.model)[0]
    counts: dict[tuple[str, int], torch.Tensor] = {}
    for h in range(4):
        for s in head_parameter_slices(tiny_base.model, 0, h):
            size = dict(tiny_base.model.named_parameters())[s.param_name].shape[s.dim]
            counts.setdefault((s.param_name, s.dim), torch.zeros(size))[s.start : s.stop] += 1
    group = 4 // EXPECTED_KV[tiny_base.family]
    if tiny_base.family == "gpt2":
        fused = counts[(parts.q.weight_name, 1)]
        assert torch.equal(fused, torch.ones(96))
    else:
        assert torch.equal(counts[(parts.q.weight_name, 0)], torch.ones(32))
        assert torch.equal(counts[(parts.k.weight_name, 0)], torch.full((32 // group,), float(group)))
    o_dim = 0 if parts.o.transposed else 1
    assert torch.equal(counts[(parts.o.weight_name, o_dim)], torch.ones(32))


def test_head_slices_reject_out_of_range(tiny_base) -> None:
    with pytest.raises(ComponentError):
        head_parameter_slices(tiny_base.model, 2, 0)
    with pytest.raises(ComponentError):
        head_parameter_slices(tiny_base.model, 0, 4)
