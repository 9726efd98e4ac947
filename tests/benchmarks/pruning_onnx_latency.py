"""Benchmark: parameter count and onnxruntime latency of a model, unpruned vs half its heads pruned.

Not a test. Run:

    python tests/benchmarks/pruning_onnx_latency.py --model minilm --out runs/pruning_onnx_latency.json

Half the heads of every layer are pruned, chosen as every other head (odd head
ids), a fixed pattern that needs no data; the point is the cost of the
remaining network, not its accuracy. Both variants are exported to ONNX
(`models.onnx_export.export_onnx`) and timed with onnxruntime on CPU: a batch
of `--batch` sequences of `--tokens` tokens (random ids, no padding), median
wall time of `--runs` runs after `--warmup` runs, intra-op threads = the cores
this process may use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table
from sentinel.models.components import model_layout
from sentinel.models.head_mask import mask_of_pruned
from sentinel.models.loading import load_base_model
from sentinel.models.onnx_export import META_PARAMETERS, OnnxClassifier, export_onnx, read_metadata


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _inputs(input_names: list[str], vocab_size: int, batch: int, tokens: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {"input_ids": rng.integers(5, vocab_size, size=(batch, tokens), dtype=np.int64)}
    feed["attention_mask"] = np.ones((batch, tokens), dtype=np.int64)
    if "token_type_ids" in input_names:
        feed["token_type_ids"] = np.zeros((batch, tokens), dtype=np.int64)
    return feed


def _median_latency_ms(path: Path, args: argparse.Namespace, vocab_size: int, threads: int) -> float:
    classifier = OnnxClassifier(path, intra_op_threads=threads)
    feed = _inputs(classifier.input_names, vocab_size, args.batch, args.tokens, args.seed)
    for _ in range(args.warmup):
        classifier.session.run(["logits"], feed)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        classifier.session.run(["logits"], feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", help="preset, local directory or Hugging Face id")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    console = Console()
    threads = _cores()
    base = load_base_model(args.model)
    layout = model_layout(base.model)
    pattern = {layer: list(range(1, layout.num_heads, 2)) for layer in range(layout.num_layers)}
    vocab_size = int(base.model.config.vocab_size)

    masks = {"unpruned": None, "half heads pruned": mask_of_pruned(pattern, layout)}
    results: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, mask in masks.items():
            with console.status(f"exporting {label}…"):
                path = export_onnx(base.model, base.tokenizer, Path(tmp) / f"{label.replace(' ', '_')}.onnx", head_mask=mask)
            with console.status(f"timing {label}…"):
                latency = _median_latency_ms(path, args, vocab_size, threads)
            results[label] = {
                "parameters": int(read_metadata(path)[META_PARAMETERS]),
                "onnx_file_bytes": path.stat().st_size,
                "median_latency_ms": round(latency, 3),
            }

    table = Table(title=f"{args.model}: batch {args.batch} x {args.tokens} tokens, onnxruntime CPU, {threads} threads")
    for column in ("variant", "parameters", "ONNX file (MB)", f"median latency (ms, {args.runs} runs)"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for label, row in results.items():
        table.add_row(
            label, f"{row['parameters']:,}", f"{row['onnx_file_bytes'] / 1e6:.1f}", f"{row['median_latency_ms']:.1f}"
        )
    console.print(table)
    speedup = results["unpruned"]["median_latency_ms"] / results["half heads pruned"]["median_latency_ms"]
    console.print(f"pruned heads: every other head (odd ids) in each of {layout.num_layers} layers; speed-up x{speedup:.2f}")

    if args.out is not None:
        report = {
            "model": args.model,
            "layout": {"layers": layout.num_layers, "heads": layout.num_heads, "head_dim": layout.head_dim},
            "pruned_heads": {str(k): v for k, v in pattern.items()},
            "selection": "every other head (odd head ids) per layer",
            "batch": args.batch,
            "tokens": args.tokens,
            "runs": args.runs,
            "warmup": args.warmup,
            "intra_op_threads": threads,
            "onnxruntime": ort.__version__,
            "machine": platform.machine(),
            "results": results,
            "speedup": round(speedup, 3),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        console.print(f"written: {args.out}")


if __name__ == "__main__":
    main()
