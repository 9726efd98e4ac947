"""Conversions between numpy mappings and Flower records (the only place that knows both)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from flwr.app import Array, ArrayRecord
from sentinel.protos.messages import KEY_DELTA, KEY_HEAD, KEY_HEAD_MASK, KEY_LORA_A, KEY_LORA_B


def to_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding ``arrays`` (keys kept, values as contiguous numpy arrays)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The arrays of an ArrayRecord as a ``dict[str, np.ndarray]``."""
    return {k: v.numpy() for k, v in record.items()}


def global_view_record(
    factors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    head: Mapping[str, np.ndarray],
    head_mask: np.ndarray | None = None,
) -> ArrayRecord:
    """The ArrayRecord a node receives: rank-r factors (A, B) of the global ΔW and the head."""
    arrays: dict[str, np.ndarray] = {}
    for module, (a, b) in factors.items():
        arrays[KEY_LORA_A + module] = a
        arrays[KEY_LORA_B + module] = b
    for name, value in head.items():
        arrays[KEY_HEAD + name] = value
    if head_mask is not None:
        arrays[KEY_HEAD_MASK] = head_mask.astype(np.float32)
    return to_array_record(arrays)


def parse_global_view(
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, np.ndarray], np.ndarray | None]:
    """Inverse of :func:`global_view_record`: (module → (A, B), head parameters, head mask)."""
    a = {k[len(KEY_LORA_A) :]: v for k, v in arrays.items() if k.startswith(KEY_LORA_A)}
    b = {k[len(KEY_LORA_B) :]: v for k, v in arrays.items() if k.startswith(KEY_LORA_B)}
    head = {k[len(KEY_HEAD) :]: v for k, v in arrays.items() if k.startswith(KEY_HEAD)}
    mask = arrays.get(KEY_HEAD_MASK)
    unknown = [k for k in arrays if not k.startswith((KEY_LORA_A, KEY_LORA_B, KEY_HEAD)) and k != KEY_HEAD_MASK]
    if unknown:
        raise ValueError(f"unexpected arrays in the global view: {unknown[:3]}")
    if set(a) != set(b):
        raise ValueError(f"global view modules without both factors: {sorted(set(a) ^ set(b))[:3]}")
    return {m: (a[m], b[m]) for m in a}, head, mask


def dense_state_arrays(deltas: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One flat mapping of a dense global state: ``delta/<module>`` and ``head/<param>`` keys.

    The one key scheme of the exact global state: the validate message carries
    it, checkpoints store it and ledger hashes cover it.
    """
    arrays = {KEY_DELTA + k: v for k, v in deltas.items()}
    arrays.update({KEY_HEAD + k: v for k, v in head.items()})
    return arrays


def parse_dense_state(arrays: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of :func:`dense_state_arrays`: (deltas, head); other keys are ignored."""
    deltas = {k[len(KEY_DELTA) :]: v for k, v in arrays.items() if k.startswith(KEY_DELTA)}
    head = {k[len(KEY_HEAD) :]: v for k, v in arrays.items() if k.startswith(KEY_HEAD)}
    return deltas, head


def bundle_record(directory: str | Path, paths: Sequence[str]) -> ArrayRecord:
    """An ArrayRecord carrying an edge bundle's files (``paths``, relative POSIX) as uint8 arrays keyed by path.

    The coordinator delivers the distilled student to edge nodes this way
    (Flower chunks large arrays on the wire); the node rebuilds the directory
    and verifies it against the manifest it names (``client.edge_install``).
    """
    root = Path(directory)
    return ArrayRecord({p: Array(np.frombuffer((root / PurePosixPath(p)).read_bytes(), dtype=np.uint8)) for p in paths})


def bundle_files_of(record: ArrayRecord) -> dict[str, bytes]:
    """The files of a bundle record (``bundle_record``): relative path → bytes; non-uint8 or non-1-D arrays are refused."""
    files: dict[str, bytes] = {}
    for path, array in record.items():
        values = array.numpy()
        if values.dtype != np.uint8 or values.ndim != 1:
            raise ValueError(f"bundle file {path!r} is not a 1-D uint8 array (dtype {values.dtype}, shape {values.shape})")
        files[path] = values.tobytes()
    return files
