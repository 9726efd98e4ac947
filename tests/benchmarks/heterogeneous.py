"""Benchmark: a heterogeneous Sentinel federation against Flower's own FedAvg over PEFT LoRA (issue 10).

Run on demand (not a test; long — start it in the background):

    nice -n 10 python tests/benchmarks/heterogeneous.py --out runs/bench-heterogeneous

Smoke test at a tiny size (minutes): ``--model tiny-bert --rounds 2 --seeds 0
--max-length 24 --contribution-examples 32 --only chosen@0,flower-fedavg@0,today@0``.

MiniLM on the UCI Sentiment Labelled Sentences, split by domain over 6 nodes,
the same split, local work (1 local epoch per round, batch 16, lr 1e-3) and
held-out test set (20%) for every setting of a seed:

- (a) ``flower-fedavg`` — Flower's ``FedAvg`` strategy over PEFT LoRA at rank 16
  on every node (nodes continue from the averaged adapter; what a Flower user builds);
- (b) ``today`` — the design before issue 10: a fresh LoRA each round on the
  global ΔW truncated at the node's rank;
- (c) ``flora`` — a fresh LoRA each round on the *exact* global ΔW (FLoRA's
  stacked factors, compressed to the rank they have);
- (d) ``chosen`` — the shared-frame design with its frozen factor an orthonormal basis at PEFT's
  init norm, gain 4/√t in round t, rank-4 nodes training in the whole rank-16 frame and sending the
  best rank-4 part of what they trained, keeping the rest for their next update (error feedback), and
  each direction averaged over the nodes that reach it (``training_design = "frame-unit-trained-reach-ef"``,
  ``frame_gain = 4``, ``frame_gain_schedule = "inverse-sqrt"``: the config's defaults;
  ``--chosen``/``--frame-gain``/``--frame-gain-schedule``);
- ``continued`` — nodes resume the global adapter's top-r factors and send
  their adapter at rank r, the coordinator rebuilding the change at rank 2r (``training_design = "continued"``,
  ``models.continued``).

(a) and (d) run over every seed, (d) with 2 edge nodes at rank 4 and 4 gpu
nodes at rank 16, (a) at rank 16 everywhere. (b), (c), (d) also run with all
nodes at rank 16, and the suspects of the accuracy gap are ablated at the first
seed: fresh vs frame adapter (b/c vs d), the rank mix (mixed vs all-16), the
default consent policy (``consent=False``), the agency rule (a policy without
it), error feedback (``chosen-no-ef``), the trained sub-frame (``chosen-gradient-subframe``: the r
combinations chosen by the gradient of a probe; ``chosen-top-subframe``: the frame's leading r
directions), reach weighting with the leading sub-frame too (``chosen-unit``: ``frame-unit``) and, for ``--chosen
frame``, the frame schedule (``b`` only). ``--ablation-seeds`` runs the ablations at more seeds. Sentinel runs are accountable (ledger,
governance, validation, leave-one-out contributions), as ``sentinel simulate``
runs them. Every federation uses the in-process ``LocalGrid`` (no Ray), so the
figures measure learning, traffic and coordinator time, not Ray's scheduling.

Printed: mean ± sd of best and final accuracy per setting, bytes up and down per
round, the view error, per-role LOO contribution and token share, round time;
the candidates for exact views (error, bytes down, coordinator memory) measured
on the recorded global states. Written: ``results.json`` (updated after every
setting, so an interrupted run keeps what it finished; ``--resume`` skips those)
and ``accuracy.png``.

Sized for 90 minutes on this 2-core machine: 4 rounds instead of 10, half a local
epoch per round instead of one, 48 tokens instead of 64 (1% of the sentences are
longer), 128 contribution examples; and ``--max-minutes`` (90) starts no setting
that would end past the budget (by the mean time of the settings of the same
system run so far), so the most informative settings (listed first) always run
and the ones left out are named in ``results.json`` (``skipped``). One Sentinel
setting at these sizes takes about 2.3 minutes for 4 rounds on an idle 2-core
machine with ``--workers 2 --no-validation`` (25 s per round, plus leave-one-out
scoring; 10 rounds about 6 minutes), a Flower one about 1.4 minutes; Flower's
runs are cheaper (no contribution scoring, importance probes or validation).
``--no-validation`` drops the validate phase from the Sentinel runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "sentiment-labelled-sentences"
MIXED = ("edge", "edge", "gpu", "gpu", "gpu", "gpu")
ALL16 = ("gpu",) * 6


@dataclass(frozen=True)
class Setting:
    """One federation to run: which system, which design, which roles, which seed."""

    name: str
    system: str  # "flower" | "sentinel"
    roles: tuple[str, ...] = MIXED
    seed: int = 0
    design: str = "frame"  # a name of server.views.DESIGNS (FederationConfig.training_design)
    consent: bool = True
    agency: bool = True

    @property
    def key(self) -> str:
        return f"{self.name}@{self.seed}"


CHOSEN = "frame-unit-trained-reach-ef"
ABLATED: dict[str, dict[str, str]] = {
    "frame-unit-trained-reach-ef": {"chosen-no-ef": "frame-unit-trained-reach", "chosen-gradient-subframe": "frame-unit-gradient-reach",
                                    "chosen-top-subframe": "frame-unit-reach", "chosen-unit": "frame-unit"},
    "frame-unit-gradient-reach": {"chosen-top-subframe": "frame-unit-reach", "chosen-no-reach": "frame-unit-gradient",
                                  "chosen-unit": "frame-unit"},
}
"""The chosen design's parts, each taken away: ablation name → the design without it."""


