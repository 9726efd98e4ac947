"""Exporting a classifier to ONNX (LoRA merged, masked heads pruned) and running it with onnxruntime.

Edge nodes run the distilled, pruned student through onnxruntime. An export
writes two things next to each other:

- ``<name>.onnx``: one self-contained file (weights inside), inputs
  ``input_ids`` and ``attention_mask`` (+ ``token_type_ids`` when the
  tokenizer produces them), output ``logits``; batch and sequence axes are
  dynamic. Its ``metadata_props`` carry ``sentinel.*`` keys (model name,
  family, pruned heads, parameter count, tokenizer directory) and any extra
  metadata given (consent contracts later).
- ``<name>.tokenizer/``: the tokenizer, saved with ``save_pretrained``, which
  `OnnxClassifier` loads by default.

The export uses torch's dynamo exporter (``torch.onnx.export(dynamo=True)``
with ``dynamic_shapes``); it handles BERT, GPT-2 and Llama classifiers,
pruned ones (GQA-partial `GroupedKVLinear` included) and merged LoRA.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sentinel.models.components import model_layout
from sentinel.models.exceptions import ModelError
from sentinel.models.fileio import replace_dir
from sentinel.models.head_mask import check_mask, load_head_mask, pruned_of_mask
from sentinel.models.loading import family_of, model_config
from sentinel.models.lora import load_adapter
from sentinel.models.pruning import count_parameters, prune_heads, pruned_heads
from transformers import AutoTokenizer, PreTrainedTokenizerBase

ADAPTER_CONTRACTS_FILE = "consent_contracts.json"
"""File beside a PEFT adapter holding the consent contracts it was trained under (copied into ONNX metadata)."""

INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
"""Model inputs an export may have, in graph order."""

META_PREFIX = "sentinel."
META_MODEL = "sentinel.model"
META_FAMILY = "sentinel.family"
META_PRUNED = "sentinel.pruned_heads"
META_PARAMETERS = "sentinel.num_parameters"
META_LABELS = "sentinel.num_labels"
META_TOKENIZER = "sentinel.tokenizer_dir"
META_INPUTS = "sentinel.input_names"

HeadMaskArg = np.ndarray | torch.Tensor | str | os.PathLike[str] | None


class OnnxExportError(ModelError, RuntimeError):
    """The model could not be exported to ONNX or the export cannot be read back."""


class _LogitsOnly(torch.nn.Module):
    """Exposes a sequence classifier as ``(input_ids, attention_mask[, token_type_ids]) -> logits``."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.model(**inputs).logits


def prepare_for_export(
    model: torch.nn.Module, *, adapter_dir: str | os.PathLike[str] | None = None, head_mask: HeadMaskArg = None
) -> torch.nn.Module:
    """A copy of `model` in eval mode with the LoRA adapter merged and masked heads physically pruned.

    `model` itself is not changed. A PeftModel is merged as is; `adapter_dir`
    (a PEFT directory) is loaded onto the copy first, then merged.
    `head_mask` is a 0/1 ``[L, H]`` array or a head-mask JSON file.
    """
    prepared = copy.deepcopy(model)
    if adapter_dir is not None:
        if callable(getattr(prepared, "get_base_model", None)):
            raise OnnxExportError("`model` already has a LoRA adapter; pass a base model with `adapter_dir`")
        prepared = load_adapter(prepared, adapter_dir)
    if callable(getattr(prepared, "merge_and_unload", None)):
        prepared = prepared.merge_and_unload()
    if head_mask is not None:
        layout = model_layout(prepared)
        if isinstance(head_mask, (str, os.PathLike)):
            mask = load_head_mask(head_mask, layout)
        else:
            mask = check_mask(head_mask, layout)
        prune_heads(prepared, pruned_of_mask(mask))
    return prepared.eval()


def _input_names(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    sample = tokenizer(["probe"], return_tensors="pt")
    return [name for name in INPUT_ORDER if name in sample]


def _example_inputs(tokenizer: PreTrainedTokenizerBase, names: Sequence[str]) -> dict[str, torch.Tensor]:
    # Batch 2, unequal lengths: neither dimension is 1, so export keeps both symbolic.
    encoded = tokenizer(["an example input sentence", "another one"], padding=True, return_tensors="pt")
    return {name: encoded[name].to(torch.long) for name in names}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's expected warnings (missing torchvision ops, deprecations)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _metadata(
    model: torch.nn.Module, name: str | None, names: Sequence[str], tokenizer_dir: str, extra: Mapping[str, str] | None
) -> dict[str, str]:
    config = model_config(model)
    meta = {
        META_MODEL: name or str(getattr(config, "name_or_path", "") or type(model).__name__),
        META_FAMILY: family_of(model),
        META_PRUNED: json.dumps({str(k): v for k, v in pruned_heads(model).items()}, sort_keys=True),
        META_PARAMETERS: str(count_parameters(model)),
        META_LABELS: str(int(getattr(config, "num_labels", 0))),
        META_TOKENIZER: tokenizer_dir,
        META_INPUTS: ",".join(names),
    }
    for key, value in (extra or {}).items():
        if key in meta:
            raise ValueError(f"`metadata` key {key!r} is reserved for the exporter")
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"`metadata` must map str to str, got {key!r}: {type(value).__name__}")
        meta[key] = value
    return meta


