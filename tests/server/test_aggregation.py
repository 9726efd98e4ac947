"""Exact vs naive LoRA aggregation and SVD redistribution (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.server.aggregation import (
    LoraUpdate,
    exact_aggregate,
    factorise_all,
    naive_aggregate,
    svd_factorise,
    weighted_mean,
)


def _random_update(rng: np.random.Generator, rank: int, weight: float, out: int = 12, inp: int = 10) -> LoraUpdate:
    return LoraUpdate(
        a={"m": rng.normal(size=(rank, inp)), "n": rng.normal(size=(rank, inp))},
        b={"m": rng.normal(size=(out, rank)), "n": rng.normal(size=(out, rank))},
        scaling=1.0 + 0.5 * rank,
        weight=weight,
    )


def test_exact_aggregation_is_weighted_mean_of_products_for_mixed_ranks() -> None:
    rng = np.random.default_rng(0)
    updates = [_random_update(rng, r, w) for r, w in [(2, 10.0), (4, 30.0), (16, 60.0)]]
    got = exact_aggregate(updates)
    total = sum(u.weight for u in updates)
    for m in ("m", "n"):
        expected = sum(u.weight / total * u.scaling * u.b[m] @ u.a[m] for u in updates)
        np.testing.assert_allclose(got[m], expected, atol=1e-5, rtol=0)


def test_naive_aggregation_differs_measurably_from_exact() -> None:
    rng = np.random.default_rng(1)
    updates = [_random_update(rng, r, 1.0) for r in (4, 4, 16)]
    exact = exact_aggregate(updates)["m"]
    naive = naive_aggregate(updates)["m"]
    rel = np.linalg.norm(naive - exact) / np.linalg.norm(exact)
    assert rel > 0.1


def test_naive_equals_exact_for_a_single_client() -> None:
    rng = np.random.default_rng(2)
    u = _random_update(rng, 4, 3.0)
    np.testing.assert_allclose(naive_aggregate([u])["m"], exact_aggregate([u])["m"], atol=1e-10)


def test_svd_factorise_returns_best_rank_r_approximation() -> None:
    rng = np.random.default_rng(3)
    delta = rng.normal(size=(20, 15))
    f = svd_factorise(delta, 5)
    assert f.a.shape == (5, 15) and f.b.shape == (20, 5)
    approx = f.b.astype(np.float64) @ f.a.astype(np.float64)
    assert np.linalg.matrix_rank(approx) == 5
    s = np.linalg.svd(delta, compute_uv=False)
    # Eckart–Young: the error is exactly the discarded singular values.
    assert np.linalg.norm(delta - approx) == pytest.approx(np.sqrt(np.sum(s[5:] ** 2)), rel=1e-4)


def test_svd_factorise_is_exact_when_rank_suffices_and_pads_beyond() -> None:
    rng = np.random.default_rng(4)
    low = rng.normal(size=(8, 3)) @ rng.normal(size=(3, 6))
    f = svd_factorise(low, 10)
    assert f.a.shape == (10, 6) and f.b.shape == (8, 10)
    np.testing.assert_allclose(f.b @ f.a, low, atol=1e-5)
    parts, residual = factorise_all({"x": low}, 3)
    assert residual < 1e-6
    _, residual2 = factorise_all({"x": low}, 1)
    assert 0.0 < residual2 < 1.0


def test_zero_update_has_zero_residual() -> None:
    parts, residual = factorise_all({"x": np.zeros((4, 4))}, 2)
    assert residual == 0.0
    np.testing.assert_array_equal(parts["x"].b @ parts["x"].a, np.zeros((4, 4)))


def test_bad_inputs_are_refused() -> None:
    rng = np.random.default_rng(5)
    u = _random_update(rng, 2, 1.0)
    with pytest.raises(ValueError, match="weights"):
        exact_aggregate([LoraUpdate(u.a, u.b, u.scaling, 0.0)])
    with pytest.raises(ValueError, match="rank"):
        svd_factorise(np.eye(3), 0)
    with pytest.raises(ValueError, match="different modules"):
        exact_aggregate([u, LoraUpdate({"m": u.a["m"]}, {"m": u.b["m"]}, 1.0, 1.0)])


def test_weighted_mean_matches_fedavg() -> None:
    a = {"w": np.ones((2, 2))}
    b = {"w": np.zeros((2, 2))}
    np.testing.assert_allclose(weighted_mean([a, b], [3, 1])["w"], 0.75 * np.ones((2, 2)))