def settings(seeds: Sequence[int], chosen: str = CHOSEN, ablation_seeds: Sequence[int] | None = None) -> list[Setting]:
    """Every setting, the most informative first (a run cut short by its time budget is still useful):
    the target comparison (chosen vs Flower) over every seed, today's design, then the ablations (at
    ``ablation_seeds``, default the first seed). ``chosen`` is the design of (d) (a name of ``server.views.DESIGNS``)."""
    target = [Setting(name, system, roles, s, design=design) for s in seeds for name, system, roles, design in
              (("chosen", "sentinel", MIXED, chosen), ("flower-fedavg", "flower", ALL16, chosen))]
    first: list[Setting] = []
    for s0 in ablation_seeds or seeds[:1]:
        first += _ablations(s0, chosen)
    return target[:2] + first[:1] + target[2:] + first[1:]


def _ablations(s0: int, chosen: str) -> list[Setting]:
    """The suspects of the accuracy gap, each alone, at seed ``s0``."""
    first = [
        Setting("today", "sentinel", MIXED, s0, design="legacy"),
        Setting("continued", "sentinel", MIXED, s0, design="continued"),
        Setting("continued-all16", "sentinel", ALL16, s0, design="continued"),
        Setting("chosen-all16", "sentinel", ALL16, s0, design=chosen),
        Setting("today-all16", "sentinel", ALL16, s0, design="legacy"),
        Setting("flora-all16", "sentinel", ALL16, s0, design="flora"),
        Setting("chosen-no-policy", "sentinel", MIXED, s0, design=chosen, consent=False),
        Setting("chosen-no-agency", "sentinel", MIXED, s0, design=chosen, agency=False),
    ]
    first += [Setting(name, "sentinel", MIXED, s0, design=design) for name, design in ABLATED.get(chosen, {}).items()]
    if chosen == "frame":  # the frame schedule's ablation exists for the balanced frame
        first.append(Setting("chosen-b-only", "sentinel", MIXED, s0, design="frame-b"))
    return first


# ---------------------------------------------------------------- shared set-up


