"""LoRA adapters through PEFT: attach, export/import as arrays, save/load, pair keys.

Adapter arrays use PEFT's saved key format (``get_peft_model_state_dict``, no
adapter name), e.g. ``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight``.
These keys are the wire format between nodes and coordinator. The
classification head (bert ``classifier``, gpt2/llama ``score``) is a PEFT
``modules_to_save`` entry, so it trains and travels with the adapter under keys
such as ``base_model.model.classifier.weight``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from sentinel.models.components import task_head_component
from sentinel.models.exceptions import AdapterError
from sentinel.models.fileio import write_dir_atomically
from sentinel.models.loading import Family, LoadedModel, Task, family_of, seeded

PEFT_PREFIX = "base_model.model."

DEFAULT_TARGETS: dict[Family, list[str]] = {
    # `attention.output.dense` (not `output.dense`): the FFN output is also `output.dense`.
    "bert": ["query", "key", "value", "attention.output.dense"],
    # `attn.c_proj` (not `c_proj`): the MLP output is `mlp.c_proj`.
    "gpt2": ["attn.c_attn", "attn.c_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
}
"""Attention projections q, k, v, o per family: the modules LoRA adapts by default."""

HEAD_MODULES: dict[Family, str] = {"bert": "classifier", "gpt2": "score", "llama": "score"}
"""Name of the classification head module per family (the `classifier` component)."""

_LORA_KEY_RE = re.compile(r"(?P<path>.+)\.lora_(?P<which>[AB])\.weight")


@dataclass(frozen=True)
class LoraPair:
    """The keys of one adapted module's LoRA factors: A is (rank, in), B is (out, rank)."""

    a_key: str
    b_key: str


def _model_and_task(base: LoadedModel | torch.nn.Module) -> tuple[torch.nn.Module, Task]:
    """The module to adapt and its task (inferred from its head for a bare module)."""
    if isinstance(base, LoadedModel):
        return base.model, base.task
    head = task_head_component(base)
    return base, "causal-lm" if head == "lm_head" else "classification"


def attach_lora(
    base: LoadedModel | torch.nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: list[str] | None = None,
    train_head: bool = True,
    seed: int = 0,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
) -> PeftModel:
    """Wrap a base model with a fresh LoRA adapter (PEFT); the base module is modified in place.

    `alpha` defaults to ``2 * rank`` (scaling 2). `targets` defaults to the
    family's attention projections (`DEFAULT_TARGETS`). For classification
    with `train_head`, the head goes into ``modules_to_save`` (listed once) so
    it trains and is part of the adapter; otherwise it stays frozen. A is
    initialised under `seed` (B starts at zero, so the wrapped model computes
    what the base did). GPT-2's Conv1D layers get ``fan_in_fan_out=True``.

    `rank_pattern` / `alpha_pattern` give single modules their own rank and
    alpha, keyed by base-model module path (``bert.encoder.layer.0.attention.self.query``);
    the paths are matched exactly (escaped for PEFT's regular-expression keys).
    """
    if rank < 1:
        raise ValueError(f"`rank` must be at least 1, got {rank}")
    if alpha is not None and alpha <= 0:
        raise ValueError(f"`alpha` must be positive, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1), got {dropout}")
    if isinstance(base, PeftModel):
        raise ValueError("`base` is already a PeftModel; attach LoRA to the plain base model")
    model, task = _model_and_task(base)
    family = family_of(model)
    with_head = task == "classification" and train_head
    task_type = "SEQ_CLS" if with_head else "CAUSAL_LM" if task == "causal-lm" else None
    for path, r in (rank_pattern or {}).items():
        if r < 1:
            raise ValueError(f"`rank_pattern[{path!r}]` must be at least 1, got {r}")
    config = LoraConfig(
        r=rank,
        lora_alpha=float(2 * rank if alpha is None else alpha),
        lora_dropout=dropout,
        target_modules=list(targets or DEFAULT_TARGETS[family]),
        fan_in_fan_out=family == "gpt2",
        modules_to_save=[HEAD_MODULES[family]] if with_head else None,
        task_type=task_type,
        rank_pattern={re.escape(k): int(v) for k, v in (rank_pattern or {}).items()},
        alpha_pattern={re.escape(k): float(v) for k, v in (alpha_pattern or {}).items()},
    )
    with seeded(seed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        try:
            peft_model = get_peft_model(model, config)
        except ValueError as e:
            raise AdapterError(f"cannot attach LoRA with targets {config.target_modules}: {e}") from e
    if with_head:
        # PEFT's sequence-classification wrapper appends its own guesses ("classifier", "score") to
        # `modules_to_save`, so the saved config would list the head twice and name a module the model lacks.
        peft_model.peft_config[peft_model.active_adapter].modules_to_save = [HEAD_MODULES[family]]
    return peft_model


def lora_scaling(peft_model: PeftModel) -> float:
    """The factor PEFT multiplies B @ A by: alpha / rank (alpha / sqrt(rank) with rsLoRA)."""
    config = peft_model.peft_config[peft_model.active_adapter]
    if config.rank_pattern or config.alpha_pattern:
        raise AdapterError("adapters with `rank_pattern`/`alpha_pattern` have no single scaling")
    if config.use_rslora:
        return float(config.lora_alpha) / math.sqrt(config.r)
    return float(config.lora_alpha) / config.r


def adapter_arrays(peft_model: PeftModel) -> dict[str, np.ndarray]:
    """The adapter's trainable state as float32 numpy copies, under PEFT's saved keys."""
    state = get_peft_model_state_dict(peft_model)
    return {key: value.detach().to("cpu", torch.float32).numpy().copy() for key, value in state.items()}


def _check_arrays_match(expected: Mapping[str, torch.Tensor], arrays: Mapping[str, np.ndarray]) -> None:
    """Raise `AdapterError` naming the first unknown, missing or mis-shaped key."""
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise AdapterError(f"unknown adapter key {unknown[0]!r} ({len(unknown)} unknown in all)")
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise AdapterError(f"missing adapter key {missing[0]!r} ({len(missing)} missing in all)")
    for key, tensor in expected.items():
        shape = tuple(np.shape(arrays[key]))
        if shape != tuple(tensor.shape):
            raise AdapterError(f"adapter key {key!r}: shape {shape}, expected {tuple(tensor.shape)}")


def load_adapter_arrays(peft_model: PeftModel, arrays: Mapping[str, np.ndarray]) -> None:
    """Set the adapter's state from arrays keyed as `adapter_arrays` returns them (strict, exact)."""
    expected = get_peft_model_state_dict(peft_model)
    _check_arrays_match(expected, arrays)
    tensors = {
        key: torch.from_numpy(np.array(arrays[key], dtype=np.float32)).to(expected[key].dtype) for key in expected
    }
    result = set_peft_model_state_dict(peft_model, tensors)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise AdapterError(f"PEFT did not place adapter key {unexpected[0]!r}")


def save_adapter(peft_model: PeftModel, directory: str | os.PathLike[str], base_model_name: str | None = None) -> Path:
    """Save the adapter in PEFT format (adapter_config.json + adapter_model.safetensors).

    `base_model_name` is recorded as the config's ``base_model_name_or_path``
    (the preset name or Hugging Face id the model was loaded by); without it
    PEFT writes whatever path the base model was read from, or null. Written
    to a temporary sibling directory, then renamed into place, so a reader
    never sees a half-written adapter. An existing directory is replaced.
    """
    if base_model_name is not None:
        peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path = base_model_name
    # Never the full embedding matrix (we do not resize vocabularies); "auto" would look the base name up on the Hub.
    return write_dir_atomically(
        directory, lambda staging: peft_model.save_pretrained(str(staging), save_embedding_layers=False)
    )


def load_adapter(
    base: LoadedModel | torch.nn.Module, directory: str | os.PathLike[str], is_trainable: bool = False
) -> PeftModel:
    """Load a PEFT adapter directory onto a base model (modified in place) with `PeftModel.from_pretrained`."""
    path = Path(directory)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} is not a PEFT adapter directory (no adapter_config.json)")
    model, _ = _model_and_task(base)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=is_trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise AdapterError(f"cannot load adapter from {path}: {e}") from e
    if not is_trainable:
        peft_model.eval()
    return peft_model


