"""Benchmark: accuracy, onnxruntime latency and size of pruned, narrowed and distilled students.

Not a test. Run from the project root (it takes a while on 2 shared cores):

    nice -n 10 python tests/benchmarks/pruning.py --out runs/pruning

What it does, on ``uci-sentiment:../shared/data/sentiment-labelled-sentences`` with ``minilm``:

1. Teacher: LoRA (rank 8, attention projections + classifier) fine-tuned
   centrally for a short run on a train subset, then merged.
2. Head scores: gradient importance (Michel et al.) on labelled train
   examples; weight magnitude; random (seeded).
3. For each share of heads pruned (0, 20, 40, 60%), accuracy on a held-out
   test subset of:
   (a) importance-pruned heads + FFNs narrowed (activation importance, keep
       ``1 - share`` of the width unless ``--ffn-keep``) + distillation on the
       train texts (unlabelled: soft targets only);
   (b) the same student without distillation;
   (c) heads only, chosen by importance, by magnitude and at random (no FFN
       narrowing, no distillation): the head-selection baselines.
4. Edge bundles (`models.edge_export.export_bundle`) of the teacher and of
   every (a) student, fp32 and int8; their onnxruntime accuracy, size and
   latency (batch 1 and 32, 64 tokens, `--threads` threads). Latency is
   measured round-robin over all bundles (one run of each in turn), so load
   from other processes on a shared machine hits every bundle alike; ratios
   are more trustworthy than absolute numbers.

5. ``--federated`` (on by default; ``--no-federated`` skips it): arm (a) as
   the issue states it, federated plasticity with distillation. One real
   federation through ``server.simulate.simulate`` (the code path of
   ``sentinel simulate``): ``--fed-nodes`` nodes (edge, central, gpu, ...),
   plasticity and distillation on, pruning progressively by consensus
   (``--fed-step`` of the heads every ``--fed-rounds-per-cycle`` rounds, toward
   ``--fed-target``), the central node distilling the pruned student after
   every cycle (FFN narrowed to ``--fed-ffn-keep`` by a policy that lets
   central nodes ``prune`` FFNs). From the run: its report (rows, students),
   the federated teacher (the final global model, all heads, from the
   checkpoint) and every cycle's edge bundle (``<out>/federated/run/edge-bundle/round-N``),
   evaluated by onnxruntime on the same held-out test subset as the other arms
   (a subset of the federation's own held-out set: checked) and timed with them,
   with an int8 copy of each (quantized as ``export_bundle`` does). It adds
   about 8-12 minutes on 2 shared cores (6 rounds); ``heads.png`` of the run
   shows the heads per layer over rounds.

Writes ``results.json``, ``results.md`` (tables, targets, what was cut) and
``pruning.png`` under ``--out``. Every size that was reduced to fit 90 minutes
on 2 cores is printed at the start and recorded under ``cuts``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from sentinel.client.data import Example, holdout_split, load_labelled_dataset
from sentinel.client.edge import evaluate_bundle
from sentinel.models.cli_edge import percentile, synthetic_feed
from sentinel.models.components import model_layout
from sentinel.models.distill_train import distill, with_teacher_logits
from sentinel.models.edge_bundle import BundleRunner, load_bundle
from sentinel.models.edge_export import export_bundle
from sentinel.models.global_model import evaluate_classifier
from sentinel.models.head_selection import head_magnitude, lowest_heads_mask, random_head_scores
from sentinel.models.importance import gradient_importance
from sentinel.models.loading import LoadedModel, load_base_model, seeded
from sentinel.models.lora import attach_lora
from sentinel.models.pruning import count_parameters
from sentinel.models.student import build_student

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = f"uci-sentiment:{(ROOT.parent / 'shared' / 'data' / 'sentiment-labelled-sentences')}"
FULL = {"train": 2540, "test": 450, "teacher_epochs": 3, "distill_epochs": 3, "random_seeds": 3, "latency_runs": 50}
"""What an unhurried run would use; the defaults below are cut to fit 90 minutes on 2 shared cores."""


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="data spec (default: the UCI sentiment folder)")
    p.add_argument("--model", default="minilm")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "pruning")
    p.add_argument("--shares", default="0,0.2,0.4,0.6", help="shares of heads pruned, comma-separated")
    p.add_argument("--ffn-keep", type=float, default=None, help="FFN width kept in (a)/(b) (default: 1 - share)")
    p.add_argument("--train", type=int, default=1200, help="train examples (teacher and distillation texts)")
    p.add_argument("--test", type=int, default=300, help="held-out test examples")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--teacher-epochs", type=float, default=1.5)
    p.add_argument("--teacher-lr", type=float, default=2e-3)
    p.add_argument("--importance-examples", type=int, default=128)
    p.add_argument("--distill-epochs", type=float, default=1.5, help="passes over the train texts per student")
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--random-seeds", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="onnxruntime and torch threads")
    p.add_argument("--tokens", type=int, default=64, help="tokens per sequence for latency")
    p.add_argument("--latency-runs", type=int, default=15, help="timed round-robin rounds per batch size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--federated", action=argparse.BooleanOptionalAction, default=True, help="arm (a) federated: a real federation (default: on)")
    p.add_argument("--fed-nodes", type=int, default=3, help="federation nodes (roles edge, central, then gpu)")
    p.add_argument("--fed-partition", default="iid", help="how the federation splits the data (iid | by-domain | dirichlet)")
    p.add_argument("--fed-rounds-per-cycle", type=int, default=2, help="rounds between pruning cycles (prune_every)")
    p.add_argument("--fed-step", type=float, default=0.21, help="share of all heads one cycle prunes (MiniLM: 15 of 72)")
    p.add_argument("--fed-target", type=float, default=0.62, help="target sparsity (MiniLM: 44 of 72 heads after 3 cycles)")
    p.add_argument("--fed-local-steps", type=int, default=20, help="local steps per node and round")
    p.add_argument("--fed-lr", type=float, default=2e-3, help="nodes' LoRA learning rate")
    p.add_argument("--fed-distill-steps", type=int, default=60, help="distillation steps on the central node per student")
    p.add_argument("--fed-ffn-keep", type=float, default=0.5, help="FFN width the federated students keep (distill_ffn_keep)")
    p.add_argument("--fed-precision", choices=("fp32", "int8"), default="fp32", help="precision of the federation's edge bundles (distill_precision)")
    return p.parse_args()


def _log(start: float, message: str) -> None:
    print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {message}", flush=True)


# ---------------------------------------------------------------- data and batches


def _encode(base: LoadedModel, examples: Sequence[Example], max_length: int, labels: bool) -> dict[str, torch.Tensor]:
    enc = base.tokenizer([e.text for e in examples], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if labels:
        batch["labels"] = torch.tensor([e.label for e in examples])
    return batch


def _length_batches(base: LoadedModel, examples: Sequence[Example], args: argparse.Namespace, labels: bool, seed: int | None) -> list[dict[str, torch.Tensor]]:
    """Batches of similar-length texts (little padding); shuffled in groups of 8 batches when `seed` is given."""
    order = list(range(len(examples)))
    size = args.batch_size
    if seed is None:
        order.sort(key=lambda i: len(examples[i].text))
        groups = [order]
    else:
        random.Random(seed).shuffle(order)
        groups = [sorted(order[i : i + 8 * size], key=lambda j: len(examples[j].text)) for i in range(0, len(order), 8 * size)]
    batches = [_encode(base, [examples[j] for j in g[i : i + size]], args.max_length, labels) for g in groups for i in range(0, len(g), size)]
    if seed is not None:
        random.Random(seed + 1).shuffle(batches)
    return batches


def _subset(examples: list[Example], n: int, seed: int) -> list[Example]:
    if n >= len(examples):
        return examples
    _, kept = holdout_split(examples, n / len(examples), seed=seed)
    return kept


# ---------------------------------------------------------------- teacher


def _teacher(base: LoadedModel, train: list[Example], args: argparse.Namespace, start: float) -> torch.nn.Module:
    peft = attach_lora(base, rank=args.rank, seed=args.seed)
    optimizer = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=args.teacher_lr)
    batches = _length_batches(base, train, args, labels=True, seed=args.seed)
    steps = max(1, int(args.teacher_epochs * len(batches)))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 5) * max(0.05, 1 - s / steps))
    peft.train()
    with seeded(args.seed):
        for step in range(steps):
            batch = batches[step % len(batches)]
            loss = peft(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if (step + 1) % 10 == 0 or step + 1 == steps:
                _log(start, f"teacher step {step + 1}/{steps} loss {float(loss):.3f}")
    return peft.merge_and_unload().eval()


# ---------------------------------------------------------------- students


def _trainable(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight trainable except the embeddings (the merged teacher's copy arrives frozen)."""
    for name, param in model.named_parameters():
        param.requires_grad_(".embeddings." not in f".{name}")
    return model