def federation_config(args: argparse.Namespace, setting: Setting, workdir: Path) -> Any:
    from sentinel.server.config import FederationConfig, RoleProfile

    edge = RoleProfile(lora_rank=4, local_steps=1, local_epochs=args.local_epochs, batch_size=16, learning_rate=args.lr)
    gpu = RoleProfile(lora_rank=16, local_steps=1, local_epochs=args.local_epochs, batch_size=16, learning_rate=args.lr)
    policy = None
    if not setting.agency:
        policy = str(_policy_without_agency(workdir))
    return FederationConfig(
        model=args.model, dataset=f"uci-sentiment:{args.data}", partition="by-domain", nodes=6, roles=list(setting.roles),
        rounds=args.rounds, patience=args.rounds + 1, seed=setting.seed, test_fraction=0.2, max_length=args.max_length,
        profiles={"edge": edge, "gpu": gpu, "central": gpu}, contribution_examples=args.contribution_examples,
        consent=setting.consent, policy=policy, checkpoint_rank=1, training_design=setting.design,
        validation=not args.no_validation, frame_gain_schedule=args.frame_gain_schedule,
        **({"frame_gain": args.frame_gain} if args.frame_gain is not None else {}),
    )


def _policy_without_agency(workdir: Path) -> Path:
    """The default consent policy with its agency (entropy-saturation) rule removed."""
    import yaml
    from sentinel.governance import policy_file

    source = Path(policy_file.__file__).with_name("default_policy.yaml")
    policy = yaml.safe_load(source.read_text())
    policy.pop("agency", None)
    policy["name"] = "sentinel-default-no-agency"
    path = workdir / "policy-no-agency.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def local_grid(num_nodes: int, app: Any, keys: Path) -> Any:
    from sentinel.client.node import ensure_simulated_keys
    from sentinel.server.local_grid import LocalGrid

    ids = [3001 + i for i in range(num_nodes)]
    return LocalGrid({n: app for n in ids}, {n: {"partition-id": i, "num-partitions": num_nodes} for i, n in enumerate(ids)},
                     node_keys=ensure_simulated_keys(keys, num_nodes))


# ---------------------------------------------------------------- (a) Flower FedAvg over PEFT LoRA


def run_flower(args: argparse.Namespace, setting: Setting, workdir: Path) -> dict[str, Any]:
    """Flower's FedAvg strategy, its ``start()`` loop, and a plain PEFT LoRA ClientApp (rank 16, continuing)."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp.strategy import FedAvg
    from sentinel.client.data.batching import sample_batches
    from sentinel.client.data.federated import federated_split, node_train_val
    from sentinel.models.deltas import lora_weight_deltas
    from sentinel.models.loading import load_base_model
    from sentinel.models.lora import adapter_arrays, attach_lora, load_adapter_arrays, split_adapter_arrays
    from sentinel.protos.records import from_array_record, to_array_record
    from sentinel.server.central import CentralEvaluator
    from sentinel.server.state import GlobalState
    from sentinel.server.strategy import node_seed

    cfg = federation_config(args, setting, workdir)
    data = federated_split(cfg.dataset, cfg.nodes, cfg.partition, cfg.dirichlet_alpha, cfg.test_fraction, cfg.seed)
    base = load_base_model(cfg.model, num_labels=data.num_labels, seed=cfg.seed)
    rank = cfg.profiles["gpu"].lora_rank
    init = attach_lora(copy.deepcopy(base.model), rank=rank, alpha=2.0 * rank, seed=cfg.seed)
    initial = adapter_arrays(init)
    splits = [node_train_val(data, i, cfg.val_fraction, cfg.seed) for i in range(cfg.nodes)]
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        rnd = int(msg.content["config"]["server-round"])
        train_set = splits[pid][0]
        model = attach_lora(copy.deepcopy(base.model), rank=rank, alpha=2.0 * rank, seed=cfg.seed)
        load_adapter_arrays(model, from_array_record(msg.content["arrays"]))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        steps = max(1, math.ceil(args.local_epochs * len(train_set) / 16))
        seed = node_seed(cfg.seed, rnd, pid)
        torch.manual_seed(seed)
        model.train()
        for batch in sample_batches(base.tokenizer, train_set, 16, cfg.max_length, steps, seed):
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            opt.step()
        reply = RecordDict({"arrays": to_array_record(adapter_arrays(model)), "metrics": MetricRecord({"num-examples": len(train_set)})})
        return Message(reply, reply_to=msg)

    evaluator = CentralEvaluator(base, data.test, cfg.max_length)
    history: list[dict[str, Any]] = []
    marks = [time.monotonic()]

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        adapter = from_array_record(arrays)
        _, head = split_adapter_arrays(adapter)
        state = GlobalState(deltas=lora_weight_deltas(adapter, 2.0), head=head)
        acc, loss = evaluator(state)
        now = time.monotonic()
        history.append({"round": rnd, "accuracy": acc, "loss": loss, "duration_s": now - marks[-1]})
        marks.append(now)
        workdir.mkdir(parents=True, exist_ok=True)  # so far, for a run cut short (Sentinel's rows are in its checkpoints)
        (workdir / "history.json").write_text(json.dumps(history, indent=2))
        return MetricRecord({"accuracy": acc, "loss": loss})

    grid = local_grid(cfg.nodes, app, workdir / "node-keys")
    record = to_array_record(initial)
    FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=cfg.nodes, min_train_nodes=cfg.nodes).start(
        grid=grid, initial_arrays=record, num_rounds=args.rounds, evaluate_fn=evaluate
    )
    per_message = record.count_bytes()
    rounds = [dict(r, bytes_down=per_message * cfg.nodes, bytes_up=per_message * cfg.nodes) for r in history if r["round"] > 0]
    return {"rounds": rounds, "initial": history[0]}


# ---------------------------------------------------------------- (b)-(d) Sentinel


class _StateLog:
    """A round observer keeping each round's sent global ΔW (for the view-candidate measurements)."""

    def __init__(self) -> None:
        self.states: list[dict[str, np.ndarray]] = []
        self.accepted_ranks: list[list[int]] = []

    def restore(self, meta: Any) -> None: ...
    def on_nodes(self, nodes: Any) -> None: ...
    def on_round_start(self, server_round: int) -> None: ...
    def checkpoint_meta(self) -> dict[str, Any]:
        return {}
    def commit_round(self, server_round: int) -> None: ...
    def report(self) -> dict[str, Any]:
        return {}

    def on_round(self, outcome: Any, row: Any, state: Any, previous: Any) -> dict[str, Any]:
        if not self.states:
            self.states.append({m: d.astype(np.float32) for m, d in previous.deltas.items()})
        self.states.append({m: d.astype(np.float32) for m, d in state.deltas.items()})
        self.accepted_ranks.append([r.rank for r in outcome.accepted])
        return {}


