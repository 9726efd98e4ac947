"""Norm clipping of updates before the exact aggregate, and the aggregate's Gaussian noise (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.server.aggregation import (
    LoraUpdate,
    clip_factors,
    clip_updates,
    exact_aggregate,
    gaussian_noise,
    median_norm,
    update_norm,
)


def _update(rng: np.random.Generator, scale: float, weight: float = 1.0) -> LoraUpdate:
    return LoraUpdate(
        a={"m": rng.normal(size=(2, 6)), "k": rng.normal(size=(2, 3))},
        b={"m": scale * rng.normal(size=(4, 2)), "k": scale * rng.normal(size=(5, 2))},
        scaling=0.5,
        weight=weight,
    )


def test_update_norm_is_the_frobenius_norm_of_the_dense_update() -> None:
    u = _update(np.random.default_rng(0), 1.0)
    dense = np.concatenate([u.delta(m).ravel() for m in sorted(u.a)])
    assert update_norm(u) == pytest.approx(np.linalg.norm(dense))


def test_clipping_bounds_every_update_by_the_median_norm_and_leaves_the_others_exact() -> None:
    rng = np.random.default_rng(1)
    updates = [_update(rng, 1.0, w) for w in (10, 20, 30, 40)] + [_update(rng, 100.0, 50)]  # one boosted update
    bound = median_norm([update_norm(u) for u in updates])
    clipped = clip_updates(updates, bound)
    assert all(update_norm(c) <= bound * (1 + 1e-9) for c in clipped)
    assert update_norm(clipped[-1]) == pytest.approx(bound)
    within = [i for i, u in enumerate(updates) if update_norm(u) <= bound]
    assert within and all(clipped[i] is updates[i] for i in within)
    # With a bound nothing exceeds, the aggregate is exactly the unclipped one.
    loose = clip_updates(updates, 1e9)
    for m, d in exact_aggregate(loose).items():
        np.testing.assert_array_equal(d, exact_aggregate(updates)[m])


def test_clip_factors_leave_zero_updates_alone_and_refuse_a_negative_bound() -> None:
    np.testing.assert_allclose(clip_factors([0.0, 1.0, 4.0], 2.0), [1.0, 1.0, 0.5])
    with pytest.raises(ValueError):
        clip_factors([1.0], -1.0)


def test_gaussian_noise_has_the_requested_total_norm_and_zero_is_exact() -> None:
    deltas = {"m": np.zeros((200, 100)), "k": np.zeros((50, 40))}
    noisy = gaussian_noise(deltas, 0.5, 2.0, np.random.default_rng(0))
    total = np.sqrt(sum(float(np.sum(v**2)) for v in noisy.values()))
    assert total == pytest.approx(1.0, rel=0.02)
    assert gaussian_noise(deltas, 0.0, 2.0, np.random.default_rng(0)) == deltas
