"""The saved adapter is the evaluated model: checkpoint/best reproduces the exact global state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from sentinel.models.global_model import materialise
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.server.aggregation import numerical_rank
from sentinel.server.central import EXPORT_TOLERANCE, export_peft_adapter, initial_state
from sentinel.server.state import GlobalState

TEXTS = ["the adapter is the model", "short", "héllo wörld and a longer sentence to pad the batch"]


def _state_with_mixed_ranks(base: LoadedModel, seed: int = 0) -> tuple[GlobalState, dict[str, int]]:
    """A global state whose modules have ranks 0 (zero ΔW), 3, 12 and full, with a decaying spectrum."""
    start = initial_state(base)
    rng = np.random.default_rng(seed)
    deltas, ranks = {}, {}
    for i, (module, zero) in enumerate(sorted(start.deltas.items())):
        out, inp = zero.shape
        k = [0, 3, 12, min(out, inp)][i % 4]
        spectrum = 0.3 * 0.8 ** np.arange(k)  # decaying, as a trained update's is
        u, _ = np.linalg.qr(rng.normal(size=(out, max(k, 1))))
        v, _ = np.linalg.qr(rng.normal(size=(inp, max(k, 1))))
        deltas[module] = ((u[:, :k] * spectrum) @ v[:, :k].T).astype(np.float32) if k else zero
        ranks[module] = k
    head = {name: (value + rng.normal(scale=0.2, size=value.shape)).astype(np.float32) for name, value in start.head.items()}
    return GlobalState(deltas=deltas, head=head, round=3), ranks


def _logits(model: torch.nn.Module, base: LoadedModel) -> torch.Tensor:
    enc = base.tokenizer(TEXTS, padding=True, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        return model(**enc).logits


@pytest.mark.parametrize("preset", ["tiny-bert", "tiny-gpt2"])
def test_best_adapter_reloaded_with_peft_gives_the_coordinators_logits(tmp_path: Path, preset: str) -> None:
    base = load_base_model(preset, num_labels=2, seed=0)
    state, _ = _state_with_mixed_ranks(base)
    exported = export_peft_adapter(base, state, tmp_path / "best")
    expected = _logits(materialise(base, state.deltas, state.head), base)

    fresh = load_base_model(preset, num_labels=2, seed=0)
    loaded = PeftModel.from_pretrained(fresh.model, str(exported.path))
    got = _logits(loaded, fresh)
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 1e-4 * max(scale, 1.0)
    assert exported.residual <= EXPORT_TOLERANCE


def test_each_module_gets_the_rank_its_update_needs_and_no_more(tmp_path: Path) -> None:
    base = load_base_model("tiny-bert", num_labels=2, seed=0)
    state, true_ranks = _state_with_mixed_ranks(base)
    exported = export_peft_adapter(base, state, tmp_path / "best")
    for module, delta in state.deltas.items():
        needed = numerical_rank(np.linalg.svd(delta.astype(np.float64), compute_uv=False), EXPORT_TOLERANCE)
        assert exported.ranks[module] == max(needed, 1)  # a zero update still needs one (zero) component
        assert needed <= true_ranks[module]
    # The adapter is smaller than a uniform full-rank one whenever some module is low-rank.
    full = sum(2 * d.shape[0] * d.shape[1] for d in state.deltas.values())
    assert exported.num_parameters < full


def test_adapter_config_names_the_base_model_and_lists_the_head_once(tmp_path: Path) -> None:
    base = load_base_model("tiny-bert", num_labels=2, seed=0)
    state, _ = _state_with_mixed_ranks(base)
    exported = export_peft_adapter(base, state, tmp_path / "best")
    config = json.loads((exported.path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-bert"
    assert config["modules_to_save"] == ["classifier"]
    assert set(config["rank_pattern"].values()) == set(exported.ranks.values())
    assert config["alpha_pattern"] == {k: float(v) for k, v in config["rank_pattern"].items()}  # scaling 1
    renamed = export_peft_adapter(base, state, tmp_path / "named", base_model_name="org/some-model")
    assert json.loads((renamed.path / "adapter_config.json").read_text())["base_model_name_or_path"] == "org/some-model"


def test_rank_is_a_floor_not_a_truncation(tmp_path: Path) -> None:
    base = load_base_model("tiny-bert", num_labels=2, seed=0)
    state, _ = _state_with_mixed_ranks(base)
    exported = export_peft_adapter(base, state, tmp_path / "best", 8)
    for module, delta in state.deltas.items():
        assert exported.ranks[module] >= min(8, *delta.shape)
    assert exported.residual <= EXPORT_TOLERANCE
