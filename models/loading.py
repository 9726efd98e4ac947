"""Loading a base model: a preset, a local directory, or a Hugging Face id.

Every model comes back on CPU, in float32, in eval mode, with eager attention
(so ``output_attentions=True`` yields attention probabilities, which head
importance and the entropy gate need).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import huggingface_hub.constants
import torch
import transformers
from sentinel.models.exceptions import ModelLoadError, UnsupportedModelError
from sentinel.models.presets import PRESETS, Preset
from transformers import PreTrainedTokenizerBase

Task = Literal["classification", "causal-lm"]
Family = Literal["bert", "gpt2", "llama"]

# config.model_type -> family. MiniLM checkpoints are BERT models (model_type "bert").
_MODEL_TYPE_FAMILY: dict[str, Family] = {"bert": "bert", "gpt2": "gpt2", "llama": "llama"}


@dataclass
class LoadedModel:
    """A loaded base model with its tokenizer, family, task and the name it was loaded by."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    family: Family
    task: Task
    name: str


def model_config(model: torch.nn.Module) -> transformers.PretrainedConfig:
    """The Hugging Face config of a model or of the model inside a PeftModel."""
    config = getattr(model, "config", None)
    if not isinstance(config, transformers.PretrainedConfig):
        raise UnsupportedModelError(
            f"`model` ({type(model).__name__}) has no Hugging Face config; "
            "expected a transformers model or a PeftModel wrapping one"
        )
    return config


def family_of(model: torch.nn.Module) -> Family:
    """The architecture family of a model (or PeftModel), from `config.model_type`."""
    model_type = model_config(model).model_type
    family = _MODEL_TYPE_FAMILY.get(model_type)
    if family is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not supported; supported families: "
            f"{sorted(set(_MODEL_TYPE_FAMILY.values()))}"
        )
    return family


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator seeded by `seed`; the caller's random state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' expected 'newly initialised head' warnings and progress bars for one load."""
    previous = transformers.logging.get_verbosity()
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(previous)
        if bars:
            transformers.logging.enable_progress_bar()


def _validate_arguments(task: str, num_labels: int) -> None:
    """Reject a bad `task` or `num_labels` before any loading work."""
    if task not in get_args(Task):
        raise ValueError(f"`task` must be one of {list(get_args(Task))}, got {task!r}")
    if task == "classification" and num_labels < 1:
        raise ValueError(f"`num_labels` must be at least 1 for classification, got {num_labels}")


def _looks_like_path(name: str) -> bool:
    """Whether `name` is meant as a filesystem path rather than a preset or hub id."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..") or "\\" in name


def _preset_names() -> list[str]:
    from sentinel.models.presets import preset_names

    return list(preset_names())


def _from_pretrained(
    source: str, task: Task, num_labels: int, local_files_only: bool
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Load model and tokenizer with transformers from a directory or a hub id."""
    auto = (
        transformers.AutoModelForSequenceClassification
        if task == "classification"
        else transformers.AutoModelForCausalLM
    )
    kwargs: dict[str, object] = {
        "attn_implementation": "eager",
        "dtype": torch.float32,
        "local_files_only": local_files_only,
    }
    if task == "classification":
        kwargs["num_labels"] = num_labels
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        with _quiet_transformers():
            model = auto.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        offline = local_files_only or huggingface_hub.constants.is_offline_mode()
        hint = " (offline: only local files and the Hugging Face cache are used)" if offline else ""
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(
            f"cannot load {task} model {source!r}{hint}: it is not a preset ({', '.join(_preset_names())}), "
            f"a local model directory, or a loadable Hugging Face id ({first})"
        ) from e
    return model, tokenizer


def _ensure_pad_token(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    """Give decoder-only models a pad token (their eos) so batches and classification work."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError("the tokenizer has neither a pad token nor an eos token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    config = model_config(model)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id


def _load_preset(
    preset: Preset, task: Task, num_labels: int
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """Build a preset in code or read it from its local directory."""
    if preset.build is not None:
        return preset.build(task, num_labels)
    if preset.locate is None:
        raise ModelLoadError(f"preset {preset.name!r} defines neither `build` nor `locate`")
    return _from_pretrained(str(preset.locate()), task, num_labels, local_files_only=True)


def load_base_model(
    name_or_path: str, task: Task = "classification", num_labels: int = 2, seed: int = 0
) -> LoadedModel:
    """Load a base model by preset name, local directory, or Hugging Face id.

    Presets (see `models.presets.preset_names()`) never touch the network. A
    local directory is read with ``local_files_only=True``. Anything else is a
    Hugging Face id passed to ``from_pretrained`` (honours ``HF_HUB_OFFLINE``).
    Freshly initialised parts (a random preset, a new classification head) are
    drawn under `seed`, so the same arguments give the same weights; the
    caller's random state is left untouched.

    Raises `ModelLoadError` when nothing loads, `UnsupportedModelError` when the
    architecture is not bert, gpt2 or llama.
    """
    _validate_arguments(task, num_labels)
    with seeded(seed):
        if name_or_path in PRESETS:
            model, tokenizer = _load_preset(PRESETS[name_or_path], task, num_labels)
        elif Path(name_or_path).expanduser().is_dir():
            source = str(Path(name_or_path).expanduser())
            model, tokenizer = _from_pretrained(source, task, num_labels, local_files_only=True)
        elif _looks_like_path(name_or_path):
            raise ModelLoadError(
                f"no such model directory: {name_or_path!r} (presets: {', '.join(PRESETS)})"
            )
        else:
            model, tokenizer = _from_pretrained(name_or_path, task, num_labels, local_files_only=False)
    family = family_of(model)
    if family in ("gpt2", "llama"):
        _ensure_pad_token(model, tokenizer)
    model = model.to(device="cpu", dtype=torch.float32)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, family=family, task=task, name=name_or_path)
