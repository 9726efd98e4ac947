"""The run report: ``report.json`` and the accuracy/loss plots a person looks at."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sentinel.server.config import FederationConfig  # noqa: E402
from sentinel.server.plasticity_plot import has_heads, plot_heads  # noqa: E402
from sentinel.server.rounds import RunResult  # noqa: E402


def build_report(config: FederationConfig, result: RunResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report as a JSON-ready dict: config, per-round rows, best round, final metrics, nodes."""
    last = result.history[-1]
    report: dict[str, Any] = {
        "config": json.loads(config.model_dump_json()),
        "rounds": [r for r in result.history if r["round"] > 0],
        "initial": next((r for r in result.history if r["round"] == 0), None),
        "best_round": result.best_round,
        "best_accuracy": result.best_accuracy,
        "stopped_early": result.stopped_early,
        "final": {"accuracy": last["accuracy"], "loss": last["loss"], "round": last["round"]},
        "nodes": [
            {"node_id": n.key_id, "flower_node_id": str(n.node_id), "partition_id": n.partition_id, "role": n.role, "public_key": n.public_key}
            for n in result.nodes
        ],
        "refused_nodes": {str(n): reason for n, reason in result.refused.items()},
    }
    report.update(extra or {})
    return report


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temp file and rename, so readers never see half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str))
    os.replace(tmp, path)


def plot_metric(history: list[dict[str, Any]], key: str, best_round: int, path: Path, title: str) -> None:
    """One metric per round as a line, with the best round marked."""
    rounds = [r["round"] for r in history]
    values = [r[key] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(rounds, values, marker="o", color="#2a6fdb")
    best = next((r for r in history if r["round"] == best_round), None)
    if best is not None:
        ax.axvline(best_round, color="#d1495b", linestyle="--", linewidth=1)
        ax.scatter([best_round], [best[key]], color="#d1495b", zorder=3, label=f"best round {best_round}")
        ax.legend(loc="best")
    ax.set_xlabel("round")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(out_dir: Path, config: FederationConfig, result: RunResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``report.json``, ``accuracy.png`` and ``loss.png`` into ``out_dir`` (and ``heads.png`` when plasticity was on)."""
    report = build_report(config, result, extra)
    write_json_atomically(out_dir / "report.json", report)
    plot_metric(result.history, "accuracy", result.best_round, out_dir / "accuracy.png", "Central test accuracy")
    plot_metric(result.history, "loss", result.best_round, out_dir / "loss.png", "Central test loss")
    if any("detection" in r for r in result.history):
        plot_detection(result.history, out_dir / "detection.png")
    if has_heads(result.history):
        plot_heads(result.history, out_dir / "heads.png")
    return report


def plot_detection(history: list[dict[str, Any]], path: Path) -> None:
    """True- and false-positive rates of the defences per round (attack simulations)."""
    rows = [r for r in history if "detection" in r]
    rounds = [r["round"] for r in rows]

    def rate(r: dict[str, Any], hit: str, miss: str) -> float:
        total = r["detection"][hit] + r["detection"][miss]
        return r["detection"][hit] / total if total else float("nan")

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(rounds, [rate(r, "tp", "fn") for r in rows], marker="o", color="#2a6fdb", label="TPR (attackers rejected)")
    ax.plot(rounds, [rate(r, "fp", "tn") for r in rows], marker="s", color="#d1495b", label="FPR (honest rejected)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("rate")
    ax.set_title("Detection of malicious updates")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
