"""``heads.png``: live attention heads per layer over rounds (the seed's head-distribution visualisation).

A run with plasticity on carries ``heads_per_layer`` (live heads of each layer
after the round's pruning or regrowth decision) in every round's row
(``server.plasticity``). :func:`heads_over_rounds` turns the rows into the
layer × round grid the plot draws; :func:`plot_heads` draws it as a heatmap
with each cell's count, the round's decision under its column, and, when the
run distilled students (``distilled`` in a row), the student's and the
teacher's accuracy in a panel below.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sentinel.protos.vocabulary import EntryKind  # noqa: E402

HEADS_FIELD = "heads_per_layer"
"""The row field the plot reads (written by ``server.plasticity.PlasticityPhase.on_round``)."""

EVENT_LABELS = {str(EntryKind.HEADS_PRUNED): "prune", str(EntryKind.HEADS_REGROWN): "regrow", str(EntryKind.PRUNE_REVERTED): "revert"}
"""Short column labels of the plasticity decisions a row's ``plasticity.event`` names."""


@dataclass(frozen=True)
class HeadsOverRounds:
    """What ``heads.png`` draws: live heads per layer (rows) and round (columns), and each round's decision."""

    rounds: list[int]
    heads: np.ndarray
    """``[num_layers, len(rounds)]`` live heads."""
    events: list[str]
    """The round's decision (``EVENT_LABELS``), ``""`` when none."""
    students: list[tuple[int, float, float]]
    """``(round, student accuracy, teacher accuracy)`` of each round that distilled a student."""


def has_heads(history: Sequence[Mapping[str, Any]]) -> bool:
    """Whether any row carries live heads per layer (the run had plasticity on)."""
    return any(HEADS_FIELD in r for r in history)


def heads_over_rounds(history: Sequence[Mapping[str, Any]]) -> HeadsOverRounds:
    """The layer × round grid of live heads from the run's rows (rows without ``heads_per_layer`` are skipped)."""
    rows = sorted((r for r in history if HEADS_FIELD in r), key=lambda r: int(r["round"]))
    if not rows:
        raise ValueError(f"no row carries `{HEADS_FIELD}` (plasticity was off)")
    widths = {len(r[HEADS_FIELD]) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"rows disagree on the number of layers: {sorted(widths)}")
    heads = np.array([[int(x) for x in r[HEADS_FIELD]] for r in rows], dtype=np.int64).T
    events = [EVENT_LABELS.get(str((r.get("plasticity") or {}).get("event", "")), "") for r in rows]
    students = [
        (int(r["round"]), float(d["student_accuracy"]), float(d["teacher_accuracy"]))
        for r in rows
        if (d := r.get("distilled")) and "student_accuracy" in d and "teacher_accuracy" in d
    ]
    return HeadsOverRounds([int(r["round"]) for r in rows], heads, events, students)


def plot_heads(history: Sequence[Mapping[str, Any]], path: Path) -> HeadsOverRounds:
    """Draw live heads per layer over rounds into ``path`` (PNG); returns the data drawn."""
    data = heads_over_rounds(history)
    num_layers, num_rounds = data.heads.shape
    panels = 2 if data.students else 1
    height = 0.35 * num_layers + 1.6 + (2.2 if data.students else 0)
    fig, axes = plt.subplots(
        panels, 1, figsize=(max(6.0, 0.45 * num_rounds + 2.5), height), dpi=120, squeeze=False,
        gridspec_kw={"height_ratios": [max(2, num_layers), 4][:panels]},
    )
    ax = axes[0][0]
    top = max(1, int(data.heads.max()))
    image = ax.imshow(data.heads, aspect="auto", cmap="viridis", vmin=0, vmax=top, origin="lower")
    if num_layers * num_rounds <= 600:
        for layer in range(num_layers):
            for col in range(num_rounds):
                value = int(data.heads[layer, col])
                ax.text(col, layer, str(value), ha="center", va="center", fontsize=7, color="white" if value < 0.6 * top else "black")
    ax.set_xticks(range(num_rounds), [f"{r}\n{e}" if e else str(r) for r, e in zip(data.rounds, data.events, strict=True)], fontsize=7)
    ax.set_yticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=7)
    ax.set_xlabel("round (decision)")
    ax.set_ylabel("layer")
    ax.set_title(f"Live attention heads per layer over rounds ({int(data.heads[:, -1].sum())} live after round {data.rounds[-1]})", fontsize=9)
    fig.colorbar(image, ax=ax, label="live heads", fraction=0.04)
    if data.students:
        low = axes[1][0]
        rounds = [s[0] for s in data.students]
        low.plot(rounds, [s[2] for s in data.students], marker="o", color="#2a6fdb", label="teacher (all heads)")
        low.plot(rounds, [s[1] for s in data.students], marker="s", color="#d1495b", label="distilled student")
        low.set_xlim(data.rounds[0] - 0.5, data.rounds[-1] + 0.5)
        low.set_xticks(data.rounds, [str(r) for r in data.rounds], fontsize=7)
        low.set_xlabel("round")
        low.set_ylabel("accuracy (central node)")
        low.grid(alpha=0.3)
        low.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return data


__all__ = ["EVENT_LABELS", "HEADS_FIELD", "HeadsOverRounds", "has_heads", "heads_over_rounds", "plot_heads"]
