"""The frame gain (``frame-gain``): the coordinator sends it, a node scales its frozen factor by it, bad values are refused.

Under a shared-frame design the trained factor's step in ΔW is set by the
frozen factor's scale (``client.frames``). A gain of g makes the frozen A
exactly g times the gain-1 frame; with Adam the trained B moves almost the same
whatever its gradient's scale, so the round's ΔW (s · B · A) is about g times as large (at least g times).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from sentinel.client.app import app as client_app
from sentinel.client.data import Example
from sentinel.client.training import GlobalView, train_local
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, global_view_record
from sentinel.server.central import initial_state
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.strategy import SentinelStrategy
from sentinel.server.views import TrainingDesign, config_design

TEXTS = ["good and great", "bad and awful", "lovely fine day", "terrible broken thing", "nice work", "poor service"]
EXAMPLES = [Example(text=t, label=i % 2, domain="d") for i, t in enumerate(TEXTS)]
GAIN = 4.0
NODE = 902


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    return load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)


def _b_round(base: LoadedModel, gain: float) -> dict[str, np.ndarray]:
    update = train_local(
        base, GlobalView(factors={}, head={}), EXAMPLES, EXAMPLES[:2], rank=2, steps=1, batch_size=4,
        learning_rate=1e-2, max_length=12, seed=3, frame="b", frame_seed=7, server_round=1, frame_gain=gain,
    )
    return update.arrays


def _pairs(arrays: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {k: (arrays[k], arrays[k.replace("lora_A", "lora_B")]) for k in arrays if "lora_A" in k}


def test_the_frozen_factor_is_gain_times_the_frame_and_the_step_in_delta_w_scales_with_it(base: LoadedModel) -> None:
    plain, gained = _pairs(_b_round(base, 1.0)), _pairs(_b_round(base, GAIN))
    assert plain.keys() == gained.keys() and plain
    ratios = []
    for key, (a1, b1) in plain.items():
        a4, b4 = gained[key]
        np.testing.assert_allclose(a4, GAIN * a1, rtol=1e-6)  # the frozen A: exactly g times the frame
        d1, d4 = b1.astype(np.float64) @ a1, b4.astype(np.float64) @ a4
        if np.linalg.norm(d1) > 0:
            ratios.append(np.linalg.norm(d4) / np.linalg.norm(d1))
    # Adam's step on B barely depends on its gradient's scale (its eps damps gain 1's smaller gradients a little more).
    assert ratios and all(0.99 * GAIN <= r <= 1.5 * GAIN for r in ratios), ratios


def test_a_gain_of_one_is_todays_frame(base: LoadedModel) -> None:
    default = train_local(
        base, GlobalView(factors={}, head={}), EXAMPLES, EXAMPLES[:2], rank=2, steps=1, batch_size=4,
        learning_rate=1e-2, max_length=12, seed=3, frame="b", frame_seed=7, server_round=1,
    ).arrays
    for key, value in _b_round(base, 1.0).items():
        np.testing.assert_array_equal(value, default[key])


def test_the_config_carries_the_gain_to_the_design_and_bounds_it() -> None:
    assert config_design(FederationConfig(training_design="frame", frame_gain=GAIN)).gain == GAIN
    assert config_design(FederationConfig()).gain == 4.0  # the default (server.config.FederationConfig.frame_gain)
    for bad in (0.0, -1.0, P.MAX_FRAME_GAIN * 2):
        with pytest.raises(ValueError, match="frame_gain"):
            FederationConfig(frame_gain=bad)
        with pytest.raises(ValueError, match="gain"):
            TrainingDesign(gain=bad)


# ---------------------------------------------------------------- through the coordinator and the ClientApp


@pytest.fixture(scope="module")
def node() -> tuple[LocalGrid, SentinelStrategy, NodeInfo]:
    config = FederationConfig.model_validate(
        dict(
            model="tiny-bert", dataset="builtin:reviews?n=120", partition="iid", nodes=2, rounds=1, max_length=16,
            training_design="frame", frame_gain=GAIN,
            profiles={"gpu": RoleProfile(lora_rank=2, local_steps=1, batch_size=4, learning_rate=1e-2)},
        )
    )
    grid = LocalGrid({NODE: client_app}, {NODE: {"partition-id": 0, "num-partitions": 2, "role": "gpu", "device": "cpu"}})
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    return grid, strategy, NodeInfo(NODE, 0, "gpu", "")


def test_the_coordinator_sends_the_configured_gain_with_the_factor(node: tuple[LocalGrid, SentinelStrategy, NodeInfo], base: LoadedModel) -> None:
    _, strategy, info = node
    (msg,) = strategy.configure_train(1, initial_state(base), [info]).messages
    config = msg.content[P.REC_CONFIG]
    assert config[P.C_TRAIN_FACTOR] == "b" and config[P.C_FRAME_GAIN] == GAIN


def _train(node: tuple[LocalGrid, SentinelStrategy, NodeInfo], gain: object) -> Message:
    grid, strategy, info = node
    config = strategy.node_config(info, 1)
    config[P.C_TRAIN_FACTOR] = "b"
    config[P.C_FRAME_GAIN] = gain
    content = RecordDict({P.REC_ARRAYS: global_view_record({}, {}), P.REC_CONFIG: config})
    (reply,) = grid.send_and_receive([Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=NODE)])
    return reply


def test_a_node_scales_its_frozen_factor_by_the_gain_it_is_sent(node: tuple[LocalGrid, SentinelStrategy, NodeInfo]) -> None:
    plain, gained = _train(node, 1.0), _train(node, GAIN)
    assert not plain.has_error() and not gained.has_error(), (plain.error if plain.has_error() else gained.error)
    a, b = from_array_record(plain.content[P.REC_ARRAYS]), from_array_record(gained.content[P.REC_ARRAYS])
    keys = [k for k in a if "lora_A" in k]
    assert keys
    for key in keys:
        np.testing.assert_allclose(b[key], GAIN * a[key], rtol=1e-6)


@pytest.mark.parametrize("gain", [0.0, -2.0, P.MAX_FRAME_GAIN + 1, float("nan"), float("inf")])
def test_a_bad_gain_gets_an_error_reply_naming_it(node: tuple[LocalGrid, SentinelStrategy, NodeInfo], gain: float) -> None:
    reply = _train(node, gain)
    assert reply.has_error()
    assert P.C_FRAME_GAIN in reply.error.reason


def test_the_inverse_sqrt_schedule_halves_the_gain_by_round_four_and_the_coordinator_sends_it(base: LoadedModel) -> None:
    design = config_design(FederationConfig(training_design="frame-unit", frame_gain=GAIN, frame_gain_schedule="inverse-sqrt"))
    assert [design.gain_of_round(t) for t in (1, 4, 9)] == [GAIN, GAIN / 2, GAIN / 3]
    assert config_design(FederationConfig(frame_gain=GAIN, frame_gain_schedule="constant")).gain_of_round(9) == GAIN
    assert config_design(FederationConfig()).gain_of_round(4) == 2.0  # the default: 4 / √t
    with pytest.raises(ValueError, match="server_round"):
        design.gain_of_round(0)
    with pytest.raises(ValueError, match="frame_gain_schedule"):
        FederationConfig(frame_gain_schedule="linear")
    with pytest.raises(ValueError, match="gain_schedule"):
        TrainingDesign(gain_schedule="linear")  # type: ignore[arg-type]
    config = FederationConfig.model_validate(
        dict(
            model="tiny-bert", dataset="builtin:reviews?n=120", partition="iid", nodes=2, rounds=4, max_length=16,
            training_design="frame-unit", frame_gain=GAIN, frame_gain_schedule="inverse-sqrt",
            profiles={"gpu": RoleProfile(lora_rank=2, local_steps=1, batch_size=4, learning_rate=1e-2)},
        )
    )
    LocalGrid({})  # Flower's task identity, which building Messages outside a run needs
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    (msg,) = strategy.configure_train(4, initial_state(base), [NodeInfo(NODE, 0, "gpu", "")]).messages
    assert msg.content[P.REC_CONFIG][P.C_FRAME_GAIN] == GAIN / 2
