"""``heads.png``: live heads per layer over rounds, from the rows a run writes.

The data the plot draws is tested, not its pixels: from hand-written rows, and
from a real tiny-bert run with plasticity and distillation on (three real
ClientApps on a LocalGrid, the report written the way ``sentinel simulate``
writes it), where the grid must match the pruning decisions on the ledger.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sentinel.protos.vocabulary import EntryKind, parse_component
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid
from sentinel.server.plasticity_plot import has_heads, heads_over_rounds, plot_heads
from sentinel.server.report import write_report


def _row(rnd: int, heads: list[int], event: str = "", distilled: dict | None = None) -> dict:
    row = {"round": rnd, "accuracy": 0.5, "loss": 1.0, "heads_per_layer": heads, "plasticity": {"event": event} if event else {}}
    return row | ({"distilled": distilled} if distilled else {})


def test_the_grid_is_layers_by_rounds_with_each_rounds_decision_and_students() -> None:
    history = [
        {"round": 0, "accuracy": 0.4, "loss": 1.2},  # the initial row carries no mask
        _row(2, [3, 4], EntryKind.PRUNE_REVERTED),
        _row(1, [3, 4], EntryKind.HEADS_PRUNED, {"student_accuracy": 0.7, "teacher_accuracy": 0.8, "round": 1}),
        _row(3, [4, 4], EntryKind.HEADS_REGROWN),
        _row(4, [2, 3], EntryKind.HEADS_PRUNED, {"round": 4, "rejected": {"n1": "no student"}}),  # a rejected distillation has no accuracy
    ]
    assert has_heads(history) and not has_heads(history[:1])
    data = heads_over_rounds(history)
    assert data.rounds == [1, 2, 3, 4]  # sorted by round, the initial row left out
    np.testing.assert_array_equal(data.heads, [[3, 3, 4, 2], [4, 4, 4, 3]])
    assert data.events == ["prune", "revert", "regrow", "prune"]
    assert data.students == [(1, 0.7, 0.8)]


def test_rows_without_heads_are_refused() -> None:
    with pytest.raises(ValueError, match="plasticity was off"):
        heads_over_rounds([{"round": 1, "accuracy": 0.5, "loss": 1.0}])
    with pytest.raises(ValueError, match="number of layers"):
        heads_over_rounds([_row(1, [4, 4]), _row(2, [4, 4, 4])])


def test_plot_heads_writes_a_png_with_and_without_students(tmp_path: Path) -> None:
    plain = [_row(1, [4, 4]), _row(2, [3, 4], EntryKind.HEADS_PRUNED)]
    with_students = plain + [_row(3, [3, 3], EntryKind.HEADS_PRUNED, {"student_accuracy": 0.6, "teacher_accuracy": 0.7})]
    for name, history in (("plain.png", plain), ("students.png", with_students)):
        data = plot_heads(history, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert data.heads.shape == (2, len(history))


@pytest.mark.slow
def test_a_plasticity_run_writes_heads_png_matching_the_ledgers_decisions(tmp_path: Path) -> None:
    from sentinel.client.app import app
    from sentinel.client.node import ensure_simulated_keys

    profile = RoleProfile(lora_rank=4, local_steps=3, batch_size=8, learning_rate=5e-3)
    config = FederationConfig(
        model="tiny-bert", dataset="builtin:reviews?n=240", nodes=3, patience=5, max_length=24, rounds=3, token_budget=100,
        profiles={"edge": profile, "gpu": profile, "central": profile},
        plasticity=True, prune_every=1, prune_step=0.125, target_sparsity=0.25, prune_vote_share=0.5, prune_rank_share=0.25,
        prune_tolerance=1.0, distill=True, distill_every=0, distill_steps=2,
    )
    out = tmp_path / "run"
    coordinator = Coordinator.build(config, out)
    ids = [1001, 1008, 1015]
    ensure_simulated_keys(out / "keys", 3)
    grid = LocalGrid({n: app for n in ids}, {n: {"partition-id": i, "num-partitions": 3} for i, n in enumerate(ids)}, node_keys=out / "keys")
    result = coordinator.run(grid)
    write_report(out, config, result, coordinator.report_extra())

    assert (out / "heads.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "report.json").read_text())
    data = heads_over_rounds(report["rounds"])
    assert data.rounds == [1, 2, 3]
    # Replay the ledger's pruning decisions on a full mask: the grid's column of each round is what they leave live.
    mask = np.ones(np.shape(report["plasticity"]["importance"]["values"]), dtype=int)  # tiny-bert: 2 layers x 4 heads
    by_round = {e.payload["round"]: e.payload["heads"] for e in coordinator.ledger.iter_entries(kind=EntryKind.HEADS_PRUNED)}
    assert sorted(by_round) == [1, 2]  # one head of 8 per cycle, up to a quarter
    for col, rnd in enumerate(data.rounds):
        for head in by_round.get(rnd, []):
            ref = parse_component(head)
            mask[ref.layer, ref.head] = 0
        np.testing.assert_array_equal(data.heads[:, col], mask.sum(axis=1))
    assert data.events[0] == "prune"
    assert [s[0] for s in data.students] == [s["round"] for s in report["students"]["distilled"] if "student_accuracy" in s]
