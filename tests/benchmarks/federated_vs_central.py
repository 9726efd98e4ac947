"""Benchmark: federated exact vs naive LoRA against centralized and local-only training.

Run on demand (not a test):

    python tests/benchmarks/federated_vs_central.py --out bench.json

Default setting: MiniLM on the UCI Sentiment Labelled Sentences (read from
../shared/data), split by domain over 6 nodes (2 edge at rank 4, 4 gpu at rank
16), the same total local epochs for every setting (rounds × local epochs), a
fixed seed and the same held-out test set. Settings:

- centralized: one rank-16 LoRA trained on the union of the nodes' training data;
- local-only: each node trains alone on its own data (mean over nodes, and per domain);
- federated naive (FedIT: mean A, mean B) and federated exact (Σ w·B·A).

Prints one table (accuracy overall and per domain, bytes up per round, bytes of a
full-model FedAvg round for contrast) and writes it as JSON. Federated runs use
the in-process LocalGrid: the figures measure learning and traffic, not Ray.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sentinel.client.app import app as client_app
from sentinel.client.data import Example
from sentinel.client.data.federated import federated_split, node_train_val
from sentinel.client.training import GlobalView, train_local
from sentinel.models.pruning import count_parameters
from sentinel.server.central import CentralEvaluator
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.coordinator import Coordinator
from sentinel.server.local_grid import LocalGrid
from sentinel.server.outcome import NodeInfo, NodeResult
from sentinel.server.state import GlobalState
from sentinel.server.strategy import aggregate_updates

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentiment-labelled-sentences"


def per_domain_accuracy(evaluator: CentralEvaluator, state: GlobalState, test: list[Example]) -> dict[str, float]:
    """Accuracy of ``state`` on each domain's slice of the test set."""
    by_domain: dict[str, list[Example]] = defaultdict(list)
    for e in test:
        by_domain[e.domain].append(e)
    out = {}
    for domain, examples in sorted(by_domain.items()):
        sub = CentralEvaluator(evaluator.base, examples, evaluator.max_length)
        out[domain] = sub(state)[0]
    return out


def train_alone(coord: Coordinator, train: list[Example], val: list[Example], profile: RoleProfile, epochs: int, seed: int) -> GlobalState:
    """One LoRA trained on ``train`` for ``epochs`` epochs from the base model; returns the resulting state."""
    initial = coord.starting_state(resume=False)
    view = GlobalView(factors={}, head=initial.head)
    steps = max(1, int(np.ceil(epochs * len(train) / profile.batch_size)))
    upd = train_local(
        coord.base, view, train, val, rank=profile.lora_rank, steps=steps, batch_size=profile.batch_size,
        learning_rate=profile.learning_rate, max_length=coord.config.max_length, seed=seed,
    )
    node = NodeInfo(0, 0, "gpu")
    res = NodeResult(node=node, accepted=True, num_examples=upd.num_examples, rank=upd.rank, scaling=upd.scaling, arrays=upd.arrays)
    deltas, head = aggregate_updates([res], "exact", initial.deltas, initial.head)
    return GlobalState(deltas=deltas, head=head)


