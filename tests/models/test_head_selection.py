"""Head masks from scores: the lowest share pruned, consent respected, one head per layer kept; baselines."""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.models.components import model_layout
from sentinel.models.head_selection import head_magnitude, lowest_heads_mask, random_head_scores
from sentinel.models.loading import load_base_model
from sentinel.models.pruning import prune_heads


def test_lowest_share_is_pruned_globally() -> None:
    scores = np.array([[0.1, 0.9, 0.8, 0.2], [0.5, 0.05, 0.7, 0.6]])
    mask = lowest_heads_mask(scores, 0.375)  # 3 of 8 heads
    np.testing.assert_array_equal(mask, [[0, 1, 1, 0], [1, 0, 1, 1]])


def test_forbidden_heads_are_never_pruned_and_layers_keep_one_head() -> None:
    scores = np.array([[0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.7, 0.6]])
    prunable = np.array([[False, True, True, True], [True, True, True, True]])
    mask = lowest_heads_mask(scores, 0.5, prunable=prunable)
    assert mask[0, 0] == 1  # lowest score, but its contract forbids pruning
    assert (mask == 0).sum() == 4
    everything = lowest_heads_mask(scores, 0.99)
    assert everything.sum(axis=1).tolist() == [1, 1]  # never a layer with no head
    assert lowest_heads_mask(scores, 0.99, prunable=np.zeros_like(prunable)).min() == 1


def test_current_mask_counts_toward_the_share() -> None:
    scores = np.array([[0.1, 0.9, 0.8, 0.2], [0.5, 0.05, 0.7, 0.6]])
    current = np.ones((2, 4), dtype=np.float32)
    current[1, 3] = 0
    mask = lowest_heads_mask(scores, 0.25, current=current)
    assert mask[1, 3] == 0 and (mask == 0).sum() == 2 and mask[1, 1] == 0
    assert current[1, 1] == 1  # input not mutated


@pytest.mark.parametrize("kwargs", [{"share": 1.0}, {"share": -0.1}, {"share": 0.2, "min_heads_per_layer": 0}])
def test_bad_arguments_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        lowest_heads_mask(np.ones((2, 4)), **kwargs)


def test_magnitude_scores_are_norms_and_nan_for_pruned_heads() -> None:
    base = load_base_model("tiny-gpt2")
    scores = head_magnitude(base.model)
    assert scores.shape == (2, 4) and np.all(scores > 0)
    prune_heads(base.model, {0: [1]})
    after = head_magnitude(base.model)
    assert np.isnan(after[0, 1])
    np.testing.assert_allclose(np.delete(after[0], 1), np.delete(scores[0], 1), rtol=1e-6)


def test_random_scores_are_seeded() -> None:
    layout = model_layout(load_base_model("tiny-bert").model)
    np.testing.assert_array_equal(random_head_scores(layout, 3), random_head_scores(layout, 3))
    assert not np.array_equal(random_head_scores(layout, 3), random_head_scores(layout, 4))
