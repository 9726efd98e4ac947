"""Shared tiny-model fixtures for the `models` tests (all offline, built from configs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from sentinel.models.loading import LoadedModel, load_base_model

TINY_PRESETS = ["tiny-bert", "tiny-gpt2", "tiny-llama"]

TEXTS = [
    "the quick brown fox jumps over the lazy dog",
    "consent matters",
    "héllo wörld, ünïcode and emoji 🙂 survive",
    "short",
]


@pytest.fixture(params=TINY_PRESETS)
def tiny_name(request: pytest.FixtureRequest) -> str:
    """Each tiny preset name in turn."""
    return request.param


@pytest.fixture
def tiny_base(tiny_name: str) -> LoadedModel:
    """A fresh tiny classification model (2 labels) of each family in turn."""
    return load_base_model(tiny_name, task="classification", num_labels=2, seed=0)


@pytest.fixture
def tiny_lm(tiny_name: str) -> LoadedModel:
    """A fresh tiny causal LM of each family in turn."""
    return load_base_model(tiny_name, task="causal-lm", seed=0)


@pytest.fixture
def make_batch() -> Callable[[LoadedModel], dict[str, torch.Tensor]]:
    """Tokenise the shared texts for a model, with labels fitting its task."""

    def build(base: LoadedModel) -> dict[str, torch.Tensor]:
        batch = dict(base.tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt"))
        if base.task == "classification":
            batch["labels"] = torch.tensor([0, 1, 1, 0])
        else:
            labels = batch["input_ids"].clone()
            labels[batch["attention_mask"] == 0] = -100
            batch["labels"] = labels
        return batch

    return build
