"""Which student weights belong to which consent component in distillation, on all three families."""

from __future__ import annotations

import pytest
from sentinel.models.components import model_layout
from sentinel.models.distill_consent import components_of_parameter, frozen_parameter_names, kept_heads
from sentinel.models.loading import load_base_model


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
def test_every_parameter_has_a_component_and_a_forbidden_head_freezes_only_its_layers_attention(preset: str) -> None:
    model = load_base_model(preset, num_labels=2, seed=0).model
    layout = model_layout(model)
    kept = kept_heads(None, layout)
    names = [n for n, _ in model.named_parameters()]
    by_name = {n: components_of_parameter(layout.family, n, kept) for n in names}
    assert all(by_name.values())  # nothing escapes consent
    frozen = set(frozen_parameter_names(layout.family, names, ["layer.0.head.1"], kept))
    assert frozen and all(by_name[n] == [f"layer.0.head.{h}" for h in range(layout.num_heads)] for n in frozen)
    assert not any("layer.1.head.0" in by_name[n] for n in frozen)
    ffn = set(frozen_parameter_names(layout.family, names, ["layer.1.ffn"], kept))
    assert ffn and all(by_name[n] == ["layer.1.ffn"] for n in ffn) and not ffn & frozen
    assert frozen_parameter_names(layout.family, names, [], kept) == []


def test_a_pruned_head_no_longer_owns_its_layers_projections() -> None:
    import numpy as np

    model = load_base_model("tiny-bert", num_labels=2, seed=0).model
    layout = model_layout(model)
    mask = np.ones((layout.num_layers, layout.num_heads), dtype=np.float32)
    mask[0, 1] = 0.0  # head 1 of layer 0 is pruned: a ban on distilling it freezes nothing
    names = [n for n, _ in model.named_parameters()]
    assert frozen_parameter_names(layout.family, names, ["layer.0.head.1"], kept_heads(mask, layout)) == []
    assert frozen_parameter_names(layout.family, names, ["layer.0.head.0"], kept_heads(mask, layout))
