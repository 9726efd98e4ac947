"""`sentinel edge ...` commands: run an edge bundle from the command line, and time it.

Mounted by the top-level CLI as ``sentinel edge``. Only the runtime is
imported (onnxruntime, tokenizers), never torch, so the commands start fast
and work on a node installed without torch.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer
from sentinel.models.edge_bundle import BundleError, BundleRunner

app = typer.Typer(help="Run and time edge bundles (ONNX students) with onnxruntime.", no_args_is_help=True)

BUNDLE_OPTION = typer.Option(..., "--bundle", help="Edge bundle directory (with manifest.json).")
THREADS_OPTION = typer.Option(None, "--threads", min=1, help="onnxruntime intra-op threads (default: its choice).")


@app.callback()
def edge_commands() -> None:
    """Run and time edge bundles."""


@dataclass(frozen=True)
class Latency:
    """Wall-clock latency of one batch shape, in milliseconds."""

    batch: int
    tokens: int
    runs: int
    p50_ms: float
    p95_ms: float


def synthetic_feed(runner: BundleRunner, batch: int, tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of `batch` sequences of exactly `tokens` random token ids (no padding), as graph inputs."""
    if batch < 1 or tokens < 1:
        raise ValueError(f"`batch` and `tokens` must be at least 1, got {batch} and {tokens}")
    if tokens > runner.manifest.max_length:
        raise ValueError(f"`tokens` {tokens} exceeds the bundle's max_length {runner.manifest.max_length}")
    rng = np.random.default_rng(seed)
    vocab = runner.tokenizer.get_vocab_size()
    arrays = {
        "input_ids": rng.integers(min(5, vocab - 1), vocab, size=(batch, tokens), dtype=np.int64),
        "attention_mask": np.ones((batch, tokens), dtype=np.int64),
        "token_type_ids": np.zeros((batch, tokens), dtype=np.int64),
    }
    return {name: arrays[name] for name in runner.input_names}


def time_runs(runner: BundleRunner, feed: dict[str, np.ndarray], runs: int, warmup: int = 0) -> list[float]:
    """Milliseconds of each of `runs` timed runs of `feed`, after `warmup` untimed ones."""
    for _ in range(warmup):
        runner.run(feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0-100, linear interpolation) of `values`."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def measure_latency(runner: BundleRunner, batch: int, tokens: int, runs: int = 20, warmup: int = 3) -> Latency:
    """p50 and p95 latency of `runs` runs of a synthetic `batch` x `tokens` input."""
    if runs < 1:
        raise ValueError(f"`runs` must be at least 1, got {runs}")
    times = time_runs(runner, synthetic_feed(runner, batch, tokens), runs, warmup)
    return Latency(batch, tokens, runs, statistics.median(times), percentile(times, 95))


def _open(bundle: Path, threads: int | None) -> BundleRunner:
    try:
        return BundleRunner(bundle, intra_op_threads=threads)
    except BundleError as e:
        typer.echo(f"error: {e.reason}", err=True)
        raise typer.Exit(code=1) from e


@app.command("predict")
def predict_command(
    texts: list[str] = typer.Argument(..., help="Texts to classify."),
    bundle: Path = BUNDLE_OPTION,
    threads: int | None = THREADS_OPTION,
) -> None:
    """Print the label and its probability for each text, one line each: LABEL<TAB>PROBABILITY<TAB>TEXT."""
    runner = _open(bundle, threads)
    for p in runner.predict(texts):
        typer.echo(f"{p.label}\t{p.probability:.4f}\t{p.text}")


@app.command("bench")
def bench_command(
    bundle: Path = BUNDLE_OPTION,
    threads: int | None = THREADS_OPTION,
    tokens: int = typer.Option(64, "--tokens", min=1, help="Tokens per sequence (random ids, no padding)."),
    batch: list[int] = typer.Option([1, 32], "--batch", min=1, help="Batch sizes to time (repeatable)."),
    runs: int = typer.Option(20, "--runs", min=1, help="Timed runs per batch size."),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed runs before timing."),
) -> None:
    """Print the bundle's size and its onnxruntime latency (p50/p95) per batch size."""
    runner = _open(bundle, threads)
    m = runner.manifest
    typer.echo(f"bundle: {bundle} ({m.model_name}, {m.precision}, {m.family})")
    typer.echo(f"size: model {m.model_bytes / 1e6:.2f} MB, bundle {m.total_bytes / 1e6:.2f} MB, {m.num_parameters:,} parameters")
    try:
        results = [measure_latency(runner, b, tokens, runs, warmup) for b in batch]
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from e
    for r in results:
        typer.echo(f"batch {r.batch:>3} x {r.tokens} tokens: p50 {r.p50_ms:.2f} ms, p95 {r.p95_ms:.2f} ms ({r.runs} runs)")
