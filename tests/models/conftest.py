"""Shared tiny-model fixtures for the `models` tests (all offline, built from configs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from sentinel.models.loading import LoadedModel, load_base_model, seeded

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


class WordRule:
    """Texts of sentiment words, and tiny models trained briefly to label them by their first word.

    A random tiny model answers almost the same for every text; a model trained
    on this rule gives outputs that depend on the input, which distillation and
    quantization tests need to say anything.
    """

    WORDS = "good bad great awful fine poor nice terrible lovely dull bright grim".split()
    POSITIVE = frozenset({"good", "great", "fine", "nice", "lovely", "bright"})

    @classmethod
    def texts(cls, seed: int, n: int) -> list[str]:
        """`n` texts of 3 to 7 words, drawn under `seed`."""
        gen = torch.Generator().manual_seed(seed)
        return [" ".join(cls.WORDS[int(i)] for i in torch.randint(len(cls.WORDS), (3 + j % 5,), generator=gen)) for j in range(n)]

    @classmethod
    def labels(cls, texts: list[str]) -> torch.Tensor:
        """1 when a text starts with a positive word."""
        return torch.tensor([int(t.split()[0] in cls.POSITIVE) for t in texts])

    @classmethod
    def teacher(cls, preset: str, task: str = "classification", steps: int = 30) -> LoadedModel:
        """A tiny model trained `steps` AdamW steps on the rule (causal LM: on the texts themselves)."""
        base = load_base_model(preset, task=task, seed=1)
        texts = cls.texts(1234, 64)
        optimizer = torch.optim.AdamW(base.model.parameters(), lr=3e-3)
        base.model.train()
        with seeded(0):  # dropout: the same teacher every run
            for step in range(steps):
                chunk = texts[(step * 16) % 64 : (step * 16) % 64 + 16]
                batch = dict(base.tokenizer(chunk, padding=True, return_tensors="pt"))
                if task == "classification":
                    batch["labels"] = cls.labels(chunk)
                else:
                    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
                optimizer.zero_grad()
                base.model(**batch).loss.backward()
                optimizer.step()
        base.model.eval()
        return base


@pytest.fixture(scope="session")
def word_rule() -> type[WordRule]:
    """The `WordRule` helpers (a class: its methods build texts and trained tiny teachers)."""
    return WordRule
