"""The edge bundle: its manifest, its verification, and running it with onnxruntime (no torch).

A bundle is a directory the coordinator exports after each distillation
(`models.edge_export.export_bundle`) and edge nodes run:

- ``model.onnx``: the student (LoRA merged, heads pruned, FFNs narrowed),
  fp32 or int8 (onnxruntime dynamic quantization); consent contracts and
  model-card fields in its ``metadata_props``.
- ``model.tokenizer/``: the tokenizer; ``tokenizer.json`` is all the runtime
  reads (with the `tokenizers` package).
- ``consent_contracts.json``: the contracts the student was built under (when given).
- ``manifest.json``: a `BundleManifest`: every other file with its sha256 and
  size, model name, labels, max length, sizes, creation time, contracts hash.
  Its own hash (`manifest_sha256`) is what the ledger records.

This module imports neither torch nor transformers: a node that only answers
from the bundle installs onnxruntime, tokenizers, numpy and pydantic.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import onnxruntime as ort
import pydantic
from sentinel.models.exceptions import ModelError
from tokenizers import Tokenizer

__all__ = [
    "BundleError",
    "BundleFile",
    "BundleManifest",
    "BundleRunner",
    "EdgeBundle",
    "Prediction",
    "load_bundle",
    "manifest_sha256",
    "sha256_file",
    "softmax",
]

BUNDLE_FORMAT = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_DIR = "model.tokenizer"
TOKENIZER_FILE = f"{TOKENIZER_DIR}/tokenizer.json"
CONTRACTS_FILE = "consent_contracts.json"
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")

Precision = Literal["fp32", "int8"]


class BundleError(ModelError, ValueError):
    """An edge bundle is missing, malformed, or does not match its manifest (tampered or corrupted)."""


class BundleFile(pydantic.BaseModel):
    """One file of a bundle: path relative to the bundle (POSIX), sha256 (hex) and size in bytes."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    path: str = pydantic.Field(description="Path relative to the bundle directory, '/'-separated.")
    sha256: str = pydantic.Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the file's bytes.")
    bytes: pydantic.NonNegativeInt = pydantic.Field(description="File size in bytes.")

    @pydantic.field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        pure = PurePosixPath(value)
        if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in value:
            raise ValueError(f"bundle file path {value!r} must be relative and stay inside the bundle")
        return value


class BundleManifest(pydantic.BaseModel):
    """What a bundle holds and how to run it; written last, hashed by the ledger."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = pydantic.Field(default=BUNDLE_FORMAT, description="Bundle format version.")
    model_name: str = pydantic.Field(description="Name of the model (base model and run).")
    family: str = pydantic.Field(description="Architecture family: bert, gpt2 or llama.")
    precision: Precision = pydantic.Field(description="Weights of model.onnx: fp32, or int8 (dynamic quantization).")
    labels: tuple[str, ...] = pydantic.Field(min_length=1, description="Class names in logit order.")
    max_length: pydantic.PositiveInt = pydantic.Field(description="Longest input in tokens; longer texts are truncated.")
    input_names: tuple[str, ...] = pydantic.Field(description="Inputs of the ONNX graph, in order.")
    pad_token_id: pydantic.NonNegativeInt = pydantic.Field(description="Token id used for padding.")
    pad_token: str = pydantic.Field(description="Token used for padding.")
    padding_side: Literal["left", "right"] = pydantic.Field(default="right", description="Where padding goes.")
    model_file: str = pydantic.Field(default=MODEL_FILE, description="The ONNX file among `files`.")
    tokenizer_file: str = pydantic.Field(default=TOKENIZER_FILE, description="tokenizer.json among `files`.")
    contracts_file: str | None = pydantic.Field(default=None, description="Consent contracts file among `files`.")
    contracts_sha256: str | None = pydantic.Field(default=None, description="sha256 of the consent contracts file.")
    files: tuple[BundleFile, ...] = pydantic.Field(description="Every file of the bundle but the manifest.")
    num_parameters: pydantic.NonNegativeInt = pydantic.Field(description="Parameters of the student.")
    teacher_parameters: pydantic.NonNegativeInt | None = pydantic.Field(default=None, description="Parameters of the teacher.")
    model_bytes: pydantic.NonNegativeInt = pydantic.Field(description="Size of model.onnx in bytes.")
    total_bytes: pydantic.NonNegativeInt = pydantic.Field(description="Size of all files in `files`, in bytes.")
    architecture: dict[str, dict[int, tuple[int, ...]]] = pydantic.Field(
        default_factory=dict,
        description="The student spec: `pruned_heads` (layer → heads removed), `ffn_neurons` (layer → neurons kept).",
    )
    model_card: dict[str, str] = pydantic.Field(default_factory=dict, description="Model-card fields (free text).")
    created_at: datetime = pydantic.Field(description="When the bundle was exported (UTC).")

    @pydantic.model_validator(mode="after")
    def _references(self) -> BundleManifest:
        listed = {f.path for f in self.files}
        for name in ("model_file", "tokenizer_file", "contracts_file"):
            value = getattr(self, name)
            if value is not None and value not in listed:
                raise ValueError(f"`{name}` {value!r} is not among `files`")
        return self

    def file(self, path: str) -> BundleFile:
        """The entry of `path` in `files`."""
        return next(f for f in self.files if f.path == path)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(directory: str | os.PathLike[str]) -> str:
    """Hex sha256 of a bundle's ``manifest.json`` bytes: the one hash that pins the whole bundle."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{directory} is not an edge bundle (no {MANIFEST_FILE})")
    return sha256_file(path)


