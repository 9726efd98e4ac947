"""Exact aggregation averages each slice of ΔW over the nodes consent lets change it.

Reproduced before the fix: under the default policy edge nodes may not adapt
the heads of layers 0-1, yet their (zero) change there was averaged in with
their full weight, so those layers moved by only the gpu/central share of the
weight: a node kept out of a slice voted for leaving it unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.clientapp import ClientApp
from sentinel.client.app import app as honest_app
from sentinel.models.components import model_layout
from sentinel.models.consent import adapt_support, adapt_supports
from sentinel.models.loading import load_base_model
from sentinel.protos.vocabulary import CLASSIFIER, ffn_id, head_id
from sentinel.server.aggregation import LoraUpdate, exact_aggregate
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo, NodeResult
from sentinel.server.strategy import aggregate_updates

from tests.federation.conftest import crashing_app

IDS = [1001, 1008, 1015]


def _run(tiny_config, out: Path, apps: dict[int, ClientApp]):  # noqa: ANN001, ANN202
    grid = LocalGrid(apps, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(IDS)})
    coordinator = Coordinator.build(tiny_config(rounds=1), out)
    return coordinator, coordinator.run(grid)


def test_an_edge_node_kept_out_of_every_head_does_not_dilute_the_heads_update(tmp_path: Path, tiny_config) -> None:
    coordinator, present = _run(tiny_config, tmp_path / "present", {n: honest_app for n in IDS})
    assert present.history[-1]["accepted"] == 3
    edge = next(i for i, n in enumerate(present.nodes) if n.role == "edge")
    apps = {n: honest_app for n in IDS}
    apps[IDS[edge]] = crashing_app()
    _, absent = _run(tiny_config, tmp_path / "absent", apps)
    assert absent.history[-1]["accepted"] == 2
    # tiny-bert has 2 layers: the default policy keeps the edge node off every head, so every
    # attention module's ΔW is the mean of the other two nodes' updates, whether or not the edge node took part.
    moved = 0
    for module, delta in absent.state.deltas.items():
        np.testing.assert_allclose(present.state.deltas[module], delta, rtol=1e-5, atol=1e-9)
        moved += bool(np.abs(delta).max() > 0)
    assert moved == len(absent.state.deltas)
    # The classifier is open to everyone: there the edge node's head does count.
    assert any(not np.allclose(present.state.head[k], absent.state.head[k]) for k in absent.state.head)


# ---------------------------------------------------------------- the rule itself


@pytest.fixture(scope="module")
def layout():  # noqa: ANN201
    return model_layout(load_base_model("tiny-bert", num_labels=2).model)


def test_support_marks_a_forbidden_heads_rows_of_q_and_columns_of_o(layout) -> None:  # noqa: ANN001
    d = layout.head_dim
    everything = frozenset({head_id(0, h) for h in range(layout.num_heads)})
    permitted = everything - {head_id(0, 1)}
    width = layout.num_heads * d
    q = adapt_support(layout, "bert.encoder.layer.0.attention.self.query", (width, width), permitted)
    o = adapt_support(layout, "bert.encoder.layer.0.attention.output.dense", (width, width), permitted)
    assert q.shape == (width, 1) and o.shape == (1, width)
    assert not q[d : 2 * d].any() and q[:d].all() and q[2 * d :].all()
    assert not o[:, d : 2 * d].any() and o[:, :d].all()
    assert adapt_support(layout, "bert.encoder.layer.0.attention.self.query", (width, width), everything) is None
    assert adapt_support(layout, "bert.encoder.layer.0.attention.self.query", (width, width), None) is None
    assert not adapt_support(layout, "bert.encoder.layer.1.attention.self.query", (width, width), everything).any()
    assert adapt_support(layout, "bert.encoder.layer.0.intermediate.dense", (64, width), frozenset({ffn_id(0)})) is None
    assert not adapt_support(layout, "bert.encoder.layer.0.intermediate.dense", (64, width), everything).any()


def test_adapt_supports_lists_only_the_restricted_modules_of_an_adapter(layout) -> None:  # noqa: ANN001
    width = layout.num_heads * layout.head_dim
    arrays = {}
    for layer in (0, 1):
        for name in ("query", "value"):
            stem = f"base_model.model.bert.encoder.layer.{layer}.attention.self.{name}"
            arrays[f"{stem}.lora_A.weight"] = np.zeros((2, width), np.float32)
            arrays[f"{stem}.lora_B.weight"] = np.zeros((width, 2), np.float32)
    layer0 = frozenset({head_id(0, h) for h in range(layout.num_heads)} | {CLASSIFIER})
    supports = adapt_supports(layout, arrays, layer0)
    assert sorted(supports) == ["bert.encoder.layer.1.attention.self.query", "bert.encoder.layer.1.attention.self.value"]


def _update(rng: np.random.Generator, weight: float) -> LoraUpdate:
    return LoraUpdate(a={"m": rng.standard_normal((2, 6))}, b={"m": rng.standard_normal((4, 2))}, scaling=2.0, weight=weight)


def test_each_entry_is_the_mean_over_the_updates_that_may_change_it() -> None:
    rng = np.random.default_rng(0)
    one, two = _update(rng, 3.0), _update(rng, 1.0)
    rows = np.array([True, True, False, False])[:, None]  # `two` may change rows 0-1 only
    masked_two = LoraUpdate(a=two.a, b={"m": np.where(rows, two.b["m"], 0.0)}, scaling=2.0, weight=1.0)
    got = exact_aggregate([one, masked_two], [{}, {"m": rows}])["m"]
    np.testing.assert_allclose(got[:2], 0.75 * one.delta("m")[:2] + 0.25 * masked_two.delta("m")[:2], rtol=1e-12)
    np.testing.assert_allclose(got[2:], one.delta("m")[2:], rtol=1e-12)  # not 0.75 × it
    # Nobody may change a slice: it stays zero. No supports: today's weighted mean, bit for bit.
    nobody = exact_aggregate([masked_two], [{"m": rows}])["m"]
    assert not nobody[2:].any()
    np.testing.assert_array_equal(exact_aggregate([one, two], [{}, {}])["m"], exact_aggregate([one, two])["m"])
    with pytest.raises(ValueError, match="supports"):
        exact_aggregate([one, two], [{}])


def test_the_head_is_averaged_over_the_nodes_that_may_adapt_it() -> None:
    rng = np.random.default_rng(1)
    results = []
    for i, (head_value, permitted) in enumerate([(1.0, True), (5.0, False), (3.0, True)]):
        u = _update(rng, 1.0)
        arrays = {
            "base_model.model.m.lora_A.weight": u.a["m"].astype(np.float32),
            "base_model.model.m.lora_B.weight": u.b["m"].astype(np.float32),
            "base_model.model.classifier.modules_to_save.default.weight": np.full((2, 2), head_value, np.float32),
        }
        results.append(NodeResult(node=NodeInfo(10 + i, i, "gpu"), accepted=True, num_examples=10, arrays=arrays,
                                  head_permitted=permitted))
    deltas = {"m": np.zeros((4, 6), np.float32)}
    head = {"classifier.weight": np.zeros((2, 2), np.float32)}
    _, new_head = aggregate_updates(results, "exact", deltas, head)
    (value,) = new_head.values()
    np.testing.assert_allclose(value, 2.0)  # (1 + 3) / 2: the node that may not adapt the head is left out
    _, kept = aggregate_updates(results[1:2], "exact", deltas, head)
    np.testing.assert_array_equal(next(iter(kept.values())), 0.0)  # nobody may: the head stays as it was