def module_path(key: str) -> str:
    """The base-model module path in an adapter key (PEFT's ``base_model.model.`` prefix removed)."""
    return key[len(PEFT_PREFIX) :] if key.startswith(PEFT_PREFIX) else key


def lora_layers(peft_model: PeftModel) -> list[tuple[str, LoraLayer]]:
    """(base-model module path, LoRA layer) of every module the active adapter adapts, in model order."""
    adapter = peft_model.active_adapter
    return [(module_path(p), m) for p, m in peft_model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A]


def lora_pairs(arrays: Mapping[str, object]) -> dict[str, LoraPair]:
    """Base-module path → keys of its LoRA A and B factors, for every adapted module in `arrays`."""
    halves: dict[str, dict[str, str]] = {}
    for key in arrays:
        m = _LORA_KEY_RE.fullmatch(key)
        if m is not None:
            halves.setdefault(module_path(m.group("path")), {})[m.group("which")] = key
    pairs: dict[str, LoraPair] = {}
    for path, keys in halves.items():
        if set(keys) != {"A", "B"}:
            missing = "B" if "A" in keys else "A"
            raise AdapterError(f"adapter module {path!r} has no lora_{missing} array")
        pairs[path] = LoraPair(a_key=keys["A"], b_key=keys["B"])
    return pairs


def head_module_keys(arrays: Mapping[str, object]) -> list[str]:
    """Keys in `arrays` that are not LoRA factors: the saved task head (``modules_to_save``)."""
    return [key for key in arrays if _LORA_KEY_RE.fullmatch(key) is None]


def split_adapter_arrays(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray]]:
    """Split PEFT adapter arrays into per-module (A, B) pairs and head parameters.

    Module paths and head parameter names are relative to the base model, matching
    the global state's keys. Both sides use it: a node to build its reply, the
    coordinator to read one.
    """
    pairs = {m: (arrays[p.a_key], arrays[p.b_key]) for m, p in lora_pairs(arrays).items()}
    head = {module_path(k): arrays[k] for k in head_module_keys(arrays)}
    return pairs, head
