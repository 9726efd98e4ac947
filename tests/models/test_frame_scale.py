"""The unit frame (``frame-unit``): the frozen factor is an orthonormal basis of the global adapter's directions at PEFT's init norm.

Under the balanced frame the frozen factor is the global adapter's own factor
(√Σ per direction), so the step the trained factor makes in ΔW grows and shrinks
with ‖ΔW‖: tiny in the first A round, when B̄ has been trained one round from
zero. The unit frame keeps the same directions (so every update still lies in
the shared rank-R frame and aggregation stays exact at rank ≤ R) and fixes the
scale, so each round's step is a fresh adapter's.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from sentinel.client.app import app as client_app
from sentinel.client.frames import FILL_NORM, frame_columns, frame_rows
from sentinel.models.loading import load_base_model
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, global_view_record
from sentinel.server.central import initial_state
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.strategy import SentinelStrategy
from sentinel.server.views import TrainingDesign, config_design, design_named

SCALING = 2.0
RNG = np.random.default_rng(0)


def _balanced(out: int, inp: int, rank: int, size: float) -> tuple[np.ndarray, np.ndarray]:
    """Balanced view factors (A = √Σ Vᵀ, B = U √Σ, scaling 1) of a random rank-``rank`` ΔW of norm about ``size``."""
    u, _ = np.linalg.qr(RNG.standard_normal((out, rank)))
    v, _ = np.linalg.qr(RNG.standard_normal((inp, rank)))
    sigma = size * np.linspace(1.0, 0.2, rank)
    return np.sqrt(sigma)[:, None] * v.T, u * np.sqrt(sigma)[None, :]


def _span_distance(x: np.ndarray, y: np.ndarray) -> float:
    """How far the row space of ``x`` is from that of ``y`` (0: the same)."""
    qx, _ = np.linalg.qr(x.T)
    qy, _ = np.linalg.qr(y.T)
    return float(np.linalg.norm(qx @ qx.T - qy @ qy.T))


@pytest.mark.parametrize("size", [1e-4, 1.0, 50.0])
def test_unit_rows_are_orthonormal_at_init_norm_and_span_the_balanced_rows(size: float) -> None:
    view_a, _ = _balanced(12, 10, 3, size)
    for rank in (2, 3, 5):
        balanced = frame_rows(view_a, rank, SCALING, 1, 2, "m", scale="balanced")
        unit = frame_rows(view_a, rank, SCALING, 1, 2, "m", scale="unit", gain=2.0)
        np.testing.assert_allclose(unit @ unit.T, (2.0 * FILL_NORM) ** 2 * np.eye(rank), atol=1e-5)
        assert _span_distance(unit, balanced) < 1e-5  # the same frame directions, rows in the same order
        k = min(rank, 3)
        assert _span_distance(unit[:k], view_a[:k]) < 1e-5


def test_unit_columns_are_orthonormal_at_init_norm_zero_where_the_update_has_none() -> None:
    _, view_b = _balanced(12, 10, 3, 1e-3)
    unit = frame_columns(view_b, 5, SCALING, scale="unit")
    np.testing.assert_allclose(unit[:, :3].T @ unit[:, :3], FILL_NORM**2 * np.eye(3), atol=1e-5)
    assert not unit[:, 3:].any()
    assert _span_distance(unit[:, :3].T, view_b.T) < 1e-5
    assert not frame_columns(np.zeros((12, 0)), 4, SCALING, scale="unit").any()


def test_the_balanced_scale_is_unchanged_and_a_bad_scale_is_refused() -> None:
    view_a, view_b = _balanced(12, 10, 3, 0.5)
    np.testing.assert_allclose(frame_rows(view_a, 3, SCALING, 1, 2, "m"), view_a / np.sqrt(SCALING), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(frame_columns(view_b, 3, SCALING), view_b / np.sqrt(SCALING), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="frame scale"):
        frame_rows(view_a, 3, SCALING, 1, 2, "m", scale="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frame_scale"):
        TrainingDesign(frame_scale="huge")  # type: ignore[arg-type]
    assert design_named("frame-unit").frame_scale == "unit" and design_named("frame").frame_scale == "balanced"
    assert config_design(FederationConfig(training_design="frame-unit", frame_gain=3.0)).gain == 3.0


NODE = 903


def test_the_coordinator_sends_the_scale_and_a_node_trains_in_the_unit_frame() -> None:
    """Round 2 (an A round) on a real ClientApp: B is frozen to the unit basis of the view's columns, A trains from 0."""
    config = FederationConfig.model_validate(
        dict(
            model="tiny-bert", dataset="builtin:reviews?n=120", partition="iid", nodes=2, rounds=2, max_length=16,
            training_design="frame-unit",
            profiles={"gpu": RoleProfile(lora_rank=2, local_steps=1, batch_size=4, learning_rate=1e-2)},
        )
    )
    grid = LocalGrid({NODE: client_app}, {NODE: {"partition-id": 0, "num-partitions": 2, "role": "gpu", "device": "cpu"}})
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    info = NodeInfo(NODE, 0, "gpu", "")
    node_config = strategy.node_config(info, 2)
    node_config[P.C_TRAIN_FACTOR] = "a"
    node_config[P.C_FRAME_SCALE] = strategy.design.frame_scale
    assert node_config[P.C_FRAME_SCALE] == "unit"
    base = load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)
    state = initial_state(base)
    factors = {}
    for module, delta in state.deltas.items():
        a, b = _balanced(delta.shape[0], delta.shape[1], 2, 1e-3)
        factors[module] = (a.astype(np.float32), b.astype(np.float32))
    content = RecordDict({P.REC_ARRAYS: global_view_record(factors, state.head), P.REC_CONFIG: node_config})
    (reply,) = grid.send_and_receive([Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=NODE)])
    assert not reply.has_error(), reply.error
    arrays = from_array_record(reply.content[P.REC_ARRAYS])
    b_keys = [k for k in arrays if "lora_B" in k]
    assert b_keys
    for key in b_keys:
        b = arrays[key].astype(np.float64)
        np.testing.assert_allclose(b.T @ b, FILL_NORM**2 * np.eye(2), atol=1e-5)  # not √σ ≈ 0.03: the unit frame
    node_config[P.C_FRAME_SCALE] = "huge"
    content = RecordDict({P.REC_ARRAYS: global_view_record(factors, state.head), P.REC_CONFIG: node_config})
    (bad,) = grid.send_and_receive([Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=NODE)])
    assert bad.has_error() and P.C_FRAME_SCALE in bad.error.reason