def run_sentinel(args: argparse.Namespace, setting: Setting, workdir: Path) -> dict[str, Any]:
    from sentinel.client.app import app as client_app
    from sentinel.server.central import export_peft_adapter
    from sentinel.server.coordinator import Coordinator
    from sentinel.server.role_figures import RoleFigures

    cfg = federation_config(args, setting, workdir)
    coordinator = Coordinator.build(cfg, workdir / "run")
    roles = next(o for o in coordinator.observers if isinstance(o, RoleFigures))  # the report's own per-role figures
    states = _StateLog()
    grid = local_grid(cfg.nodes, client_app, workdir / "node-keys")
    result = coordinator.run(grid, extra_observers=[states])
    exported = export_peft_adapter(coordinator.base, result.state, workdir / "final-adapter")
    keep = ("round", "accuracy", "loss", "bytes_up", "bytes_down", "duration_s", "svd_residual", "by_role",
            "accepted", "rejected", "consent_violations", "agency_changes", "contributions", "tokens")
    rounds = [{k: r[k] for k in keep if k in r} for r in result.history if r["round"] > 0]
    return {
        "rounds": rounds,
        "initial": result.history[0],
        "by_role": roles.report()["by_role"],
        "view_candidates": view_candidates(states.states, states.accepted_ranks, cfg),
        "final_adapter": {"bytes": sum(p.stat().st_size for p in exported.path.iterdir()),
                          "max_rank": max(exported.ranks.values()), "mean_rank": float(np.mean(list(exported.ranks.values()))),
                          "residual": exported.residual},
    }


