"""Reach-weighted aggregation: each direction of the shared frame is averaged over the nodes that train it.

Reproduced before: with a rank-4 node beside a rank-16 node in the frame, the
twelve directions only the rank-16 node trains moved by its weight's share of
its change (the rank-4 node's zero there counted in the mean), so the global
update in those directions was diluted by every low-rank node's weight.
"""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.client.frames import FILL_NORM, frame_rows
from sentinel.server.aggregation import LoraUpdate, exact_aggregate
from sentinel.server.frame_aggregation import FrameBasis, frame_bases, frame_problem, reach_weighted_aggregate
from sentinel.server.views import TrainingDesign, design_named

RNG = np.random.default_rng(11)
OUT, IN, R = 10, 12, 6
SCALING = 2.0
M = "m"


def _frame() -> np.ndarray:
    q, _ = np.linalg.qr(RNG.standard_normal((IN, R)))
    return q.T  # R × IN, orthonormal rows


def _b_update(frame: np.ndarray, rank: int, weight: float, mix: np.ndarray | None = None) -> LoraUpdate:
    """A B-round update: A frozen to ``rank`` of the frame's rows (its leading ones, or ``mixᵀ F``), B trained."""
    a = FILL_NORM * (frame[:rank] if mix is None else mix.T @ frame)
    b = RNG.standard_normal((OUT, rank))
    return LoraUpdate(a={M: a.astype(np.float32)}, b={M: b.astype(np.float32)}, scaling=SCALING, weight=weight)


def _coords(delta: np.ndarray, frame: np.ndarray) -> np.ndarray:
    return delta @ frame.T


def test_with_every_node_reaching_the_whole_frame_it_is_the_exact_mean() -> None:
    frame = _frame()
    updates = [_b_update(frame, R, w) for w in (3.0, 1.0, 2.0)]
    supports = [{}, {M: np.array([[True]] * 4 + [[False]] * (OUT - 4))}, {}]
    frames = {M: FrameBasis(frame, "rows")}
    for s in (None, supports):
        np.testing.assert_allclose(reach_weighted_aggregate(updates, frames, s)[M], exact_aggregate(updates, s)[M], atol=1e-5)


def test_directions_only_the_full_rank_node_trains_are_not_diluted_by_the_low_rank_one() -> None:
    frame = _frame()
    full, low = _b_update(frame, R, 1.0), _b_update(frame, 2, 2.0)
    mean = reach_weighted_aggregate([full, low], {M: FrameBasis(frame, "rows")})[M]
    plain = exact_aggregate([full, low])[M]
    c_full, c_low, c = _coords(full.delta(M), frame), _coords(low.delta(M), frame), _coords(mean, frame)
    np.testing.assert_allclose(c[:, 2:], c_full[:, 2:], atol=1e-5)  # its own change, not a third of it
    np.testing.assert_allclose(_coords(plain, frame)[:, 2:], c_full[:, 2:] / 3, atol=1e-5)  # the dilution, before
    np.testing.assert_allclose(c[:, :2], (c_full[:, :2] + 2 * c_low[:, :2]) / 3, atol=1e-5)  # both reach these
    np.testing.assert_allclose(mean, c @ frame, atol=1e-5)  # it stays in the frame: rank ≤ R


def test_a_rotated_sub_frame_counts_where_it_reaches() -> None:
    frame = _frame()
    mix, _ = np.linalg.qr(RNG.standard_normal((R, 2)))
    full, low = _b_update(frame, R, 1.0), _b_update(frame, 2, 1.0, mix)
    mean = reach_weighted_aggregate([full, low], {M: FrameBasis(frame, "rows")})[M]
    c = _coords(mean, frame)
    # Outside the low node's sub-frame the full node alone speaks; inside, the two are averaged.
    outside = np.eye(R) - mix @ mix.T
    np.testing.assert_allclose(c @ outside, _coords(full.delta(M), frame) @ outside, atol=1e-5)
    inside = (_coords(full.delta(M), frame) + _coords(low.delta(M), frame)) @ mix @ mix.T / 2
    np.testing.assert_allclose(c @ mix @ mix.T, inside, atol=1e-5)


