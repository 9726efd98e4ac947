"""The continued adapter: a node resumes the global adapter, its change is sent exactly, consent holds on the change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sentinel.client.continued import continued_start, update_factors
from sentinel.client.data import load_examples
from sentinel.client.data.batching import iter_batches
from sentinel.client.training import GlobalView, _start_continued, materialise_global, train_local
from sentinel.models.consent import touched_heads
from sentinel.models.global_model import evaluate_classifier, materialise
from sentinel.models.loading import load_base_model
from sentinel.models.lora import attach_lora, split_adapter_arrays
from sentinel.protos.messages import LORA_ALPHA_PER_RANK
from sentinel.server.central import initial_state

S = LORA_ALPHA_PER_RANK


def test_the_start_reproduces_the_view_and_the_factors_of_the_change_are_exact() -> None:
    rng = np.random.default_rng(0)
    b, a = rng.normal(size=(12, 6)), rng.normal(size=(6, 10))  # a rank-6 view
    start = continued_start({"m": (a, b)}, rank=4, scaling=S)
    assert start.a0["m"].shape == (4, 10) and start.b0["m"].shape == (12, 4)
    np.testing.assert_allclose(S * start.b0["m"] @ start.a0["m"] + start.residual["m"], b @ a, atol=1e-5)
    low = continued_start({"m": (a[:2], b[:, :2])}, rank=4, scaling=S)  # rank 2 < r: two directions only
    assert low.a0["m"].shape == (2, 10) and np.abs(low.residual["m"]).max() < 1e-5
    none = continued_start({"m": (np.zeros((0, 10)), np.zeros((12, 0)))}, rank=4, scaling=S)  # round 1: fresh
    assert none.a0["m"].shape == (0, 10) and not none.residual["m"].any()
    a_init = np.concatenate([start.a0["m"], rng.normal(size=(0, 10))]).astype(np.float32)
    b_init = start.b0["m"]
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


@pytest.fixture(scope="module")
def tiny() -> dict:
    base = load_base_model("tiny-bert", num_labels=2, seed=0)
    examples = load_examples("builtin:reviews?n=64", seed=0)
    start = initial_state(base)
    rng = np.random.default_rng(1)
    factors = {m: (rng.normal(scale=0.05, size=(6, d.shape[1])), rng.normal(scale=0.05, size=(d.shape[0], 6))) for m, d in start.deltas.items()}
    view = GlobalView(factors={m: (a.astype(np.float32), b.astype(np.float32)) for m, (a, b) in factors.items()}, head=start.head)
    return {"base": base, "train": examples[:48], "val": examples[48:], "view": view}


def test_the_node_starts_from_exactly_the_model_it_was_sent(tiny: dict) -> None:
    base, view = tiny["base"], tiny["view"]
    start = continued_start(view.factors, rank=4, scaling=S)  # the view has rank 6 > 4: a residual is merged
    peft_model = attach_lora(materialise(base, start.residual, view.head), rank=4, alpha=S * 4, seed=0)
    _start_continued(peft_model, start)
    batch = next(iter(iter_batches(base.tokenizer, tiny["val"], 16, 24)))
    with torch.no_grad():
        got = peft_model(**batch).logits
        want = materialise_global(base, view)(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_the_update_is_the_change_the_node_made(tiny: dict) -> None:
    base, view = tiny["base"], tiny["view"]
    update = train_local(base, view, tiny["train"], tiny["val"], rank=4, steps=6, batch_size=8, learning_rate=5e-3, max_length=24, seed=3, continued=True)
    assert update.rank == 8
    pairs, head = split_adapter_arrays(update.arrays)
    assert all(a.shape[0] == 8 and b.shape[1] == 8 for a, b in pairs.values())
    view_deltas = {m: b.astype(np.float64) @ a for m, (a, b) in view.factors.items()}
    new = {m: (view_deltas[m] + S * b.astype(np.float64) @ a).astype(np.float32) for m, (a, b) in pairs.items()}
    trained = materialise(base, new, head)
    accuracy, loss = evaluate_classifier(trained, iter_batches(base.tokenizer, tiny["val"], 16, 24))
    assert loss == pytest.approx(update.val_loss, abs=1e-4) and accuracy == pytest.approx(update.val_accuracy)
    assert max(float(np.abs(S * b @ a).max()) for a, b in pairs.values()) > 1e-4  # it did learn something


def test_forbidden_heads_get_no_change_although_the_adapter_started_nonzero(tiny: dict) -> None:
    base, view = tiny["base"], tiny["view"]
    from sentinel.models.components import list_components

    everything = set(list_components(base.model))
    permitted = everything - {"layer.0.head.1", "layer.1.head.0"}
    update = train_local(
        base, view, tiny["train"], tiny["val"], rank=4, steps=6, batch_size=8, learning_rate=5e-3, max_length=24, seed=3,
        continued=True, permitted=permitted,
    )
    touched = touched_heads(base.model, update.arrays, atol=1e-6)
    assert "layer.0.head.1" not in touched and "layer.1.head.0" not in touched
    assert "layer.0.head.0" in touched  # the permitted ones did change


def test_a_federation_trains_with_continued_adapters_and_accepts_every_update(tmp_path: Path, tiny_config, local_grid) -> None:
    from sentinel.server.coordinator import Coordinator

    config = tiny_config(training_design="continued", rounds=2)
    coordinator = Coordinator.build(config, tmp_path / "run")
    result = coordinator.run(local_grid(config.nodes))
    rows = [r for r in result.history if r["round"] > 0]
    assert all(r["accepted"] == config.nodes for r in rows), [[(n["role"], n["reason"]) for n in r["per_node"]] for r in rows]
    assert {n["rank"] for r in rows for n in r["per_node"]} == {2 * coordinator.strategy().rank_of(n) for n in result.nodes}
    assert np.isfinite(rows[-1]["accuracy"])