def _accuracy(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> float:
    return evaluate_classifier(model, batches)[0]


def _build(teacher: torch.nn.Module, mask: np.ndarray, ffn_keep: float, probe: list[dict[str, torch.Tensor]]) -> Any:
    layers = range(teacher.config.num_hidden_layers) if ffn_keep < 1.0 else ()
    return build_student(teacher, mask, ffn_layers=layers, ffn_keep=ffn_keep, batches=probe, multiple_of=16)


def _bundle_row(path: Path, test: list[Example], threads: int) -> dict[str, Any]:
    bundle = load_bundle(path)
    result = evaluate_bundle(BundleRunner(bundle, intra_op_threads=threads), test)
    return {
        "path": str(path),
        "accuracy": result.accuracy,
        "model_bytes": bundle.manifest.model_bytes,
        "parameters": bundle.manifest.num_parameters,
    }


def _latency(paths: dict[str, Path], args: argparse.Namespace, start: float) -> dict[str, dict[str, float]]:
    """p50/p95 latency of each bundle at batch 1 and 32, timed round-robin (one run of each bundle in turn)."""
    runners = {name: BundleRunner(path, intra_op_threads=args.threads) for name, path in paths.items()}
    out: dict[str, dict[str, float]] = {name: {} for name in paths}
    for batch in (1, 32):
        feeds = {name: synthetic_feed(r, batch, args.tokens) for name, r in runners.items()}
        times: dict[str, list[float]] = {name: [] for name in runners}
        for name, runner in runners.items():  # warm-up
            for _ in range(2):
                runner.run(feeds[name])
        for _ in range(args.latency_runs):
            for name, runner in runners.items():
                t0 = time.perf_counter()
                runner.run(feeds[name])
                times[name].append((time.perf_counter() - t0) * 1000)
        for name, values in times.items():
            out[name][f"b{batch}_p50_ms"] = statistics.median(values)
            out[name][f"b{batch}_p95_ms"] = percentile(values, 95)
        _log(start, f"latency batch {batch} done")
    return out


# ---------------------------------------------------------------- (a) federated

FED_FFN_RULE = {"name": "benchmark-central-nodes-narrow-ffns", "match": {"kind": "ffn"}, "grant": {"prune": {"roles": ["central"]}}}
"""Added to the built-in policy for arm (a): central nodes may ``prune`` FFNs (the built-in policy lets no one)."""


def _fed_policy(path: Path) -> Path:
    """The built-in consent policy plus :data:`FED_FFN_RULE`, written to ``path``."""
    import yaml
    from sentinel.governance.policy_file import default_policy_text

    policy = yaml.safe_load(default_policy_text())
    policy["rules"].append(FED_FFN_RULE)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    return path


def _int8_copy(source: Path, target: Path) -> Path:
    """An int8 copy of the fp32 bundle ``source`` in ``target``: its ONNX dynamically quantized as ``export_bundle`` does, manifest rehashed.

    For the federation's students, whose torch weights stay on the central node:
    ``export_bundle(precision="int8")`` quantizes the fp32 ONNX it exports the
    same way (``models.edge_export.quantize_int8``).
    """
    import shutil

    from sentinel.models.edge_bundle import MANIFEST_FILE, BundleFile, sha256_file
    from sentinel.models.edge_export import quantize_int8

    manifest = load_bundle(source).manifest
    if manifest.precision != "fp32":
        raise ValueError(f"{source} is already {manifest.precision}")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    model = target / "model.onnx"
    quantize_int8(source / "model.onnx", model)
    files = tuple(
        BundleFile(path=p.relative_to(target).as_posix(), sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in sorted(target.rglob("*")) if p.is_file() and p.name != MANIFEST_FILE
    )
    updated = manifest.model_copy(update={
        "precision": "int8", "files": files, "model_bytes": model.stat().st_size, "total_bytes": sum(f.bytes for f in files),
    })
    (target / MANIFEST_FILE).write_text(updated.model_dump_json(indent=2), encoding="utf-8")
    load_bundle(target)  # every hash checks
    return target


def _fed_config(args: argparse.Namespace, policy: Path) -> Any:
    """The federation of arm (a): plasticity and distillation on, one pruning cycle every ``--fed-rounds-per-cycle`` rounds."""
    from sentinel.server.config import FederationConfig, RoleProfile

    cycles = math.ceil(args.fed_target / args.fed_step - 1e-9)
    rounds = args.fed_rounds_per_cycle * cycles
    roles = (["edge", "central"] + ["gpu"] * args.fed_nodes)[: args.fed_nodes]
    profile = {"batch_size": 16, "local_steps": args.fed_local_steps, "learning_rate": args.fed_lr}
    return FederationConfig(
        model=args.model, dataset=args.data, partition=args.fed_partition, nodes=args.fed_nodes, roles=roles, rounds=rounds,
        seed=args.seed, patience=rounds, test_fraction=0.15, max_length=args.max_length, policy=str(policy), contribution="none",
        profiles={"edge": RoleProfile(lora_rank=max(1, args.rank // 2), **profile), "gpu": RoleProfile(lora_rank=args.rank, **profile),
                  "central": RoleProfile(lora_rank=args.rank, **profile)},
        plasticity=True, prune_every=args.fed_rounds_per_cycle, prune_step=args.fed_step, target_sparsity=args.fed_target,
        prune_rank_share=0.4, prune_vote_share=0.5, prune_tolerance=1.0,
        distill=True, distill_every=0, distill_steps=args.fed_distill_steps, distill_learning_rate=args.distill_lr,
        distill_temperature=args.temperature, distill_ffn_keep=args.fed_ffn_keep, distill_precision=args.fed_precision,
    )


def _federated(args: argparse.Namespace, test: list[Example], test_batches: list[dict[str, torch.Tensor]], num_labels: int,
               label_names: list[str], start: float) -> tuple[dict[str, Any], dict[str, Path]]:
    """Arm (a): run the federation, then read its teacher, students and bundles (evaluated and timed by the caller)."""
    import shutil

    from rich.console import Console
    from sentinel.client.data.federated import federated_split
    from sentinel.models.global_model import materialise
    from sentinel.server.checkpoints import load_state
    from sentinel.server.simulate import simulate

    root = args.out / "federated"
    out = root / "run"
    if out.exists():
        shutil.rmtree(out)  # a fresh federation, never a resumed one
    config = _fed_config(args, _fed_policy(root / "policy.yaml"))
    split = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    held, trained = {e.text for e in split.test}, {e.text for part in split.partitions for e in part}
    _log(start, f"(a) federated: {config.nodes} nodes {config.roles}, {config.rounds} rounds; simulating into {out}")
    report = simulate(config, out, console=Console(width=120))
    _log(start, "(a) federation done; federated teacher from the checkpoint")
    base = load_base_model(args.model, num_labels=num_labels, seed=args.seed)  # fresh: the central teacher merges LoRA into its base
    state = load_state(out / "checkpoint" / "last")
    teacher = materialise(base, state.deltas, state.head).eval()
    paths = {"fed-teacher-fp32": export_bundle(
        teacher, base.tokenizer, args.out / "bundles" / "fed-teacher-fp32", name=f"{args.model}-federated-teacher",
        labels=label_names, max_length=args.max_length, precision="fp32", model_card={"teacher": "federated global model"},
    )}
    total = int(np.prod(np.shape(report["plasticity"]["importance"]["values"])))
    students = []
    for s in report["students"]["distilled"]:
        share = len(s["pruned_heads"]) / total
        entry: dict[str, Any] = {"round": s["round"], "share": share, "heads_pruned": len(s["pruned_heads"])}
        if not s.get("bundle"):
            students.append(entry | {"rejected": s.get("rejected")})
            continue
        name = f"fed-r{s['round']}-{int(round(100 * share))}-{s['precision']}"
        paths[name] = out / s["bundle"]
        extra = {}
        if s["precision"] == "fp32":  # and its int8 copy, as the other arms export both
            int8 = name.removesuffix("fp32") + "int8"
            paths[int8] = _int8_copy(out / s["bundle"], args.out / "bundles" / int8)
            extra = {"bundle_int8": int8}
        students.append(entry | extra | {
            "bundle": name, "ffn_widths": s["ffn_widths"], "kl_before": s["kl_before"], "kl_after": s["kl_after"],
            "central_student_accuracy": s["student_accuracy"], "central_teacher_accuracy": s["teacher_accuracy"],
            "student_parameters": s["student_parameters"], "teacher_parameters": s["teacher_parameters"],
            "coordinator_latency_ms": s["latency_ms"], "steps": s["steps"], "reverted": s["reverted"],
        })
    section = {
        "settings": json.loads(config.model_dump_json()) | {"policy_rule_added": FED_FFN_RULE},
        "out": str(out),
        "test_in_federation_holdout": sum(e.text in held for e in test) / len(test),
        "test_texts_in_node_partitions": sum(e.text in trained for e in test),
        "teacher": {"accuracy": _accuracy(teacher, test_batches), "round": state.round, "heads": "all (base + final global ΔW)"},
        "rows": [{k: r.get(k) for k in ("round", "accuracy", "loss", "pruned_heads", "sparsity", "heads_per_layer")} for r in report["rounds"]],
        "students": students,
        "heads_png": str(out / "heads.png"),
    }
    _log(start, f"(a) federated teacher accuracy {section['teacher']['accuracy']:.3f}; {len(paths) - 1} student bundle(s)")
    return section, paths


def _fed_markdown(report: dict[str, Any]) -> list[str]:
    fed = report.get("federated")
    if not fed:
        return []
    ref, base = report["bundles"]["fed-teacher-fp32"], report["bundles"]["teacher-fp32"]
    lines = [
        "", "## (a) federated plasticity with distillation", "",
        f"One federation (`server.simulate`): {fed['settings']['nodes']} nodes {fed['settings']['roles']}, {fed['settings']['rounds']} rounds, "
        f"{fed['settings']['partition']} split, a pruning cycle every {fed['settings']['prune_every']} rounds toward "
        f"{fed['settings']['target_sparsity']:.0%}, the central node distilling each cycle's student ({fed['settings']['distill_steps']} steps, "
        f"FFN kept {fed['settings']['distill_ffn_keep']:.0%}). Federated teacher (final global model, all heads): torch "
        f"{fed['teacher']['accuracy']:.3f}, onnxruntime {ref['accuracy']:.3f} on the test subset "
        f"({fed['test_in_federation_holdout']:.0%} of it in the federation's held-out set; {fed['test_texts_in_node_partitions']} of its texts "
        f"also occur in node partitions). Speed-up and size against the unpruned fp32 bundle (`teacher-fp32`); heads per layer: `{fed['heads_png']}`.",
        "",
        "| round | heads pruned | FFN widths | bundle: student (ort, test) | Δ vs fed teacher | central node: student / teacher | KL before → after | params | size vs fp32 | b1 speed-up | b32 speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in fed["students"]:
        if "bundle" not in s:
            lines.append(f"| {s['round']} | {s['share']:.0%} ({s['heads_pruned']}) | rejected: {s.get('rejected')} | | | | | | | | |")
            continue
        widths = sorted(set(s["ffn_widths"].values())) or "full"
        for key in ("bundle", "bundle_int8"):
            if key not in s:
                continue
            b = report["bundles"][s[key]]
            lines.append(
                f"| {s['round']} | {s['share']:.0%} ({s['heads_pruned']}) | {widths} | {s[key]}: {b['accuracy']:.3f} | "
                f"{100 * (b['accuracy'] - ref['accuracy']):+.1f} pt | "
                f"{s['central_student_accuracy']:.3f} / {s['central_teacher_accuracy']:.3f} | {s['kl_before']:.3f} → {s['kl_after']:.3f} | "
                f"{b['parameters']:,} | {b['model_bytes'] / base['model_bytes']:.0%} | {base['b1_p50_ms'] / b['b1_p50_ms']:.2f}x | "
                f"{base['b32_p50_ms'] / b['b32_p50_ms']:.2f}x |"
            )
    lines += ["", "Rounds (coordinator's held-out set, the global model with the round's head mask):", "",
              "| round | accuracy | heads pruned | live heads per layer |", "|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['accuracy']:.3f} | {r['pruned_heads']} | {r['heads_per_layer']} |" for r in fed["rows"]]
    return lines


def _fed_targets(report: dict[str, Any]) -> list[str]:
    fed = report.get("federated")
    if not fed:
        return ["(a) federated: not run (--no-federated)"]
    ref, base = report["bundles"]["fed-teacher-fp32"], report["bundles"]["teacher-fp32"]
    done = [(s, report["bundles"][s["bundle"]]) for s in fed["students"] if "bundle" in s]
    ok = [s for s, b in done if s["share"] >= 0.4 and b["accuracy"] >= ref["accuracy"] - 0.01]
    both = [(s | {"bundle": s[k]}, report["bundles"][s[k]]) for s in fed["students"] for k in ("bundle", "bundle_int8") if k in s]
    best = max((b["accuracy"] for s, b in done if s["share"] >= 0.4), default=None)
    out = [
        "(a) federated: ≥40% heads pruned with ≤1 point loss after distillation (vs the federated teacher, onnxruntime): "
        + (f"MET (at {max(s['share'] for s in ok):.0%})" if ok else f"MISSED (best at ≥40%: {best:.3f} vs {ref['accuracy']:.3f})" if best is not None
           else "MISSED (no student at ≥40%)")
    ]
    hits = [
        s["bundle"] for s, b in both
        if base["b1_p50_ms"] / b["b1_p50_ms"] >= 2 and base["b32_p50_ms"] / b["b32_p50_ms"] >= 2
        and b["model_bytes"] <= 0.4 * base["model_bytes"] and b["accuracy"] >= ref["accuracy"] - 0.01
    ]
    out.append("(a) federated edge bundle ≥2x faster at batch 1 and 32, ≤40% of the size, ≤1 point loss: "
               + (f"MET by {', '.join(hits)}" if hits else "MISSED (see the (a) federated table)"))
    return out


# ---------------------------------------------------------------- report


def _markdown(report: dict[str, Any]) -> str:
    ref = report["teacher"]
    lines = [
        f"# Pruning benchmark: {report['model']} on {report['data_name']}",
        "",
        f"Teacher (LoRA r={report['settings']['rank']}, merged): torch accuracy {ref['accuracy']:.3f}; "
        f"{report['sizes']['train']} train / {report['sizes']['test']} test examples; {report['threads']} threads, "
        f"batch 1 and 32 x {report['settings']['tokens']} tokens; total {report['minutes']:.0f} min.",
        "",
        "## Accuracy (torch) vs share of heads pruned",
        "",
        "| heads pruned | (a) imp + FFN + distil | (b) imp + FFN | (c) imp heads only | (c) magnitude | (c) random | FFN kept | KL before → after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        kl = f"{row['kl_before']:.3f} → {row['kl_after']:.3f}" if not math.isnan(row["kl_before"]) else "–"
        lines.append(
            f"| {row['share']:.0%} ({row['heads_pruned']}) | {row['a_distilled']:.3f} | {row['b_no_distill']:.3f} | "
            f"{row['c_importance']:.3f} | {row['c_magnitude']:.3f} | {row['c_random']:.3f} | {row['ffn_keep']:.0%} | {kl} |"
        )
    lines += [
        "",
        "## Edge bundles (onnxruntime): accuracy, size, latency",
        "",
        "| bundle | accuracy | Δ vs teacher fp32 | params | size MB | size vs fp32 | b1 p50 ms | b1 speed-up | b32 p50 ms | b32 speed-up | b1 p95 | b32 p95 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = report["bundles"]["teacher-fp32"]
    for name, b in report["bundles"].items():
        lines.append(
            f"| {name} | {b['accuracy']:.3f} | {100 * (b['accuracy'] - base['accuracy']):+.1f} pt | {b['parameters']:,} | "
            f"{b['model_bytes'] / 1e6:.1f} | {b['model_bytes'] / base['model_bytes']:.0%} | {b['b1_p50_ms']:.1f} | "
            f"{base['b1_p50_ms'] / b['b1_p50_ms']:.2f}x | {b['b32_p50_ms']:.0f} | {base['b32_p50_ms'] / b['b32_p50_ms']:.2f}x | "
            f"{b['b1_p95_ms']:.1f} | {b['b32_p95_ms']:.0f} |"
        )
    lines += _fed_markdown(report)
    lines += ["", "## Targets", ""] + [f"- {t}" for t in report["targets"]]
    lines += ["", "## Cut to fit the time budget", ""] + [f"- {c}" for c in report["cuts"]]
    return "\n".join(lines) + "\n"


def _targets(report: dict[str, Any]) -> list[str]:
    teacher = report["teacher"]["accuracy"]
    out = []
    ok = [r for r in report["rows"] if r["share"] >= 0.4 and r["a_distilled"] >= teacher - 0.01]
    best = max((r for r in report["rows"] if r["share"] >= 0.4), key=lambda r: r["a_distilled"], default=None)
    out.append(
        f"≥40% heads pruned with ≤1 point loss after distillation: {'MET' if ok else 'MISSED'} "
        + (f"(at {max(r['share'] for r in ok):.0%})" if ok else f"(best at ≥40%: {best['a_distilled']:.3f} vs teacher {teacher:.3f})" if best else "")
    )
    base = report["bundles"]["teacher-fp32"]
    hits = []
    for name, b in report["bundles"].items():
        if name.startswith(("teacher", "fed-")):
            continue
        fast = base["b1_p50_ms"] / b["b1_p50_ms"] >= 2 and base["b32_p50_ms"] / b["b32_p50_ms"] >= 2
        small = b["model_bytes"] <= 0.4 * base["model_bytes"]
        accurate = b["accuracy"] >= base["accuracy"] - 0.01
        if fast and small and accurate:
            hits.append(name)
    out.append(
        "edge bundle ≥2x faster at batch 1 and 32, ≤40% of the size, ≤1 point accuracy loss (onnxruntime): "
        + (f"MET by {', '.join(hits)}" if hits else "MISSED (see the bundle table for which of speed, size, accuracy fell short)")
    )
    return out + _fed_targets(report)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    shares = [100 * r["share"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, label in [("a_distilled", "(a) importance + FFN + distil"), ("b_no_distill", "(b) importance + FFN"),
                       ("c_importance", "(c) importance, heads only"), ("c_magnitude", "(c) magnitude"), ("c_random", "(c) random")]:
        left.plot(shares, [r[key] for r in rows], marker="o", label=label)
    fed = report.get("federated")
    if fed:
        done = [s for s in fed["students"] if "bundle" in s]
        left.plot([0.0] + [100 * s["share"] for s in done],
                  [report["bundles"]["fed-teacher-fp32"]["accuracy"]] + [report["bundles"][s["bundle"]]["accuracy"] for s in done],
                  marker="D", color="black", label="(a) federated + distil (ort)")
    left.axhline(report["teacher"]["accuracy"] - 0.01, color="grey", linestyle=":", label="teacher − 1 pt")
    left.set(xlabel="heads pruned (%)", ylabel="test accuracy", title="accuracy vs heads pruned")
    left.legend(fontsize=8)
    base = report["bundles"]["teacher-fp32"]
    for precision, marker in (("fp32", "o"), ("int8", "s")):
        names = [f"a-{int(round(100 * r['share']))}-{precision}" for r in rows]
        names = [n if n in report["bundles"] else f"teacher-{precision}" for n in names]
        for batch, style in (("b1", "-"), ("b32", "--")):
            right.plot(shares, [base[f"{batch}_p50_ms"] / report["bundles"][n][f"{batch}_p50_ms"] for n in names],
                       linestyle=style, marker=marker, label=f"{precision}, batch {batch[1:]}")
    right.axhline(2.0, color="grey", linestyle=":", label="target 2x")
    right.set(xlabel="heads pruned (%)", ylabel="speed-up vs teacher fp32", title="onnxruntime speed-up (p50)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------- main


def main() -> None:  # noqa: PLR0915 - one script, read top to bottom
    args = _args()
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    shares = [float(s) for s in args.shares.split(",")]
    cuts = [
        f"train examples {args.train} of {FULL['train']} (teacher and distillation texts)",
        f"test examples {args.test} of {FULL['test']} (stratified by domain and label)",
        f"teacher: {args.teacher_epochs} epochs (full: {FULL['teacher_epochs']})",
        f"distillation: {args.distill_epochs} epochs per student (full: {FULL['distill_epochs']}); embeddings frozen",
        f"random baseline: {args.random_seeds} seed(s) (full: {FULL['random_seeds']})",
        f"latency: {args.latency_runs} round-robin runs per bundle and batch size (full: {FULL['latency_runs']})",
        f"gradient importance on {args.importance_examples} train examples",
        "heads-only (c) students are evaluated in torch only (not exported or timed)",
    ]
    if args.federated:
        cuts += [
            f"(a) federated: {args.fed_nodes} nodes, {args.fed_rounds_per_cycle} rounds per pruning cycle, {args.fed_local_steps} local steps "
            f"of 16 per node and round, {args.fed_distill_steps} distillation steps per student; contribution scoring off",
            "(a) federated: one progressive run (each cycle's student recorded) instead of one run per share; prune_tolerance 1.0 "
            "(no revert/regrowth gate, so every share is reached and measured); one FFN width for every student",
        ]
    print("Cut to fit 90 minutes on 2 shared cores:\n  " + "\n  ".join(cuts), flush=True)

    dataset = load_labelled_dataset(args.data, seed=args.seed)
    pool, test_all = holdout_split(dataset.examples, 0.15, seed=args.seed)
    train, test = _subset(pool, args.train, args.seed), _subset(test_all, args.test, args.seed + 1)
    base = load_base_model(args.model, num_labels=len(dataset.label_names), seed=args.seed)
    tokenizer = base.tokenizer
    test_batches = _length_batches(base, test, args, labels=True, seed=None)
    _log(start, f"data: {len(train)} train, {len(test)} test; teacher training")

    fed_section, fed_paths = (None, {})
    if args.federated:
        fed_section, fed_paths = _federated(args, test, test_batches, len(dataset.label_names), list(dataset.label_names), start)

    teacher = _teacher(base, train, args, start)
    teacher_params = count_parameters(teacher)
    report: dict[str, Any] = {
        "model": args.model, "data": args.data, "data_name": Path(args.data.split(":", 1)[1]).name,
        "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
        "sizes": {"train": len(train), "test": len(test)}, "threads": args.threads, "cuts": cuts,
        "onnxruntime": ort.__version__, "torch": torch.__version__, "machine": platform.machine(),
        "teacher": {"accuracy": _accuracy(teacher, test_batches), "parameters": teacher_params}, "rows": [], "bundles": {},
        "federated": fed_section,
    }
    _log(start, f"teacher accuracy {report['teacher']['accuracy']:.3f}; head scores")

    labelled = _length_batches(base, train[: args.importance_examples], args, labels=True, seed=args.seed)
    scores = {"importance": gradient_importance(teacher, labelled), "magnitude": head_magnitude(teacher)}
    probe = [{k: v for k, v in b.items() if k != "labels"} for b in labelled]
    distill_batches = with_teacher_logits(teacher, _length_batches(base, train, args, labels=False, seed=args.seed + 2))
    held = with_teacher_logits(teacher, [{k: v for k, v in b.items() if k != "labels"} for b in test_batches[::3]])
    _log(start, "teacher logits ready")

    bundle_dir = args.out / "bundles"
    card = {"teacher": f"{args.model} + LoRA r={args.rank}", "data": report["data_name"]}
    paths: dict[str, Path] = {}
    for precision in ("fp32", "int8"):
        paths[f"teacher-{precision}"] = export_bundle(
            teacher, tokenizer, bundle_dir / f"teacher-{precision}", name=f"{args.model}-teacher",
            labels=dataset.label_names, max_length=args.max_length, precision=precision, model_card=card,
        )
    _log(start, "teacher bundles exported")

    layout = model_layout(teacher)
    for share in shares:
        ffn_keep = args.ffn_keep if args.ffn_keep is not None else 1.0 - share
        mask = lowest_heads_mask(scores["importance"], share)
        row: dict[str, Any] = {"share": share, "heads_pruned": int((mask == 0).sum()), "ffn_keep": ffn_keep}
        heads_only = {"importance": mask, "magnitude": lowest_heads_mask(scores["magnitude"], share)}
        for name, m in heads_only.items():
            row[f"c_{name}"] = _accuracy(build_student(teacher, m).model, test_batches) if share > 0 else report["teacher"]["accuracy"]
        randoms = [
            _accuracy(build_student(teacher, lowest_heads_mask(random_head_scores(layout, args.seed + s), share)).model, test_batches)
            for s in range(args.random_seeds)
        ] if share > 0 else [report["teacher"]["accuracy"]]
        row["c_random"] = float(np.mean(randoms))
        row["c_random_all"] = randoms
        if share == 0 and ffn_keep >= 1.0:
            row.update(b_no_distill=report["teacher"]["accuracy"], a_distilled=report["teacher"]["accuracy"], kl_before=math.nan, kl_after=math.nan)
            report["rows"].append(row)
            _log(start, f"share {share:.0%}: the teacher itself")
            continue
        student = _build(teacher, mask, ffn_keep, probe)
        row["b_no_distill"] = _accuracy(student.model, test_batches)
        row["student_parameters"] = student.params_after
        row["spec"] = student.spec.model_dump(mode="json")
        _log(start, f"share {share:.0%}: heads-only and undistilled students evaluated; distilling")
        steps = max(1, int(args.distill_epochs * len(distill_batches)))
        result = distill(
            teacher, _trainable(student.model), distill_batches, steps=steps, lr=args.distill_lr,
            temperature=args.temperature, held_out=held, seed=args.seed,
            on_step=lambda s, loss: _log(start, f"  distil step {s}/{steps} loss {loss:.4f}") if s % 20 == 0 else None,
        )
        row.update(a_distilled=_accuracy(result.student, test_batches), kl_before=result.kl_before, kl_after=result.kl_after, distill_steps=steps)
        report["rows"].append(row)
        _log(start, f"share {share:.0%}: (a) {row['a_distilled']:.3f} (b) {row['b_no_distill']:.3f} (c) {row['c_importance']:.3f}; exporting")
        for precision in ("fp32", "int8"):
            name = f"a-{int(round(100 * share))}-{precision}"
            paths[name] = export_bundle(
                result.student, tokenizer, bundle_dir / name, name=f"{args.model}-student-{int(round(100 * share))}",
                labels=dataset.label_names, max_length=args.max_length, precision=precision, model_card=card,
                teacher_parameters=teacher_params,
            )
    paths.update(fed_paths)
    _log(start, "bundles exported; onnxruntime accuracy")
    for name, path in paths.items():
        report["bundles"][name] = _bundle_row(path, test, args.threads)
    for name, timing in _latency(paths, args, start).items():
        report["bundles"][name].update(timing)
    report["minutes"] = (time.perf_counter() - start) / 60
    report["targets"] = _targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    (args.out / "results.md").write_text(_markdown(report))
    _plot(report, args.out / "pruning.png")
    print(_markdown(report), flush=True)
    _log(start, f"written: {args.out / 'results.json'}, results.md, pruning.png")


if __name__ == "__main__":
    main()