def test_consent_rows_weight_each_row_group_and_a_slice_along_the_frame_falls_back() -> None:
    frame = _frame()
    full, low = _b_update(frame, R, 1.0), _b_update(frame, 2, 1.0)
    rows = np.array([[True]] * 3 + [[False]] * (OUT - 3))
    mean = reach_weighted_aggregate([full, low], {M: FrameBasis(frame, "rows")}, [{}, {M: rows}])[M]
    np.testing.assert_allclose(mean[3:], full.delta(M)[3:], atol=1e-5)  # rows the low node may not change
    c = _coords(mean, frame)
    np.testing.assert_allclose(c[:3, :2], (_coords(full.delta(M), frame) + _coords(low.delta(M), frame))[:3, :2] / 2, atol=1e-5)
    columns = np.array([[True] * 5 + [False] * (IN - 5)])  # along the frame's side: the consent-weighted mean
    along = [{}, {M: columns}]
    np.testing.assert_allclose(reach_weighted_aggregate([full, low], {M: FrameBasis(frame, "rows")}, along)[M],
                               exact_aggregate([full, low], along)[M], atol=1e-12)
    nobody = [{}, {M: np.zeros((1, 1), dtype=bool)}]  # the low node may not change the module at all
    np.testing.assert_allclose(reach_weighted_aggregate([full, low], {M: FrameBasis(frame, "rows")}, nobody)[M],
                               full.delta(M), atol=1e-5)


def test_an_a_round_weights_the_column_frame_the_same_way() -> None:
    frame_t = np.linalg.qr(RNG.standard_normal((OUT, R)))[0].T  # R × OUT: the column frame
    b_full, b_low = FILL_NORM * frame_t.T, FILL_NORM * frame_t[:2].T
    full = LoraUpdate(a={M: RNG.standard_normal((R, IN)).astype(np.float32)}, b={M: b_full.astype(np.float32)}, scaling=SCALING, weight=1.0)
    low = LoraUpdate(a={M: RNG.standard_normal((2, IN)).astype(np.float32)}, b={M: b_low.astype(np.float32)}, scaling=SCALING, weight=1.0)
    mean = reach_weighted_aggregate([full, low], {M: FrameBasis(frame_t, "columns")})[M]
    c, c_full = frame_t @ mean, frame_t @ full.delta(M)
    np.testing.assert_allclose(c[2:], c_full[2:], atol=1e-5)
    np.testing.assert_allclose(c[:2], (c_full[:2] + frame_t[:2] @ low.delta(M)) / 2, atol=1e-5)


def test_the_coordinators_frame_is_the_one_nodes_build_and_the_design_needs_a_frame() -> None:
    view_a = RNG.standard_normal((3, IN)).astype(np.float32)
    bases = frame_bases({M: (view_a, np.zeros((OUT, 3)))}, {M: (OUT, IN)}, "b", R, 5, 2, 4.0, "unit")
    node_rows = frame_rows(view_a, R, SCALING, 5, 2, M, gain=4.0, scale="unit")
    q = bases[M].basis
    np.testing.assert_allclose(q @ q.T, np.eye(R), atol=1e-5)
    np.testing.assert_allclose(node_rows @ q.T @ q, node_rows, atol=1e-5)  # the node's frame lies in the coordinator's
    assert design_named("frame-unit-reach").reach_weighted and not design_named("frame-unit").reach_weighted
    with pytest.raises(ValueError, match="reach_weighted"):
        TrainingDesign(adapter="fresh", reach_weighted=True)


def test_a_frozen_factor_off_the_frame_is_named_and_one_inside_it_passes() -> None:
    """An update outside the frame would raise ΔW's rank, and with it every node's exact view: it is refused."""
    frame = _frame()
    frames = {M: FrameBasis(frame, "rows")}
    inside = _b_update(frame, 2, 1.0, np.linalg.qr(RNG.standard_normal((R, 2)))[0])
    assert frame_problem({M: (inside.a[M], inside.b[M])}, frames) == ""
    off = RNG.standard_normal((2, IN)).astype(np.float32)  # random rows: mostly outside a 6-of-12 frame
    assert "outside the shared frame" in frame_problem({M: (off, inside.b[M])}, frames) and f"`{M}`" in frame_problem(
        {M: (off, inside.b[M])}, frames
    )
    columns = {M: FrameBasis(np.linalg.qr(RNG.standard_normal((OUT, 3)))[0].T, "columns")}
    b_in = (columns[M].basis.T @ RNG.standard_normal((3, 2))).astype(np.float32)
    assert frame_problem({M: (off, b_in)}, columns) == ""  # an A round: B is the frozen one, A trains freely
    assert "outside the shared frame" in frame_problem({M: (off, RNG.standard_normal((OUT, 2)).astype(np.float32))}, columns)
    # Consent zeroes the frame's forbidden input columns on the node (o-projection): checked against that frame.
    keep = np.array([[True] * 7 + [False] * (IN - 7)])
    masked = (inside.a[M] * keep).astype(np.float32)
    assert frame_problem({M: (masked, inside.b[M])}, frames, {M: keep}) == ""
