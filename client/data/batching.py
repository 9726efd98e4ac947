"""Turning examples into tokenised, seeded mini-batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from sentinel.client.data import Example
from sentinel.models.predictions import classifier_logits
from transformers import PreTrainedTokenizerBase


def encode(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int
) -> dict[str, torch.Tensor]:
    """Tokenise a batch of examples (padded, truncated) with their labels."""
    enc = tokenizer(
        [e.text for e in examples],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return batch


def iter_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int,
    max_length: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches over ``examples`` in order (for evaluation)."""
    for i in range(0, len(examples), batch_size):
        yield encode(tokenizer, examples[i : i + batch_size], max_length)


def iter_length_sorted_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int,
    max_length: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches over ``examples`` sorted by token length, shortest first (for evaluation that only sums over examples).

    Each batch is padded to its longest sentence, so grouping sentences of like
    length cuts the padded positions every forward pass computes (measured on
    300 UCI sentences in batches of 16: 42 % of them at 32 tokens, 52 % at 64). The order is a
    stable sort, the same on every call, so readings of two models pair
    example by example.
    """
    order = length_order(tokenizer, examples, max_length)
    yield from iter_batches(tokenizer, [examples[i] for i in order], batch_size, max_length)


def length_order(tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int) -> list[int]:
    """Indices of ``examples`` by token length, shortest first (a stable sort: the same order on every call)."""
    if not examples:
        return []
    lengths = [len(ids) for ids in tokenizer([e.text for e in examples], truncation=True, max_length=max_length)["input_ids"]]
    return sorted(range(len(examples)), key=lengths.__getitem__)


def classifier_logits_by_length(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int,
    max_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``models.predictions.classifier_logits`` over ``examples``, run in length-sorted batches, returned in example order.

    Why: an evaluation is a function of every example's logits, so the batches
    may be grouped by length; on the UCI test set (448 sentences, 48 tokens)
    that cuts the positions a forward pass computes from 20,096 to 8,128 and
    central evaluation from 13.9 s to 3.7 s on one thread. Row ``i`` is
    example ``i``'s, as an in-order evaluation gives it.
    """
    order = length_order(tokenizer, examples, max_length)
    logits, labels = classifier_logits(model, iter_batches(tokenizer, [examples[i] for i in order], batch_size, max_length))
    if not order:
        return logits, labels
    in_order, in_order_labels = np.empty_like(logits), np.empty_like(labels)
    in_order[order], in_order_labels[order] = logits, labels
    return in_order, in_order_labels


def sample_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    batch_size: int,
    max_length: int,
    steps: int,
    seed: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """``steps`` training batches drawn epoch by epoch from a seeded shuffle.

    Deterministic for a given seed, so a resumed run replays the same batches.
    """
    if not examples:
        raise ValueError("no training examples: this node's partition is empty")
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for _ in range(steps):
        if len(order) < batch_size:
            order.extend(rng.permutation(len(examples)).tolist())
        take, order = order[:batch_size], order[batch_size:]
        yield encode(tokenizer, [examples[i] for i in take], max_length)