def view_candidates(states: list[dict[str, np.ndarray]], accepted_ranks: list[list[int]], cfg: Any) -> dict[str, Any]:
    """Error and downlink per node per round of each way to give nodes the global ΔW, on the run's own states.

    ``states[t]`` is the global ΔW nodes were sent in round t+1. Bytes count
    float32 factors (the head and keys are the same for every candidate and left out).
    """
    from sentinel.server.aggregation import numerical_rank, svd_factorise

    def rel(err: float, total: float) -> float:
        return float(np.sqrt(err / total)) if total > 0 else 0.0

    ranks = sorted({cfg.profiles[r].lora_rank for r in cfg.roles})
    out: dict[str, list[dict[str, float]]] = {"truncated": [], "exact": [], "stateful_delta": [], "flora_stack": [], "error_feedback": []}
    ef_views = {r: {m: np.zeros_like(d, dtype=np.float64) for m, d in states[0].items()} for r in ranks}
    stacked = 0
    for t, g in enumerate(states[:-1]):
        per_rank_bytes = sum(d.shape[0] + d.shape[1] for d in g.values()) * 4
        total = sum(float(np.sum(d.astype(np.float64) ** 2)) for d in g.values())
        svals = {m: np.linalg.svd(d.astype(np.float64), compute_uv=False) for m, d in g.items()}
        trunc = {r: rel(sum(float(np.sum(s[r:] ** 2)) for s in svals.values()), total) for r in ranks}
        out["truncated"].append({"error_by_rank": trunc, "bytes_by_rank": {r: r * per_rank_bytes for r in ranks}})  # type: ignore[dict-item]
        exact_rank = {m: numerical_rank(s, 1e-6) for m, s in svals.items()}
        out["exact"].append({"error": 0.0, "bytes": sum(k * (g[m].shape[0] + g[m].shape[1]) * 4 for m, k in exact_rank.items()),
                             "max_rank": max(exact_rank.values())})
        prev = states[t - 1] if t else {m: np.zeros_like(d) for m, d in g.items()}
        change = {m: numerical_rank(np.linalg.svd((g[m] - prev[m]).astype(np.float64), compute_uv=False), 1e-6) for m in g}
        out["stateful_delta"].append({"error": 0.0, "bytes": sum(k * (g[m].shape[0] + g[m].shape[1]) * 4 for m, k in change.items())})
        stacked += sum(accepted_ranks[t - 1]) if t else 0
        out["flora_stack"].append({"error": 0.0, "bytes": stacked * per_rank_bytes})
        ef: dict[int, float] = {}
        for r in ranks:  # V ← V + SVD_r(G − V): the coordinator tracks V for every node
            err = 0.0
            for m, d in g.items():
                gap = d.astype(np.float64) - ef_views[r][m]
                f = svd_factorise(gap, r)
                ef_views[r][m] = ef_views[r][m] + f.b.astype(np.float64) @ f.a.astype(np.float64)
                err += float(np.sum((d - ef_views[r][m]) ** 2))
            ef[r] = rel(err, total)
        out["error_feedback"].append({"error_by_rank": ef, "bytes_by_rank": {r: r * per_rank_bytes for r in ranks}})  # type: ignore[dict-item]
    dense = sum(d.size for d in states[0].values()) * 4
    return {"per_round": out, "dense_bytes_per_model": dense,
            "coordinator_memory": {"exact": "global state + one view", "stateful_delta": "global state + last round's change",
                                   "error_feedback": f"one {dense / 1e6:.1f} MB view per node", "truncated": "global state + one view per rank",
                                   "flora_stack": "every accepted factor of the run"}}


