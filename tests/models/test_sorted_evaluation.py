"""Evaluation in length-sorted batches gives every example's logits in the examples' own order."""

from __future__ import annotations

import numpy as np
from sentinel.client.data import Example
from sentinel.client.data.batching import classifier_logits_by_length, iter_batches, length_order
from sentinel.models.loading import load_base_model
from sentinel.models.predictions import classifier_logits

TEXTS = [
    "a fairly long sentence about the battery life of this phone, which is poor",
    "great",
    "the food was cold and the waiter was rude to us all evening",
    "ok",
    "would buy again",
    "not worth the money at all",
    "loved every minute of this film",
]


def _examples() -> list[Example]:
    return [Example(text=t, label=i % 2, domain=f"d{i % 3}") for i, t in enumerate(TEXTS)]


def test_length_order_is_shortest_first_and_stable() -> None:
    base = load_base_model("tiny-bert", num_labels=2)
    examples = _examples()
    order = length_order(base.tokenizer, examples, 32)
    lengths = [len(base.tokenizer(examples[i].text, truncation=True, max_length=32)["input_ids"]) for i in order]
    assert sorted(order) == list(range(len(examples))) and lengths == sorted(lengths)
    assert order == length_order(base.tokenizer, examples, 32)
    assert length_order(base.tokenizer, [], 32) == []


def test_sorted_logits_match_in_order_logits_row_by_row() -> None:
    base = load_base_model("tiny-bert", num_labels=2)
    examples = _examples()
    expected, expected_labels = classifier_logits(base.model, iter_batches(base.tokenizer, examples, 3, 32))
    logits, labels = classifier_logits_by_length(base.model, base.tokenizer, examples, 3, 32)
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    empty, empty_labels = classifier_logits_by_length(base.model, base.tokenizer, [], 3, 32)
    assert empty.shape[0] == 0 and empty_labels.shape == (0,)
