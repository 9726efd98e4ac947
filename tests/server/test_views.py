"""Exact views and the shared frame (pure numpy): exactness, rank, and what a round costs."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from sentinel.client.frames import FILL_NORM, factor_of_round, frame_columns, frame_rows, orthonormal_rows
from sentinel.server.aggregation import LoraUpdate, exact_aggregate, exact_factorise, numerical_rank
from sentinel.server.config import FederationConfig, TrainingDesignName
from sentinel.server.views import DEFAULT_DESIGN, DESIGNS, LEGACY_DESIGN, TrainingDesign, design_named, factorise_view, view_error

S = 2.0  # the protocol's LoRA scaling


def test_numerical_rank_is_the_smallest_rank_within_the_tolerance() -> None:
    s = np.array([3.0, 2.0, 1.0, 1e-4, 0.0])
    total = np.sqrt(np.sum(s**2))
    assert numerical_rank(s, 0.0) == 4
    assert numerical_rank(s, 1e-4 / total * 1.01) == 3
    assert numerical_rank(s, 0.5) == 2  # ‖(1, 1e-4)‖ ≤ 0.5‖σ‖ < ‖(2, 1, 1e-4)‖
    assert numerical_rank(s, 0.6) == 1
    assert numerical_rank(np.zeros(3), 1e-6) == 0


def test_exact_factorise_keeps_the_residual_within_the_tolerance() -> None:
    rng = np.random.default_rng(0)
    d = rng.normal(size=(20, 6)) @ rng.normal(size=(6, 15)) + 1e-9 * rng.normal(size=(20, 15))
    f = exact_factorise(d, 1e-6)
    assert f.a.shape == (6, 15) and f.b.shape == (20, 6)
    assert np.linalg.norm(d - f.b.astype(np.float64) @ f.a.astype(np.float64)) <= 1e-6 * np.linalg.norm(d)
    zero = exact_factorise(np.zeros((4, 5)))
    assert zero.a.shape == (0, 5) and zero.b.shape == (4, 0)


def test_frames_continue_the_global_adapter_and_complete_it_the_same_everywhere() -> None:
    rng = np.random.default_rng(1)
    delta = rng.normal(size=(12, 3)) @ rng.normal(size=(3, 10))
    view = factorise_view({"m": delta}, None)["m"]  # balanced: B = U√Σ, A = √Σ Vᵀ
    rows = frame_rows(view.a, 5, S, run_seed=0, server_round=2, module="m").astype(np.float64)
    np.testing.assert_allclose(rows[:3], view.a / np.sqrt(S), rtol=1e-6)  # the global adapter's own A
    np.testing.assert_allclose(rows[3:] @ rows[3:].T, FILL_NORM**2 * np.eye(2), atol=1e-6)
    np.testing.assert_allclose(rows[3:] @ rows[:3].T, 0.0, atol=1e-6)  # new directions only
    np.testing.assert_array_equal(rows, frame_rows(view.a, 5, S, 0, 2, "m"))  # the same on every node
    assert not np.allclose(rows[3:], frame_rows(view.a, 5, S, 0, 3, "m")[3:])
    np.testing.assert_allclose(frame_rows(view.a, 2, S, 0, 2, "m"), view.a[:2] / np.sqrt(S), rtol=1e-6)  # top ones
    cols = frame_columns(view.b, 4, S)
    np.testing.assert_allclose(cols[:, :3], view.b / np.sqrt(S), rtol=1e-6)
    assert not cols[:, 3].any()
    # The frozen factor times the global adapter's other factor is the global update itself.
    np.testing.assert_allclose(S * cols[:, :3].astype(np.float64) @ rows[:3], delta, atol=1e-5)
    assert orthonormal_rows(np.zeros((2, 4)), 2, 4).shape == (0, 4)


def test_schedule_starts_with_b_and_alternates() -> None:
    assert [factor_of_round(r, "alternate") for r in (1, 2, 3, 4)] == ["b", "a", "b", "a"]
    assert {factor_of_round(r, "b") for r in range(1, 6)} == {"b"}
    with pytest.raises(ValueError, match="schedule"):
        factor_of_round(1, "sometimes")
    assert TrainingDesign().train_factor(2) == "a" and LEGACY_DESIGN.train_factor(2) is None


def _frame_update(view: tuple[np.ndarray, np.ndarray], rank: int, factor: str, rnd: int, rng: np.random.Generator) -> LoraUpdate:
    """What a node trained in the frame sends: the frozen factor and a trained one (random here)."""
    a_view, b_view = view
    out, inp = b_view.shape[0], a_view.shape[1]
    if factor == "b":
        a, b = frame_rows(a_view, rank, S, 0, rnd, "m"), rng.normal(scale=0.01, size=(out, rank))
    else:
        a, b = rng.normal(scale=0.01, size=(rank, inp)), frame_columns(b_view, rank, S)
    return LoraUpdate(a={"m": a}, b={"m": b}, scaling=S, weight=float(rng.integers(10, 50)))


@pytest.mark.parametrize("schedule", ["b", "alternate"])
def test_frame_updates_keep_the_global_update_at_the_largest_rank_and_its_view_exact(schedule: str) -> None:
    rng = np.random.default_rng(2)
    design = TrainingDesign(schedule=schedule)
    ranks = [2, 2, 8, 8, 8]
    delta = np.zeros((24, 20))
    for rnd in range(1, 7):
        view = factorise_view({"m": delta}, None)["m"]
        factor = design.train_factor(rnd)
        updates = [_frame_update((view.a, view.b), r, factor, rnd, rng) for r in ranks]
        delta = delta + exact_aggregate(updates)["m"]
        s = np.linalg.svd(delta, compute_uv=False)
        assert numerical_rank(s, 1e-6) <= max(ranks)
        exact = factorise_view({"m": delta}, None)
        assert exact["m"].a.shape[0] <= max(ranks)
        assert view_error({"m": delta}, exact) <= 1e-6


def test_fresh_updates_outgrow_any_truncated_view() -> None:
    rng = np.random.default_rng(3)
    delta = np.zeros((24, 20))
    for _ in range(4):
        updates = [LoraUpdate({"m": rng.normal(size=(r, 20))}, {"m": rng.normal(size=(24, r))}, S, 1.0) for r in (2, 8, 8)]
        delta = delta + exact_aggregate(updates)["m"]
    assert numerical_rank(np.linalg.svd(delta, compute_uv=False), 1e-6) == 20  # full rank after four rounds
    assert view_error({"m": delta}, factorise_view({"m": delta}, 8)) > 0.1
    assert view_error({"m": delta}, factorise_view({"m": delta}, None)) <= 1e-6


def test_every_design_a_config_can_name_exists_and_the_default_is_the_configs() -> None:
    assert set(DESIGNS) == set(get_args(TrainingDesignName))
    assert DEFAULT_DESIGN == design_named(FederationConfig().training_design)
    assert design_named("frame") == TrainingDesign() and design_named("legacy") == LEGACY_DESIGN
    with pytest.raises(ValueError, match="unknown training design"):
        design_named("resumed")