# ---------------------------------------------------------------- summary


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Mean ± sd over seeds per setting name."""
    by_name: dict[str, list[dict[str, Any]]] = {}
    for key, res in results.items():
        by_name.setdefault(key.split("@")[0], []).append(res)
    table: dict[str, Any] = {}
    for name, runs in by_name.items():
        best = [max(r["accuracy"] for r in run["rounds"]) for run in runs]
        final = [run["rounds"][-1]["accuracy"] for run in runs]
        row: dict[str, Any] = {
            "seeds": len(runs), "best_mean": float(np.mean(best)), "best_sd": float(np.std(best, ddof=1)) if len(best) > 1 else 0.0,
            "final_mean": float(np.mean(final)), "final_sd": float(np.std(final, ddof=1)) if len(final) > 1 else 0.0,
            "bytes_down_per_round": float(np.mean([r["bytes_down"] for run in runs for r in run["rounds"]])),
            "bytes_up_per_round": float(np.mean([r["bytes_up"] for run in runs for r in run["rounds"]])),
            "round_s": float(np.mean([r["duration_s"] for run in runs for r in run["rounds"]])),
            "view_error_max": max((r.get("svd_residual", 0.0) for run in runs for r in run["rounds"]), default=0.0),
        }
        roles = {role for run in runs for role in run.get("by_role", {})}
        for role in sorted(roles):
            loo = [run["by_role"][role]["loo_mean"] for run in runs if run.get("by_role", {}).get(role, {}).get("loo_mean") is not None]
            share = [run["by_role"][role]["token_share"] for run in runs if run.get("by_role", {}).get(role, {}).get("token_share") is not None]
            row[f"loo_{role}"] = float(np.mean(loo)) if loo else None
            row[f"tokens_{role}"] = float(np.mean(share)) if share else None
        table[name] = row
    return table


def print_table(table: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="heterogeneous federation vs Flower FedAvg-LoRA (accuracy %, mean ± sd over seeds)")
    for col in ("setting", "seeds", "best", "final", "MB down/rd", "MB up/rd", "s/round", "view err", "LOO edge", "LOO gpu", "tokens edge"):
        t.add_column(col)
    fmt = lambda v, f="{:+.4f}": "-" if v is None else f.format(v)  # noqa: E731
    for name, r in table.items():
        t.add_row(name, str(r["seeds"]), f"{100 * r['best_mean']:.2f} ± {100 * r['best_sd']:.2f}",
                  f"{100 * r['final_mean']:.2f} ± {100 * r['final_sd']:.2f}", f"{r['bytes_down_per_round'] / 1e6:.2f}",
                  f"{r['bytes_up_per_round'] / 1e6:.2f}", f"{r['round_s']:.0f}", f"{r['view_error_max']:.1e}",
                  fmt(r.get("loo_edge")), fmt(r.get("loo_gpu")), fmt(r.get("tokens_edge"), "{:.3f}"))
    Console(width=200).print(t)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    for key, res in sorted(results.items()):
        rounds = [0] + [r["round"] for r in res["rounds"]]
        acc = [res["initial"]["accuracy"]] + [r["accuracy"] for r in res["rounds"]]
        ax.plot(rounds, [100 * a for a in acc], marker="o", markersize=3, label=key, linewidth=1.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(bottom=80)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _agency_acted(results: dict[str, Any], seed: int) -> bool:
    """Whether the agency rule changed any head in the chosen design's run (if not, ablating it measures nothing)."""
    run = results.get(f"chosen@{seed}")
    return run is None or any(r.get("agency_changes") for r in run["rounds"])


