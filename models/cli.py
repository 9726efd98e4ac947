"""`sentinel models ...` commands."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table
from sentinel.models.components import attention_modules, list_components, model_layout
from sentinel.models.exceptions import ModelError
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.presets import preset_names
from sentinel.protos.vocabulary import ffn_id, head_id

app = typer.Typer(help="models commands.", no_args_is_help=True)


@app.callback()
def models_commands() -> None:
    """Inspect base models and export them."""


class TaskChoice(str, Enum):
    """The tasks a base model can be loaded for."""

    classification = "classification"
    causal_lm = "causal-lm"


def _parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, attention projection parameters: q, k, v, o weights and biases)."""
    params = dict(model.named_parameters())
    names = {
        name
        for part in attention_modules(model)
        for proj in (part.q, part.k, part.v, part.o)
        for name in (proj.weight_name, proj.bias_name)
        if name is not None
    }
    return sum(p.numel() for p in model.parameters()), sum(params[n].numel() for n in names)


def _summary_table(base: LoadedModel) -> Table:
    """Family, geometry and parameter counts of a loaded model."""
    layout = model_layout(base.model)
    total, attention = _parameter_counts(base.model)
    table = Table(title=f"model {base.name}", show_header=False)
    table.add_column("property", style="bold")
    table.add_column("value")
    rows = {
        "family": layout.family,
        "task": base.task,
        "layers": str(layout.num_layers),
        "heads": str(layout.num_heads),
        "kv heads": str(layout.num_kv_heads),
        "head dim": str(layout.head_dim),
        "hidden": str(layout.hidden_size),
        "total parameters": f"{total:,}",
        "attention parameters": f"{attention:,}",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _components_table(base: LoadedModel) -> Table:
    """The component ids, one row per layer (its heads and ffn), plus embeddings and the task head."""
    layout = model_layout(base.model)
    components = list_components(base.model)
    table = Table(title="components", caption="ids: layer.{i}.head.{j}, layer.{i}.ffn")
    table.add_column("layer")
    table.add_column("heads (j in layer.{i}.head.{j})")
    table.add_column("ffn")
    table.add_row("-", components[0], "")
    for layer in range(layout.num_layers):
        heads = " ".join(str(j) for j in range(layout.num_heads) if head_id(layer, j) in components)
        table.add_row(str(layer), heads, ffn_id(layer))
    if components[-1] in ("classifier", "lm_head"):
        table.add_row("-", components[-1], "")
    return table


@app.command("inspect")
def inspect_model(
    model: str = typer.Argument(..., help=f"Preset ({', '.join(preset_names())}), local directory or Hugging Face id."),
    task: TaskChoice = typer.Option(TaskChoice.classification, "--task", help="Head to load the model with."),
) -> None:
    """Show a model's family, attention geometry, parameter counts and component ids.

    MODEL is a preset (tiny-bert, tiny-gpt2, tiny-llama, minilm), a local
    directory saved with `save_pretrained`, or a Hugging Face id. Nothing is
    downloaded for presets; minilm reads the files of the `demo` extra.
    """
    console = Console()
    try:
        base = load_base_model(model, task=task.value)
        summary, components = _summary_table(base), _components_table(base)
    except ModelError as e:
        console.print(f"[red]error:[/red] {e.reason}")
        raise typer.Exit(code=1) from e
    console.print(summary)
    console.print(components)


# ---------------------------------------------------------------- export-onnx

PROBE_SENTENCES = [
    "the model should read this sentence the same way after export",
    "short one",
    "a third, slightly longer probe sentence with punctuation!",
]
"""Texts `export-onnx` runs through torch and onnxruntime to report the logit difference."""


@app.command("export-onnx")
def export_onnx_command(
    model: str = typer.Argument(..., help="Preset name, local model directory or Hugging Face id."),
    out: Path = typer.Option(..., "--out", help="Where to write the .onnx file (its tokenizer goes beside it)."),
    adapter: Path | None = typer.Option(None, "--adapter", help="PEFT LoRA adapter directory to merge."),
    head_mask: Path | None = typer.Option(
        None, "--head-mask", help="Head-mask JSON ({num_layers, num_heads, mask} or {pruned}); masked heads are pruned."
    ),
    num_labels: int = typer.Option(2, "--num-labels", help="Classifier labels (must match the adapter's head)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's choice)."),
) -> None:
    """Export a classifier to ONNX with its adapter merged and masked heads pruned, and check it.

    Prints the written path, the parameter count after and before pruning, and
    the largest |logit| difference between onnxruntime and torch on a few probe
    sentences.
    """
    import numpy as np
    from sentinel.models.onnx_export import ADAPTER_CONTRACTS_FILE, OnnxClassifier, export_onnx, prepare_for_export
    from sentinel.models.pruning import count_parameters

    console = Console(stderr=True)
    try:
        with console.status(f"Loading {model}…"):
            base = load_base_model(model, task="classification", num_labels=num_labels)
            params_before = count_parameters(base.model)
            prepared = prepare_for_export(base.model, adapter_dir=adapter, head_mask=head_mask)
        with console.status(f"Exporting to {out}…"):
            # Consent contracts saved with the adapter travel into the ONNX metadata.
            contracts = adapter / ADAPTER_CONTRACTS_FILE if adapter is not None else None
            metadata = {"consent_contracts": contracts.read_text()} if contracts and contracts.is_file() else None
            path = export_onnx(prepared, base.tokenizer, out, opset=opset, name=model, metadata=metadata)
        with console.status("Comparing onnxruntime with torch…"):
            encoded = base.tokenizer(PROBE_SENTENCES, padding=True, truncation=True, return_tensors="pt")
            with torch.no_grad():
                reference = prepared(**encoded).logits.numpy()
            got = OnnxClassifier(path, tokenizer=base.tokenizer).logits(PROBE_SENTENCES)
    except (ModelError, ValueError, OSError) as e:
        console.print(f"[red]error:[/red] {getattr(e, 'reason', e)}")
        raise typer.Exit(code=1) from e
    typer.echo(f"path: {path}")
    typer.echo(f"parameters: {count_parameters(prepared)} (before pruning: {params_before})")
    typer.echo(f"max |logit diff| vs torch: {float(np.abs(got - reference).max()):.3g}")
    if metadata:
        typer.echo(f"consent contracts: embedded from {contracts}")
