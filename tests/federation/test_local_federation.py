"""A whole federation over an in-process grid: real ClientApp, strategy, round loop, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from peft import PeftModel
from sentinel.models.loading import load_base_model
from sentinel.server.checkpoints import load_state
from sentinel.server.coordinator import Coordinator
from sentinel.server.report import write_report


def _run(config, out_dir: Path, resume: bool = False):
    from sentinel.client.app import app as client_app
    from sentinel.server.local_grid import LocalGrid

    coordinator = Coordinator.build(config, out_dir)
    ids = [1001 + 7 * i for i in range(config.nodes)]
    grid = LocalGrid({n: client_app for n in ids}, {n: {"partition-id": i, "num-partitions": config.nodes} for i, n in enumerate(ids)})
    result = coordinator.run(grid, resume=resume)
    return coordinator, result


def test_federation_trains_every_role_at_its_rank_and_writes_a_report(out_dir: Path, tiny_config) -> None:
    config = tiny_config()
    coordinator, result = _run(config, out_dir)
    assert [n.role for n in result.nodes] == ["edge", "central", "gpu"]
    rounds = [r for r in result.history if r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2]
    for row in rounds:
        assert row["nodes"] == 3 and row["accepted"] == 3
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
        assert set(row["svd_residual_by_rank"]) == {"2", "8"}
    # Round 1 starts from a zero global update: nothing to truncate. Round 2 has a real ΔW.
    assert rounds[0]["svd_residual"] == 0.0
    assert 0.0 < rounds[1]["svd_residual_by_rank"]["2"] < 1.0
    assert rounds[1]["svd_residual_by_rank"]["2"] >= rounds[1]["svd_residual_by_rank"]["8"]
    # The global state moved.
    assert any(np.abs(d).max() > 0 for d in result.state.deltas.values())

    report = write_report(out_dir, config, result)
    on_disk = json.loads((out_dir / "report.json").read_text())
    assert on_disk["best_round"] == report["best_round"]
    assert {"config", "rounds", "best_round", "final"} <= set(on_disk)
    for row in on_disk["rounds"]:
        assert {"round", "accuracy", "loss", "nodes", "bytes_up", "bytes_down", "duration_s", "svd_residual"} <= set(row)
    assert (out_dir / "accuracy.png").stat().st_size > 1000
    assert (out_dir / "loss.png").stat().st_size > 1000


def test_edge_nodes_upload_less_than_gpu_nodes(out_dir: Path, tiny_config) -> None:
    _, result = _run(tiny_config(rounds=1), out_dir)
    per_node = {n["role"]: n for n in result.history[-1]["per_node"]}
    assert per_node["edge"]["rank"] == 2 and per_node["gpu"]["rank"] == 8
    # Same classifier head, 4× smaller LoRA factors.
    assert per_node["edge"]["bytes_up"] < 0.5 * per_node["gpu"]["bytes_up"]


def test_best_adapter_loads_with_peft_and_reproduces_central_accuracy(out_dir: Path, tiny_config) -> None:
    config = tiny_config(rounds=2)
    coordinator, result = _run(config, out_dir)
    best = out_dir / "checkpoint" / "best"
    assert (best / "adapter_config.json").is_file()
    base = load_base_model("tiny-bert", num_labels=2, seed=config.seed)
    peft_model = PeftModel.from_pretrained(base.model, str(best))
    peft_model.eval()
    state = load_state(out_dir / "checkpoint" / "best_state")
    expected_acc, _ = coordinator.evaluator(state)
    from sentinel.client.training import evaluate_examples

    acc, _ = evaluate_examples(peft_model, base, coordinator.evaluator.test, 64, config.max_length)
    # tiny-bert's projections are 32×32, so a rank-32 adapter holds ΔW exactly.
    assert acc == pytest.approx(expected_acc, abs=1e-9)
    assert state.round == result.best_round


def test_resume_after_round_one_reproduces_the_uninterrupted_run(tmp_path: Path, tiny_config) -> None:
    full_cfg = tiny_config(rounds=2)
    _, full = _run(full_cfg, tmp_path / "full")

    _, first = _run(tiny_config(rounds=1), tmp_path / "split")
    assert first.state.round == 1
    _, resumed = _run(tiny_config(rounds=2), tmp_path / "split", resume=True)
    assert resumed.state.round == 2
    for module, delta in full.state.deltas.items():
        np.testing.assert_allclose(resumed.state.deltas[module], delta, atol=1e-6, rtol=0)
    for name, value in full.state.head.items():
        np.testing.assert_allclose(resumed.state.head[name], value, atol=1e-6, rtol=0)
    assert [r["accuracy"] for r in resumed.history] == pytest.approx([r["accuracy"] for r in full.history])


def test_naive_aggregation_gives_a_different_global_model(tmp_path: Path, tiny_config) -> None:
    _, exact = _run(tiny_config(rounds=1), tmp_path / "exact")
    _, naive = _run(tiny_config(rounds=1, aggregation="naive"), tmp_path / "naive")
    diffs = [np.abs(exact.state.deltas[m] - naive.state.deltas[m]).max() for m in exact.state.deltas]
    assert max(diffs) > 1e-4


def test_early_stopping_stops_after_patience(tmp_path: Path, tiny_config, tiny_profiles) -> None:
    # A zero learning rate cannot improve the model: the run must stop after `patience` rounds.
    frozen = {k: v.model_copy(update={"learning_rate": 1e-12}) for k, v in tiny_profiles.items()}
    _, result = _run(tiny_config(rounds=6, patience=2, profiles=frozen, min_delta=0.5), tmp_path / "es")
    assert result.stopped_early
    assert result.history[-1]["round"] == 2
    assert result.best_round == 0
