"""The continued adapter: a node resumes the global adapter, sends it at its own rank, the coordinator rebuilds the exact change, consent holds on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentinel.client.data import load_examples
from sentinel.client.data.batching import iter_batches
from sentinel.client.training import GlobalView, _start_continued, materialise_global, train_local
from sentinel.models.consent import touched_heads
from sentinel.models.continued import (
    change_arrays,
    change_factors,
    continued_view_factors,
    split_view_at_rank,
    start_factors,
    update_factors,
)
from sentinel.models.global_model import evaluate_classifier, materialise, materialise_factors
from sentinel.models.loading import load_base_model
from sentinel.models.lora import attach_lora, split_adapter_arrays
from sentinel.protos.messages import LORA_ALPHA_PER_RANK
from sentinel.server.aggregation import svd_factorise
from sentinel.server.central import initial_state
from sentinel.server.state import GlobalState
from sentinel.server.views import design_named, round_views

S = LORA_ALPHA_PER_RANK


def test_the_view_is_split_so_the_start_is_read_off_it_exactly() -> None:
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(12, 6)) @ rng.normal(size=(6, 10))  # a rank-6 ΔW
    top = svd_factorise(delta, 4)
    a_sent, b_sent = continued_view_factors(top.a, top.b, S)
    np.testing.assert_allclose(b_sent.astype(np.float64) @ a_sent, top.b.astype(np.float64) @ top.a, rtol=1e-5, atol=1e-5)
    a0, b0, live = start_factors(a_sent, b_sent, S, rank=4)
    assert live.all() and a0.dtype == b0.dtype == np.float32
    np.testing.assert_array_equal(S * b0, b_sent)  # the division by s = 2 is exact: both sides hold the same bits
    np.testing.assert_allclose(np.linalg.norm(a0, axis=1), np.linalg.norm(b0, axis=0), rtol=1e-5)  # balanced
    low = svd_factorise(delta[:, :2] @ rng.normal(size=(2, 10)), 4)  # rank 2 < r: two directions sent, two fresh
    assert start_factors(*continued_view_factors(low.a, low.b, S), S, rank=4)[2].tolist() == [True, True, False, False]
    none = start_factors(*continued_view_factors(np.zeros((4, 10)), np.zeros((12, 4)), S), S, rank=4)  # round 1
    assert not none[2].any() and not none[1].any()
    with pytest.raises(ValueError, match="more than the adapter's rank"):
        start_factors(a_sent, b_sent, S, rank=3)


def test_the_change_factors_are_exact_and_a_frozen_factor_changes_nothing() -> None:
    rng = np.random.default_rng(1)
    a_init, b_init = rng.normal(size=(4, 10)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    a1, b1 = rng.normal(size=(4, 10)), rng.normal(size=(12, 4))
    a_new, b_new = update_factors(a1, b1, a_init, b_init)
    assert a_new.shape == (8, 10) and b_new.shape == (12, 8)
    np.testing.assert_allclose(b_new @ a_new, b1 @ a1 - b_init.astype(np.float64) @ a_init, atol=1e-4)
    b_row_frozen = b1.copy()
    b_row_frozen[0] = b_init[0]
    a_new, b_new = update_factors(a_init, b_row_frozen, a_init, b_init)
    assert not (b_new @ a_new)[0].any()
    with pytest.raises(ValueError, match="changed shape"):
        update_factors(a1[:3], b1, a_init, b_init)
    # The coordinator's side gives the same factors from what it sent (B_sent = s·B₀).
    np.testing.assert_array_equal(np.hstack(change_factors(a1, b1, a_init, S * b_init, S)[1:]), np.hstack(update_factors(a1, b1, a_init, b_init)[1:]))


@pytest.fixture(scope="module")
def tiny() -> dict:
    base = load_base_model("tiny-bert", num_labels=2, seed=0)
    examples = load_examples("builtin:reviews?n=64", seed=0)
    start = initial_state(base)
    rng = np.random.default_rng(1)
    deltas = {m: (rng.normal(scale=0.05, size=(d.shape[0], 6)) @ rng.normal(scale=0.05, size=(6, d.shape[1]))).astype(np.float32) for m, d in start.deltas.items()}
    state = GlobalState(deltas=deltas, head=start.head, round=1)  # a rank-6 ΔW; nodes of rank 4 get its top 4
    views = round_views(state, design_named("continued"), [4])
    view = GlobalView(factors=views.factors[4], head=start.head)
    return {"base": base, "train": examples[:48], "val": examples[48:], "view": view}


def test_the_node_starts_from_exactly_the_model_it_was_sent(tiny: dict) -> None:
    base, view = tiny["base"], tiny["view"]
    peft_model = attach_lora(materialise(base, {}, view.head), rank=4, alpha=S * 4, seed=0)
    _start_continued(peft_model, view)
    batch = next(iter(iter_batches(base.tokenizer, tiny["val"], 16, 24)))
    with torch.no_grad():
        got = peft_model(**batch).logits
        want = materialise_global(base, view)(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_node_sends_its_own_rank_and_the_rebuilt_change_is_what_it_made(tiny: dict) -> None:
    base, view = tiny["base"], tiny["view"]
    update = train_local(base, view, tiny["train"], tiny["val"], rank=4, steps=6, batch_size=8, learning_rate=5e-3, max_length=24, seed=3, continued=True)
    assert update.rank == 4
    sent_pairs, _ = split_adapter_arrays(update.arrays)
    assert all(a.shape[0] == 4 and b.shape[1] == 4 for a, b in sent_pairs.values())  # the uplink is at rank r
    pairs, head = split_adapter_arrays(change_arrays(update.arrays, view.factors, S))
    assert all(a.shape[0] == 8 and b.shape[1] == 8 for a, b in pairs.values())
    view_deltas = {m: b.astype(np.float64) @ a for m, (a, b) in view.factors.items()}
    new = {m: (view_deltas[m] + S * b.astype(np.float64) @ a).astype(np.float32) for m, (a, b) in pairs.items()}
    trained = materialise(base, new, head)
    accuracy, loss = evaluate_classifier(trained, iter_batches(base.tokenizer, tiny["val"], 16, 24))
    assert loss == pytest.approx(update.val_loss, abs=1e-4) and accuracy == pytest.approx(update.val_accuracy)
    assert max(float(np.abs(S * b @ a).max()) for a, b in pairs.values()) > 1e-4  # it did learn something
    with pytest.raises(KeyError, match="was not in the view"):
        change_arrays(update.arrays, dict(list(view.factors.items())[1:]), S)


def test_forbidden_heads_get_exactly_no_change_although_the_adapter_started_nonzero(tiny: dict) -> None:
    base, view = tiny["base"], tiny["view"]
    from sentinel.models.components import list_components

    everything = set(list_components(base.model))
    permitted = everything - {"layer.0.head.1", "layer.1.head.0"}
    update = train_local(
        base, view, tiny["train"], tiny["val"], rank=4, steps=6, batch_size=8, learning_rate=5e-3, max_length=24, seed=3,
        continued=True, permitted=permitted,
    )
    touched = touched_heads(base.model, change_arrays(update.arrays, view.factors, S), atol=0.0)  # as the coordinator reads it
    assert "layer.0.head.1" not in touched and "layer.1.head.0" not in touched
    assert "layer.0.head.0" in touched  # the permitted ones did change


def test_a_federation_trains_with_continued_adapters_and_accepts_every_update(tmp_path: Path, tiny_config, local_grid) -> None:
    from sentinel.server.coordinator import Coordinator

    config = tiny_config(training_design="continued", rounds=2)
    coordinator = Coordinator.build(config, tmp_path / "run")
    result = coordinator.run(local_grid(config.nodes))
    rows = [r for r in result.history if r["round"] > 0]
    assert all(r["accepted"] == config.nodes for r in rows), [[(n["role"], n["reason"]) for n in r["per_node"]] for r in rows]
    assert {n["rank"] for r in rows for n in r["per_node"]} == {coordinator.strategy().rank_of(n) for n in result.nodes}
    legacy = Coordinator.build(tiny_config(rounds=1), tmp_path / "legacy").run(local_grid(config.nodes)).history[-1]
    assert rows[0]["bytes_up"] == legacy["bytes_up"]  # the uplink is each node's adapter at its own rank
    assert np.isfinite(rows[-1]["accuracy"])

def test_an_exact_view_splits_at_the_node_rank_and_keeps_every_direction() -> None:
    rng = np.random.default_rng(2)
    factors = {"m": (rng.normal(size=(6, 10)).astype(np.float32), rng.normal(size=(12, 6)).astype(np.float32))}
    start, rest = split_view_at_rank(factors, 4)
    assert start["m"][0].shape == (4, 10) and rest["m"][0].shape == (2, 10)
    a, b = factors["m"]
    joined = start["m"][1].astype(np.float64) @ start["m"][0] + rest["m"][1].astype(np.float64) @ rest["m"][0]
    np.testing.assert_allclose(joined, b.astype(np.float64) @ a, atol=1e-10)
    assert split_view_at_rank(factors, 6)[1] == {}  # a view no larger than the rank: nothing past it
    with pytest.raises(ValueError, match="rank"):
        split_view_at_rank(factors, 0)


def test_under_the_exact_continued_view_a_node_trains_on_the_exact_global_model(tiny: dict) -> None:
    """`continued-exact`: the node's start is the view's top-r part and the rest is merged, so it computes ΔW itself."""
    base = tiny["base"]
    start = initial_state(base)
    rng = np.random.default_rng(1)
    deltas = {m: (rng.normal(scale=0.05, size=(d.shape[0], 6)) @ rng.normal(scale=0.05, size=(6, d.shape[1]))).astype(np.float32) for m, d in start.deltas.items()}
    state = GlobalState(deltas=deltas, head=start.head, round=1)
    views = round_views(state, design_named("continued-exact"), [4])
    view = GlobalView(factors=views.factors[None], head=start.head)
    assert views.errors[None] < 1e-5 and max(a.shape[0] for a, _ in view.factors.values()) == 6  # all of ΔW, past rank 4
    batch = next(iter(iter_batches(base.tokenizer, tiny["val"], 16, 24)))
    update = train_local(base, view, tiny["train"], tiny["val"], rank=4, steps=6, batch_size=8, learning_rate=5e-3, max_length=24, seed=3, continued=True)
    node_start, _ = split_view_at_rank(view.factors, 4)
    pairs, head = split_adapter_arrays(change_arrays(update.arrays, node_start, S))  # the coordinator's rebuild
    new = {m: (deltas[m].astype(np.float64) + S * b.astype(np.float64) @ a).astype(np.float32) for m, (a, b) in pairs.items()}
    accuracy, loss = evaluate_classifier(materialise(base, new, head), iter_batches(base.tokenizer, tiny["val"], 16, 24))
    assert loss == pytest.approx(update.val_loss, abs=1e-4) and accuracy == pytest.approx(update.val_accuracy)
    with torch.no_grad():  # and before training, the node's model is the coordinator's global model
        peft_model = attach_lora(materialise_factors(base, split_view_at_rank(view.factors, 4)[1], view.head), rank=4, alpha=S * 4, seed=0)
        _start_continued(peft_model, GlobalView(factors=node_start, head=view.head))
        torch.testing.assert_close(peft_model(**batch).logits, materialise(base, deltas, start.head)(**batch).logits, atol=1e-5, rtol=0)