def run_federated(config: FederationConfig, out: Path) -> tuple[GlobalState, list[dict], Coordinator]:
    """A federated run over an in-process grid (no ledger: this measures learning)."""
    coord = Coordinator.build(config, out, accountable=False)
    ids = [2001 + i for i in range(config.nodes)]
    grid = LocalGrid({n: client_app for n in ids}, {n: {"partition-id": i, "num-partitions": config.nodes} for i, n in enumerate(ids)})
    result = coord.run(grid)
    return result.state, result.history, coord


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="UCI Sentiment Labelled Sentences folder.")
    parser.add_argument("--rounds", type=int, default=4, help="Federated rounds.")
    parser.add_argument("--local-epochs", type=float, default=1.0, help="Local epochs per round.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-federated-vs-central.json"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench-fvc"))
    args = parser.parse_args()

    console = Console()
    total_epochs = int(round(args.rounds * args.local_epochs))
    edge = RoleProfile(lora_rank=4, local_steps=1, local_epochs=args.local_epochs, batch_size=16, learning_rate=1e-3)
    gpu = RoleProfile(lora_rank=16, local_steps=1, local_epochs=args.local_epochs, batch_size=16, learning_rate=1e-3)
    base_cfg = FederationConfig(
        model=args.model, dataset=f"uci-sentiment:{args.data}", partition="by-domain", nodes=6,
        roles=["edge", "edge", "gpu", "gpu", "gpu", "gpu"], rounds=args.rounds, patience=args.rounds + 1,
        seed=args.seed, test_fraction=0.2, profiles={"edge": edge, "gpu": gpu, "central": gpu},
    )
    data = federated_split(base_cfg.dataset, 6, "by-domain", base_cfg.dirichlet_alpha, base_cfg.test_fraction, base_cfg.seed)
    test = list(data.test)
    results: dict[str, dict] = {}
    timings: dict[str, float] = {}

    for mode in ("exact", "naive"):
        t0 = time.perf_counter()
        cfg = base_cfg.model_copy(update={"aggregation": mode})
        state, history, coord = run_federated(cfg, args.workdir / mode)
        rounds = [r for r in history if r["round"] > 0]
        results[f"federated {mode}"] = {
            "accuracy": rounds[-1]["accuracy"],
            "per_domain": per_domain_accuracy(coord.evaluator, state, test),
            "bytes_up_per_round": int(np.mean([r["bytes_up"] for r in rounds])),
            "svd_residual_last": rounds[-1]["svd_residual"],
        }
        timings[f"federated {mode}"] = time.perf_counter() - t0
        console.print(f"federated {mode}: {results[f'federated {mode}']['accuracy']:.4f} ({timings[f'federated {mode}']:.0f} s)")

    coord = Coordinator.build(base_cfg, args.workdir / "central", accountable=False)
    splits = [node_train_val(data, i, base_cfg.val_fraction, base_cfg.seed) for i in range(6)]
    t0 = time.perf_counter()
    union_train = [e for tr, _ in splits for e in tr]
    union_val = [e for _, va in splits for e in va]
    central_state = train_alone(coord, union_train, union_val, gpu, total_epochs, args.seed)
    results["centralized"] = {"accuracy": coord.evaluator(central_state)[0], "per_domain": per_domain_accuracy(coord.evaluator, central_state, test)}
    timings["centralized"] = time.perf_counter() - t0
    console.print(f"centralized: {results['centralized']['accuracy']:.4f} ({timings['centralized']:.0f} s)")

    t0 = time.perf_counter()
    local_acc, local_domain = [], defaultdict(list)
    for i, (tr, va) in enumerate(splits):
        profile = edge if base_cfg.role_of_partition(i) == "edge" else gpu
        st = train_alone(coord, tr, va, profile, total_epochs, args.seed + i)
        local_acc.append(coord.evaluator(st)[0])
        own = tr[0].domain
        local_domain[own].append(per_domain_accuracy(coord.evaluator, st, [e for e in test if e.domain == own])[own])
    results["local-only (mean)"] = {"accuracy": float(np.mean(local_acc)), "per_domain": {d: float(np.mean(v)) for d, v in local_domain.items()},
                                    "note": "per-domain figures: each node on its own domain's test slice"}
    timings["local-only (mean)"] = time.perf_counter() - t0

    full_round = count_parameters(coord.base.model) * 4 * 6
    domains = sorted({e.domain for e in test})
    table = Table(title=f"{args.model}, UCI sentiment by domain, 6 nodes, {total_epochs} total local epochs, seed {args.seed}")
    for col in ["setting", "accuracy", *domains, "bytes up / round"]:
        table.add_column(col)
    for name, r in results.items():
        up = r.get("bytes_up_per_round")
        table.add_row(name, f"{r['accuracy']:.4f}", *[f"{r['per_domain'].get(d, float('nan')):.4f}" for d in domains],
                      f"{up / 1e6:.2f} MB" if up else "-")
    table.add_row("full-model FedAvg (contrast)", "-", *["-" for _ in domains], f"{full_round / 1e6:.1f} MB")
    console.print(table)
    exact_up = results["federated exact"]["bytes_up_per_round"]
    summary = {
        "setting": {"model": args.model, "nodes": 6, "roles": base_cfg.roles, "rounds": args.rounds,
                    "local_epochs": args.local_epochs, "total_epochs": total_epochs, "seed": args.seed, "test_examples": len(test)},
        "results": results,
        "full_model_fedavg_bytes_per_round": full_round,
        "uplink_fraction_of_full_fedavg": exact_up / full_round,
        "exact_minus_centralized_points": 100 * (results["federated exact"]["accuracy"] - results["centralized"]["accuracy"]),
        "seconds": timings,
    }
    console.print(f"exact − centralized: {summary['exact_minus_centralized_points']:+.2f} points; "
                  f"uplink = {100 * summary['uplink_fraction_of_full_fedavg']:.2f}% of a full-model FedAvg round")
    args.out.write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