def tokenizer_dir_for(path: Path) -> Path:
    """Where the tokenizer of the export at `path` is saved: ``<stem>.tokenizer`` beside it."""
    return path.with_name(f"{path.stem}.tokenizer")


def export_onnx(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike[str],
    *,
    adapter_dir: str | os.PathLike[str] | None = None,
    head_mask: HeadMaskArg = None,
    opset: int | None = None,
    metadata: Mapping[str, str] | None = None,
    name: str | None = None,
) -> Path:
    """Export a sequence classifier's logits to ONNX, atomically; returns the written path.

    The LoRA adapter (`model` as a PeftModel, or `adapter_dir`) is merged and
    the heads `head_mask` masks are physically pruned, on a copy (`model` is
    not changed; see `prepare_for_export`). `metadata` adds string entries to
    the ONNX ``metadata_props``; `name` is recorded as the model name
    (default: the config's ``name_or_path``). `opset` defaults to the
    exporter's recommended one. The file is written under a temporary name and
    renamed, so readers never see a partial model.
    """
    target = Path(path)
    prepared = prepare_for_export(model, adapter_dir=adapter_dir, head_mask=head_mask)
    if not hasattr(prepared, "num_labels") and "ForSequenceClassification" not in type(prepared).__name__:
        raise OnnxExportError(f"only sequence classifiers are exported; got {type(prepared).__name__}")
    names = _input_names(tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    tok_dir = tokenizer_dir_for(target)
    meta = _metadata(prepared, name, names, tok_dir.name, metadata)

    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{tok_dir.name}.", suffix=".tmp"))
    try:
        _export_graph(prepared, tokenizer, names, tmp, opset)
        proto = onnx.load(str(tmp))
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, meta)
        onnx.save(proto, str(tmp))
        tokenizer.save_pretrained(str(staging))
        # mkstemp/mkdtemp create owner-only entries; exports are meant to be shipped and read.
        os.chmod(tmp, 0o644)
        os.chmod(staging, 0o755)
        replace_dir(staging, tok_dir)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _export_graph(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, names: list[str], out: Path, opset: int | None
) -> None:
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic = {name: {0: batch, 1: sequence} for name in names}
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                _LogitsOnly(model).eval(),
                (),
                kwargs=_example_inputs(tokenizer, names),
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=dynamic,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(str(out), external_data=False)
    except Exception as e:  # the exporter raises many unrelated types
        raise OnnxExportError(f"ONNX export of {type(model).__name__} failed: {e}") from e


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, as a dict (graph weights are not loaded)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


class OnnxClassifier:
    """An exported classifier run by onnxruntime.

    `tokenizer` defaults to the one saved beside the model (``<stem>.tokenizer``).
    `providers` defaults to CPU; `intra_op_threads` to onnxruntime's choice.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        tokenizer: PreTrainedTokenizerBase | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise OnnxExportError(f"no ONNX model at {self.path}")
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(
            str(self.path), sess_options=options, providers=list(providers or ["CPUExecutionProvider"])
        )
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer given, or the one saved beside the model (loaded on first use)."""
        if self._tokenizer is None:
            directory = self.path.with_name(self.metadata.get(META_TOKENIZER, tokenizer_dir_for(self.path).name))
            if not directory.is_dir():
                raise OnnxExportError(f"no tokenizer beside {self.path} (looked for {directory}); pass `tokenizer`")
            self._tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        return self._tokenizer

    def run(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """Logits ``[batch, num_labels]`` for already tokenised inputs."""
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed: dict[str, np.ndarray] = {}
        for name in self.input_names:
            value = given.get(name)
            if value is None:
                if name == "token_type_ids":
                    value = np.zeros_like(np.asarray(input_ids))
                else:
                    raise ValueError(f"the model needs input `{name}`")
            feed[name] = np.asarray(value, dtype=np.int64)
        return self.session.run(["logits"], feed)[0]

    def logits(self, texts: list[str], max_length: int | None = None) -> np.ndarray:
        """Tokenise `texts` (padded, truncated to `max_length` or the tokenizer's limit) and run them."""
        if isinstance(texts, str):
            raise ValueError("`texts` must be a list of strings, not one string")
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np"
        )
        return self.run(**{name: encoded[name] for name in INPUT_ORDER if name in encoded and name in self.input_names})