def _run_in_workers(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    """Run each setting in its own process, ``args.workers`` at a time (one torch thread each); merge their results."""
    import subprocess
    import sys

    parts = args.out / "parts"
    pending, running, merged = list(keys), [], {}
    base = [sys.executable, __file__, "--model", args.model, "--data", args.data, "--rounds", str(args.rounds), "--seeds", args.seeds,
            "--local-epochs", str(args.local_epochs), "--lr", str(args.lr), "--max-length", str(args.max_length),
            "--contribution-examples", str(args.contribution_examples), "--threads", "1", "--workers", "1", "--chosen", args.chosen,
            *(["--ablation-seeds", args.ablation_seeds] if args.ablation_seeds else []),
            *(["--frame-gain", str(args.frame_gain)] if args.frame_gain is not None else []),
            "--frame-gain-schedule", args.frame_gain_schedule,
            *(["--no-validation"] if args.no_validation else [])]
    while pending or running:
        while pending and len(running) < args.workers:
            key = pending.pop(0)
            running.append((key, subprocess.Popen([*base, "--only", key, "--out", str(parts / key.replace("@", "-s"))])))
        time.sleep(5)
        for key, proc in list(running):
            if proc.poll() is not None:
                running.remove((key, proc))
                part = parts / key.replace("@", "-s") / "results.json"
                if proc.returncode == 0 and part.exists():
                    merged.update(json.loads(part.read_text())["results"])
                else:
                    print(f"{key}: failed (exit {proc.returncode})", flush=True)
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--local-epochs", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--contribution-examples", type=int, default=128)
    parser.add_argument("--max-minutes", type=float, default=90.0,
                        help="Start no setting that would end past this many minutes (by the mean time of those run); 0: no limit.")
    parser.add_argument("--chosen", default=CHOSEN, help="Design of the chosen setting (d): a name of server.views.DESIGNS.")
    parser.add_argument("--ablation-seeds", default="", help="Comma-separated seeds of the ablations (default: the first of --seeds).")
    parser.add_argument("--frame-gain", type=float, default=4.0,
                        help="FederationConfig.frame_gain of the frame designs (4: the best of 1, 2, 4 for frame-unit at seed 0).")
    parser.add_argument("--frame-gain-schedule", default="inverse-sqrt", choices=("constant", "inverse-sqrt"),
                        help="FederationConfig.frame_gain_schedule of the frame designs.")
    parser.add_argument("--no-validation", action="store_true", help="Sentinel runs without the validate phase (faster).")
    parser.add_argument("--only", default="", help="Comma-separated setting keys (name@seed) to run; default all.")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-heterogeneous"))
    parser.add_argument("--resume", action="store_true", help="Keep the settings already in results.json.")
    parser.add_argument("--workers", type=int, default=1, help="Settings run in parallel, one process and one torch thread each.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default; 1 on a busy machine).")
    args = parser.parse_args()
    if args.frame_gain is None:
        from sentinel.server.config import FederationConfig

        args.frame_gain = FederationConfig.model_fields["frame_gain"].default
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from sentinel.server.simulate import quiet_flower

    quiet_flower()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    saved = json.loads(path.read_text()) if args.resume and path.exists() else {"results": {}}
    results: dict[str, Any] = saved["results"]
    wanted = set(filter(None, args.only.split(",")))
    ablation_seeds = [int(x) for x in args.ablation_seeds.split(",") if x] or None
    every = settings([int(x) for x in args.seeds.split(",")], args.chosen, ablation_seeds)
    todo = [s for s in every if s.key not in results and (not wanted or s.key in wanted)]
    if args.workers > 1:
        results.update(_run_in_workers(args, [s.key for s in todo]))
        todo = []
    started = time.monotonic()
    skipped: list[str] = []
    for setting in todo:
        spent = [r["seconds"] for r in results.values() if r["setting"]["system"] == setting.system]
        if args.max_minutes and spent and time.monotonic() - started + float(np.mean(spent)) > 60 * args.max_minutes:
            skipped.append(setting.key)
            print(f"{setting.key}: skipped (would not finish within --max-minutes {args.max_minutes})", flush=True)
            continue
        if setting.name == "chosen-no-agency" and not _agency_acted(results, setting.seed):
            print(f"{setting.key}: skipped (no head changed its agency state in chosen@{setting.seed})", flush=True)
            continue
        workdir = args.out / setting.key.replace("@", "-s")
        t0, c0 = time.monotonic(), time.process_time()
        run = run_flower if setting.system == "flower" else run_sentinel
        res = run(args, setting, workdir)
        res["setting"] = setting.__dict__ | {"roles": list(setting.roles)}
        res["seconds"] = time.monotonic() - t0
        res["cpu_seconds"] = time.process_time() - c0  # what the run would take on idle cores, whatever the load
        results[setting.key] = res
        best = max(r["accuracy"] for r in res["rounds"])
        print(f"{setting.key}: best {100 * best:.2f} final {100 * res['rounds'][-1]['accuracy']:.2f} ({res['seconds']:.0f} s)", flush=True)
        summary = {"settings": vars(args) | {"out": str(args.out)}, "results": results, "table": summarise(results),
                   "seconds": saved.get("seconds", 0.0) + time.monotonic() - started}
        tmp = path.with_name("results.json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, default=str))
        tmp.replace(path)
    summary = {"settings": vars(args) | {"out": str(args.out)}, "results": results, "table": summarise(results), "skipped": skipped}
    tmp = path.with_name("results.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(path)
    table = summarise(results)
    print_table(table)
    plot(results, args.out / "accuracy.png")
    print(f"wrote {path} and {args.out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