@dataclass(frozen=True)
class EdgeBundle:
    """A verified bundle: its directory, manifest and manifest hash."""

    directory: Path
    manifest: BundleManifest
    manifest_sha256: str

    def path(self, relative: str) -> Path:
        """Absolute path of a file of the bundle."""
        return self.directory / PurePosixPath(relative)


def load_bundle(directory: str | os.PathLike[str], verify: bool = True) -> EdgeBundle:
    """Read a bundle's manifest and (by default) check every listed file's size and sha256.

    Raises `BundleError` naming the first missing, resized or altered file.
    """
    directory = Path(directory)
    digest = manifest_sha256(directory)
    try:
        manifest = BundleManifest.model_validate_json((directory / MANIFEST_FILE).read_bytes())
    except pydantic.ValidationError as e:
        raise BundleError(f"{directory / MANIFEST_FILE}: invalid manifest: {e}") from e
    if verify:
        for entry in manifest.files:
            path = directory / PurePosixPath(entry.path)
            if not path.is_file():
                raise BundleError(f"bundle {directory}: file {entry.path} is missing")
            if path.stat().st_size != entry.bytes:
                raise BundleError(f"bundle {directory}: file {entry.path} has {path.stat().st_size} bytes, manifest says {entry.bytes}")
            if sha256_file(path) != entry.sha256:
                raise BundleError(f"bundle {directory}: file {entry.path} does not match its sha256 (altered or corrupted)")
    return EdgeBundle(directory=directory, manifest=manifest, manifest_sha256=digest)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, stable for large logits."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Prediction:
    """The bundle's answer for one text: the label, its index and probability, and all probabilities."""

    text: str
    label: str
    label_id: int
    probability: float
    probabilities: tuple[float, ...]


class BundleRunner:
    """Runs a bundle with onnxruntime on CPU: tokenise, run, softmax, label.

    `bundle` is a directory or an `EdgeBundle` (a directory is verified on
    load). `intra_op_threads` defaults to onnxruntime's choice; `providers`
    to ``["CPUExecutionProvider"]``.
    """

    def __init__(
        self,
        bundle: EdgeBundle | str | os.PathLike[str],
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, EdgeBundle) else load_bundle(bundle)
        manifest = self.bundle.manifest
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            if intra_op_threads < 1:
                raise ValueError(f"`intra_op_threads` must be at least 1, got {intra_op_threads}")
            options.intra_op_num_threads = intra_op_threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.bundle.path(manifest.model_file)),
                sess_options=options,
                providers=list(providers or ["CPUExecutionProvider"]),
            )
            self.tokenizer = Tokenizer.from_file(str(self.bundle.path(manifest.tokenizer_file)))
        except Exception as e:  # onnxruntime and tokenizers raise their own runtime errors
            raise BundleError(f"bundle {self.bundle.directory}: cannot load the model or tokenizer: {e}") from e
        self.tokenizer.enable_truncation(manifest.max_length)
        self.tokenizer.enable_padding(
            direction=manifest.padding_side, pad_id=manifest.pad_token_id, pad_token=manifest.pad_token
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.labels = manifest.labels

    @property
    def manifest(self) -> BundleManifest:
        """The bundle's manifest."""
        return self.bundle.manifest

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Token ids, attention mask (and token type ids) for `texts`, padded to the longest, int64."""
        if isinstance(texts, str):
            raise ValueError("`texts` must be a sequence of strings, not one string")
        encodings = self.tokenizer.encode_batch(list(texts))
        arrays = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: arrays[name] for name in self.input_names}

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Logits ``[batch, num_labels]`` for already encoded inputs (the graph's input names)."""
        return self.session.run(["logits"], feed)[0]

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Logits ``[len(texts), num_labels]``, encoding and running `batch_size` texts at a time."""
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate([self.run(self.encode(texts[i : i + batch_size])) for i in range(0, len(texts), batch_size)])

    def probabilities(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Class probabilities ``[len(texts), num_labels]`` (float64)."""
        return softmax(self.logits(texts, batch_size))

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        """The most probable label of each text, with its probability."""
        texts = list(texts)
        probs = self.probabilities(texts, batch_size)
        out = []
        for text, row in zip(texts, probs, strict=True):
            best = int(np.argmax(row))
            out.append(Prediction(text, self.labels[best], best, float(row[best]), tuple(float(p) for p in row)))
        return out
