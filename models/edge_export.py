"""Exporting a student as an edge bundle (torch side; the runtime is `models.edge_bundle`).

`export_bundle` writes the bundle directory atomically (a reader sees the old
bundle or the new one, never half): the ONNX export of `models.onnx_export`
(LoRA merged, heads pruned; FFNs narrowed are simply smaller Linears), then,
for ``precision="int8"``, onnxruntime's own dynamic quantization
(`onnxruntime.quantization.quantize_dynamic`: int8 weights for MatMul and
Gather, activations quantized on the fly), the tokenizer, the consent
contracts, and last the manifest with every file's sha256.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnx
import rfc8785
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from sentinel.models.edge_bundle import (
    CONTRACTS_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    TOKENIZER_DIR,
    TOKENIZER_FILE,
    BundleError,
    BundleFile,
    BundleManifest,
    Precision,
    sha256_file,
)
from sentinel.models.fileio import write_dir_atomically
from sentinel.models.loading import family_of, model_config
from sentinel.models.onnx_export import META_PARAMETERS, export_onnx, prepare_for_export, read_metadata
from sentinel.models.student import student_spec
from transformers import PreTrainedTokenizerBase

__all__ = ["CONTRACTS_METADATA_KEY", "export_bundle", "quantize_int8"]

CONTRACTS_METADATA_KEY = "consent_contracts"
"""ONNX metadata key of the consent contracts (the same one `sentinel models export-onnx` writes)."""
CARD_PREFIX = "sentinel.card."
META_PRECISION = "sentinel.precision"
META_ARCHITECTURE = "sentinel.architecture"


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(source: str | os.PathLike[str], target: str | os.PathLike[str], per_channel: bool = False) -> Path:
    """Dynamic int8 quantization of an ONNX file with onnxruntime's tool; metadata is carried over.

    Weights of MatMul and Gather (embeddings) become int8 (``QInt8``),
    activations are quantized per batch at run time, so no calibration data
    is needed. `per_channel` quantizes weights per output channel (often more
    accurate, a little slower on some CPUs).
    """
    metadata = read_metadata(source)
    with _quiet_root_logger():  # the tool logs a pre-processing suggestion on the root logger at every call
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    proto = onnx.load(str(target))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(target))
    return Path(target)


def _contracts_bytes(contracts: str | Mapping[str, Any]) -> bytes:
    """Canonical (RFC 8785) JSON bytes of the contracts, given as JSON text or as parsed JSON."""
    try:
        value = json.loads(contracts) if isinstance(contracts, str) else contracts
        return rfc8785.dumps(value)
    except (ValueError, TypeError, rfc8785.CanonicalizationError) as e:
        raise ValueError(f"`contracts` must be JSON (text or a mapping of JSON values): {e}") from e


def _labels(model: torch.nn.Module, labels: Sequence[str] | None) -> tuple[str, ...]:
    config = model_config(model)
    count = int(getattr(config, "num_labels", 0))
    if labels is None:
        id2label = getattr(config, "id2label", None) or {}
        labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(count)]
    labels = tuple(str(label) for label in labels)
    if len(labels) != count:
        raise ValueError(f"`labels` has {len(labels)} names but the model has {count} outputs")
    return labels


def _max_length(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, max_length: int | None) -> int:
    limit = int(getattr(model_config(model), "max_position_embeddings", 0) or getattr(model_config(model), "n_positions", 0) or 512)
    if max_length is None:
        return min(int(tokenizer.model_max_length), limit)
    if not 1 <= max_length <= limit:
        raise ValueError(f"`max_length` must be in [1, {limit}] (the model's positions), got {max_length}")
    return int(max_length)


def _files(staging: Path) -> tuple[BundleFile, ...]:
    return tuple(
        BundleFile(path=p.relative_to(staging).as_posix(), sha256=sha256_file(p), bytes=p.stat().st_size)
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    )


def export_bundle(
    student: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    directory: str | os.PathLike[str],
    *,
    name: str,
    labels: Sequence[str] | None = None,
    max_length: int | None = None,
    precision: Precision = "fp32",
    contracts: str | Mapping[str, Any] | None = None,
    model_card: Mapping[str, str] | None = None,
    teacher_parameters: int | None = None,
    per_channel: bool = False,
    opset: int | None = None,
) -> Path:
    """Export `student` (a classifier, plain or PeftModel) as an edge bundle in `directory`; returns it.

    Parameters
    ----------
    student
        The pruned, narrowed student (`models.student.build_student`), trained;
        a LoRA adapter is merged on a copy. `student` is not changed.
    tokenizer
        Its tokenizer; must be a fast tokenizer (the bundle ships ``tokenizer.json``).
    directory
        The bundle directory; an existing bundle there is replaced atomically.
    name, labels, max_length
        Model name; class names in logit order (default: the config's ``id2label``);
        longest input in tokens (default: the tokenizer's limit, capped by the model's positions).
    precision
        ``"fp32"``, or ``"int8"`` for onnxruntime dynamic quantization (`quantize_int8`).
    contracts
        Consent contracts in force (JSON text or parsed JSON): written canonically
        to ``consent_contracts.json``, hashed in the manifest, and copied into the
        ONNX metadata under ``consent_contracts``.
    model_card
        Free-text fields (intended use, teacher, evaluation, ...), in the manifest
        and the ONNX metadata as ``sentinel.card.<field>``.
    teacher_parameters
        Parameter count of the teacher, recorded for the size comparison.
    """
    if precision not in ("fp32", "int8"):
        raise ValueError(f"`precision` must be 'fp32' or 'int8', got {precision!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise BundleError("the edge bundle needs a fast tokenizer (it ships tokenizer.json for the `tokenizers` runtime)")
    prepared = prepare_for_export(student)
    labels_t = _labels(prepared, labels)
    length = _max_length(prepared, tokenizer, max_length)
    card = {str(k): str(v) for k, v in (model_card or {}).items()}
    contracts_bytes = _contracts_bytes(contracts) if contracts is not None else None
    architecture = student_spec(prepared).model_dump(mode="json")
    metadata = {META_PRECISION: precision, META_ARCHITECTURE: json.dumps(architecture, sort_keys=True)}
    metadata.update({f"{CARD_PREFIX}{k}": v for k, v in card.items()})
    if contracts_bytes is not None:
        metadata[CONTRACTS_METADATA_KEY] = contracts_bytes.decode("utf-8")

    def write(staging: Path) -> None:
        work = staging / ".fp32"
        exported = export_onnx(prepared, tokenizer, work / MODEL_FILE, metadata=metadata, name=name, opset=opset)
        if precision == "int8":
            quantize_int8(exported, staging / MODEL_FILE, per_channel=per_channel)
        else:
            os.replace(exported, staging / MODEL_FILE)
        os.replace(work / TOKENIZER_DIR, staging / TOKENIZER_DIR)
        shutil.rmtree(work)
        if not (staging / TOKENIZER_FILE).is_file():
            raise BundleError(f"the tokenizer saved no {Path(TOKENIZER_FILE).name}; a fast tokenizer is needed")
        if contracts_bytes is not None:
            (staging / CONTRACTS_FILE).write_bytes(contracts_bytes)
        files = _files(staging)
        manifest = BundleManifest(
            model_name=name,
            family=family_of(prepared),
            precision=precision,
            labels=labels_t,
            max_length=length,
            input_names=tuple(read_metadata(staging / MODEL_FILE)["sentinel.input_names"].split(",")),
            pad_token_id=int(tokenizer.pad_token_id),
            pad_token=str(tokenizer.pad_token),
            padding_side=tokenizer.padding_side,
            contracts_file=CONTRACTS_FILE if contracts_bytes is not None else None,
            contracts_sha256=sha256_file(staging / CONTRACTS_FILE) if contracts_bytes is not None else None,
            files=files,
            num_parameters=int(read_metadata(staging / MODEL_FILE)[META_PARAMETERS]),
            teacher_parameters=teacher_parameters,
            model_bytes=(staging / MODEL_FILE).stat().st_size,
            total_bytes=sum(f.bytes for f in files),
            architecture=architecture,
            model_card=card,
            created_at=datetime.now(UTC),
        )
        (staging / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")

    return write_dir_atomically(directory, write)
