"""A node trains regrown heads at the boosted learning rate the coordinator sends (``boost-heads``, ``boost-lr-factor``).

One optimiser step from a fresh adapter (B = 0) isolates the boost: every run
sees the same gradient, so a boosted head's LoRA B rows move exactly ``factor``
times as far as without the boost, and every other entry moves the same.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Message, RecordDict
from sentinel.client.app import app as client_app
from sentinel.client.data import Example
from sentinel.client.training import GlobalView, train_local
from sentinel.models.components import model_layout
from sentinel.models.exceptions import ComponentError
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.regrowth import HeadBoost
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, global_view_record
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo
from sentinel.server.strategy import SentinelStrategy

TEXTS = ["good and great", "bad and awful", "lovely fine day", "terrible broken thing", "nice work", "poor service"]
EXAMPLES = [Example(text=t, label=i % 2, domain="d") for i, t in enumerate(TEXTS)]
FACTOR = 4.0


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    return load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)


def _one_step(base: LoadedModel, boost: HeadBoost | None) -> dict[str, np.ndarray]:
    update = train_local(
        base, GlobalView(factors={}, head={}), EXAMPLES, EXAMPLES[:2],
        rank=2, steps=1, batch_size=4, learning_rate=1e-2, max_length=12, seed=3, boost=boost,
    )
    return update.arrays


def _rows(arrays: dict[str, np.ndarray], layer: int, projection: str) -> np.ndarray:
    (key,) = [k for k in arrays if f"layer.{layer}.attention.self.{projection}.lora_B" in k]
    return arrays[key]


def test_boosted_heads_lora_rows_move_factor_times_as_far(base: LoadedModel) -> None:
    plain = _one_step(base, None)
    boosted = _one_step(base, HeadBoost(("layer.0.head.1", "layer.1.head.3"), FACTOR))
    d = model_layout(base.model).head_dim
    for layer, head in ((0, 1), (1, 3)):
        for projection in ("query", "key", "value"):
            own = slice(head * d, (head + 1) * d)
            plain_rows, boosted_rows = _rows(plain, layer, projection), _rows(boosted, layer, projection)
            assert np.abs(plain_rows[own]).max() > 0  # the head did train
            np.testing.assert_allclose(boosted_rows[own], FACTOR * plain_rows[own], rtol=1e-5, atol=1e-9)
            others = np.ones(plain_rows.shape[0], dtype=bool)
            others[own] = False
            np.testing.assert_array_equal(boosted_rows[others], plain_rows[others])
    untouched = [k for k in plain if not any(f"layer.{la}.attention.self" in k for la in (0, 1))]
    for key in untouched:  # heads and modules outside the boost train at the base rate
        np.testing.assert_array_equal(boosted[key], plain[key])


def test_a_factor_of_one_changes_nothing(base: LoadedModel) -> None:
    plain = _one_step(base, None)
    same = _one_step(base, HeadBoost(("layer.0.head.0",), 1.0))
    for key in plain:
        np.testing.assert_array_equal(same[key], plain[key])


@pytest.mark.parametrize(
    ("heads", "match"),
    [(("layer.0.head.4",), "head 4 out of range"), (("layer.2.head.0",), "layer 2 out of range"), (("layer.0.ffn",), "not an attention head")],
)
def test_boost_ids_that_are_not_heads_of_the_model_are_refused(base: LoadedModel, heads: tuple[str, ...], match: str) -> None:
    with pytest.raises(ComponentError, match=match):
        _one_step(base, HeadBoost(heads, FACTOR))


# ---------------------------------------------------------------- through the ClientApp


NODE = 901


@pytest.fixture(scope="module")
def node() -> tuple[LocalGrid, SentinelStrategy, NodeInfo]:
    config = FederationConfig.model_validate(
        dict(
            model="tiny-bert", dataset="builtin:reviews?n=120", partition="iid", nodes=2, rounds=1, max_length=16,
            profiles={"gpu": RoleProfile(lora_rank=2, local_steps=1, batch_size=4, learning_rate=1e-2)},
        )
    )
    grid = LocalGrid({NODE: client_app}, {NODE: {"partition-id": 0, "num-partitions": 2, "role": "gpu", "device": "cpu"}})
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    return grid, strategy, NodeInfo(NODE, 0, "gpu", "")


def _train(node: tuple[LocalGrid, SentinelStrategy, NodeInfo], **extra: object) -> Message:
    grid, strategy, info = node
    config = strategy.node_config(info, 1)
    for key, value in extra.items():
        config[key] = value
    content = RecordDict({P.REC_ARRAYS: global_view_record({}, {}), P.REC_CONFIG: config})
    (reply,) = grid.send_and_receive([Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=NODE)])
    return reply


def test_a_node_told_to_boost_trains_those_heads_faster(node: tuple[LocalGrid, SentinelStrategy, NodeInfo], base: LoadedModel) -> None:
    plain = _train(node)
    boosted = _train(node, **{P.C_BOOST_HEADS: ["layer.1.head.2"], P.C_BOOST_FACTOR: FACTOR})
    assert not plain.has_error() and not boosted.has_error(), (plain.error if plain.has_error() else boosted.error)
    a, b = from_array_record(plain.content[P.REC_ARRAYS]), from_array_record(boosted.content[P.REC_ARRAYS])
    d = model_layout(base.model).head_dim
    own = slice(2 * d, 3 * d)
    q_plain, q_boosted = _rows(a, 1, "query"), _rows(b, 1, "query")
    assert np.abs(q_plain[own]).max() > 0
    np.testing.assert_allclose(q_boosted[own], FACTOR * q_plain[own], rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(q_boosted[: 2 * d], q_plain[: 2 * d])


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({P.C_BOOST_HEADS: ["layer.0.head.1"], P.C_BOOST_FACTOR: 1000.0}, "boost-lr-factor"),
        ({P.C_BOOST_HEADS: ["layer.0.head.1"], P.C_BOOST_FACTOR: 0.5}, "boost-lr-factor"),
        ({P.C_BOOST_HEADS: ["layer.0.head.1"], P.C_BOOST_FACTOR: float("nan")}, "boost-lr-factor"),
        ({P.C_BOOST_HEADS: ["layer.0.head.1"]}, "come together"),
        ({P.C_BOOST_HEADS: ["layer.0.ffn"], P.C_BOOST_FACTOR: 2.0}, "not an attention head"),
        ({P.C_BOOST_HEADS: ["head 3"], P.C_BOOST_FACTOR: 2.0}, "not a component id"),
        ({P.C_BOOST_HEADS: ["layer.0.head.7"], P.C_BOOST_FACTOR: 2.0}, "head 7 out of range"),
    ],
)
def test_bad_boost_values_get_an_error_reply_naming_them(
    node: tuple[LocalGrid, SentinelStrategy, NodeInfo], extra: dict[str, object], match: str
) -> None:
    reply = _train(node, **extra)
    assert reply.has_error()
    assert match in reply.error.reason
