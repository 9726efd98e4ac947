"""What the coordinator checks of every update before it may be aggregated (the *check* phase).

Pure functions over numpy arrays: no Flower, no torch. The coordinator knows
what it sent each node (the adapted modules and their shapes, the head, the
node's rank, the contract version in force) and what the node may claim (at
most its partition's number of training examples); a reply is checked against
that, never against the node's own description of itself. Each function
returns the problem as one line ('' when there is none), so a rejected update
gets a reason on the ledger and the round goes on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from sentinel.models.exceptions import AdapterError
from sentinel.models.lora import PEFT_PREFIX, head_module_keys, lora_pairs

ALLOWED_DTYPE = np.dtype(np.float32)
ENTROPY_SLACK = 1e-3
"""Normalised entropy is at most 1 (uniform attention); this much rounding above it is tolerated."""


@dataclass(frozen=True)
class ExpectedUpdate:
    """The shape of an honest update from one node this round, as the coordinator knows it."""

    rank: int
    modules: Mapping[str, tuple[int, int]]
    """Module path → (out, in) of its ΔW (the global state's dense delta)."""
    head: Mapping[str, tuple[int, ...]]
    """Head parameter name (base-model relative) → shape."""
    importance_shape: tuple[int, int] | None
    """(layers, heads) of importance reports; None when the coordinator cannot know it."""
    max_examples: int
    """The most training examples this node may claim (``Coordinator._max_examples``)."""
    contract_version: int
    """The consent contract version in force when the node was configured."""

    @property
    def max_bytes(self) -> int:
        """The size of an honest update's arrays (float32)."""
        lora = sum(self.rank * (out + inp) for out, inp in self.modules.values())
        head = sum(int(np.prod(s)) for s in self.head.values())
        return 4 * (lora + head)


def structure_problem(arrays: Mapping[str, np.ndarray], expected: ExpectedUpdate) -> str:
    """Keys, shapes, dtypes, size and finiteness of an update's arrays against what was sent."""
    try:
        pairs = lora_pairs(arrays)
    except AdapterError as e:
        return f"malformed update: {e}"
    missing = sorted(set(expected.modules) - set(pairs))
    if missing:
        return f"malformed update: {len(missing)} adapted module(s) missing, e.g. `{missing[0]}`"
    extra = sorted(set(pairs) - set(expected.modules))
    if extra:
        return f"malformed update: {len(extra)} module(s) the global model does not adapt, e.g. `{extra[0]}`"
    head_keys = {k[len(PEFT_PREFIX) :] if k.startswith(PEFT_PREFIX) else k: k for k in head_module_keys(arrays)}
    if set(head_keys) != set(expected.head):
        unknown = sorted(set(head_keys) ^ set(expected.head))
        return f"malformed update: head parameters differ from the global head, e.g. `{unknown[0]}`"
    for module, pair in sorted(pairs.items()):
        out, inp = expected.modules[module]
        a, b = np.asarray(arrays[pair.a_key]), np.asarray(arrays[pair.b_key])
        if a.ndim == 2 and b.ndim == 2 and (a.shape[0] != expected.rank or b.shape[1] != expected.rank):
            return f"wrong rank: module `{module}` has factors of rank {a.shape[0]}/{b.shape[1]}, expected {expected.rank}"
        if a.shape != (expected.rank, inp) or b.shape != (out, expected.rank):
            return (
                f"wrong shape in module `{module}`: A {a.shape}, B {b.shape}; "
                f"expected A {(expected.rank, inp)}, B {(out, expected.rank)} at rank {expected.rank}"
            )
        problem = _values_problem(f"module `{module}`", a) or _values_problem(f"module `{module}`", b)
        if problem:
            return problem
    for name, key in sorted(head_keys.items()):
        value = np.asarray(arrays[key])
        if value.shape != tuple(expected.head[name]):
            return f"wrong shape of head parameter `{name}`: {value.shape}, expected {tuple(expected.head[name])}"
        problem = _values_problem(f"head parameter `{name}`", value)
        if problem:
            return problem
    size = sum(int(np.asarray(v).nbytes) for v in arrays.values())
    if size > expected.max_bytes:
        return f"malformed update: {size} bytes, more than the {expected.max_bytes} an update of rank {expected.rank} has"
    return ""


def _values_problem(what: str, value: np.ndarray) -> str:
    if value.dtype != ALLOWED_DTYPE:
        return f"wrong dtype in {what}: {value.dtype}, expected {ALLOWED_DTYPE}"
    if not np.isfinite(value).all():
        return f"non-finite values (NaN/Inf) in {what}"
    return ""


def claims_problem(num_examples: int, contract_version: int, expected: ExpectedUpdate) -> str:
    """The node's claims (examples, contract version) against what the coordinator knows."""
    if num_examples < 1:
        return f"invalid example count: {num_examples} (must be at least 1)"
    if num_examples > expected.max_examples:
        return (
            f"example count {num_examples} exceeds the {expected.max_examples} training examples this node may claim "
            "(the least of its partition, its declared size and the governance cap)"
        )
    if contract_version != expected.contract_version:
        return (
            f"stale contract version: the update was trained under version {contract_version}, "
            f"version {expected.contract_version} is in force"
        )
    return ""


def importance_problem(reports: Mapping[str, np.ndarray | None], expected: ExpectedUpdate) -> str:
    """Importance arrays must be (layers, heads), finite and in range (entropies ≥ 0, normalised ≤ 1)."""
    for name, value in sorted(reports.items()):
        if value is None:
            continue
        arr = np.asarray(value)
        if expected.importance_shape is not None and arr.shape != expected.importance_shape:
            return f"importance `{name}` has shape {arr.shape}, expected {expected.importance_shape} (layers × heads)"
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            return f"importance `{name}` holds non-finite or non-float values"
        if (arr < 0).any():
            return f"importance `{name}` holds negative values"
        if name == "entropy-normalised" and (arr > 1.0 + ENTROPY_SLACK).any():
            return f"importance `{name}` holds values above 1 (max {float(arr.max()):.3g})"
    return ""


def update_norm(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], scaling: float) -> float:
    """‖ΔW‖_F of an update, Σ over modules of ‖s·B·A‖_F², without forming B·A.

    ‖BA‖_F² = Σ (BᵀB) ∘ (AAᵀ), which costs r² per module instead of out × in.
    """
    total = 0.0
    for a, b in pairs.values():
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        total += float(np.sum((b64.T @ b64) * (a64 @ a64.T)))
    return float(scaling * np.sqrt(max(total, 0.0)))


def norm_outliers(norms: Mapping[int, float], factor: float) -> dict[int, str]:
    """Updates whose norm exceeds ``factor`` × the median of the round's norms: node → reason.

    The bound is relative to the honest majority, so it needs no scale of its own;
    with fewer than three updates the median is not robust and nothing is flagged.
    """
    if len(norms) < 3:
        return {}
    median = float(np.median(list(norms.values())))
    bound = factor * median
    return {
        n: f"update norm {v:.3g} exceeds {factor:g} × the round's median norm ({median:.3g})"
        for n, v in norms.items()
        if v > bound
    }


def update_direction(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], head_change: Mapping[str, np.ndarray], scaling: float
) -> np.ndarray:
    """An update as one flat vector: every module's dense s·B·A, then its head change (in a fixed order).

    The direction check compares these vectors across the round's updates; the
    dense product makes updates from different nodes (different A, B, even ranks)
    comparable, as the aggregate itself is a sum of these products.
    """
    parts = [
        (scaling * (np.asarray(b, dtype=np.float32) @ np.asarray(a, dtype=np.float32))).ravel()
        for _, (a, b) in sorted(pairs.items())
    ]
    parts += [np.asarray(head_change[k], dtype=np.float32).ravel() for k in sorted(head_change)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


DIRECTION_MIN_UPDATES = 5
"""The direction check needs this many updates in a round (each compared with the median of at least four others)."""


def direction_cosines(vectors: Mapping[int, np.ndarray], reference: Iterable[int] | None = None) -> dict[int, float]:
    """Each update's cosine to the coordinate-wise median of the round's *other* updates.

    Leave-one-out matters: LoRA updates from nodes with their own random A live
    in nearly orthogonal subspaces (pairwise cosines of ±0.01–0.1 on MiniLM), so a
    median that includes the update itself correlates with it whatever its sign;
    the median of the others carries only what the honest majority shares, which
    a minority of attackers cannot move far. ``reference`` (node ids, e.g. the
    nodes whose updates the last round accepted) narrows the others to nodes in
    good standing when at least :data:`DIRECTION_MIN_UPDATES` − 1 of them remain:
    near the optimum the honest updates share little, and attackers inside the
    median pull it toward zero (measured: with three sign-flippers among ten
    nodes, half the honest cosines fell below zero by round 4). Empty below
    :data:`DIRECTION_MIN_UPDATES` updates; an all-zero vector has cosine 0.
    """
    if len(vectors) < DIRECTION_MIN_UPDATES:
        return {}
    ids = sorted(vectors)
    sizes = {vectors[i].shape for i in ids}
    if len(sizes) != 1:
        raise ValueError(f"update vectors differ in shape: {sorted(sizes)}")
    stacked = np.stack([np.asarray(vectors[i], dtype=np.float32) for i in ids])
    trusted = set(reference) if reference is not None else set(ids)
    cosines: dict[int, float] = {}
    for row, node in enumerate(ids):
        others = [r for r, other in enumerate(ids) if other != node and other in trusted]
        if len(others) < DIRECTION_MIN_UPDATES - 1:
            others = [r for r in range(len(ids)) if r != row]
        consensus = np.median(stacked[others], axis=0)
        norm, consensus_norm = float(np.linalg.norm(stacked[row])), float(np.linalg.norm(consensus))
        cosines[node] = float(stacked[row] @ consensus) / (norm * consensus_norm) if norm > 0.0 and consensus_norm > 0.0 else 0.0
    return cosines


def direction_outliers(
    cosines: Mapping[int, float], min_cosine: float, records: Mapping[int, float] | None = None, scale: float = 0.0
) -> dict[int, str]:
    """Updates that point away from the round's consensus direction: node → reason.

    ``cosines`` are :func:`direction_cosines`. A sign-flipped or label-flipped
    update points against the honest majority whatever its size, which a loss
    gate on a small local step may not see; one at or below ``min_cosine`` is
    flagged (so at 0 an empty, free-riding update is flagged too). With the
    nodes' direction ``records`` (``server.direction_memory``: standardised
    cosines averaged over rounds, ``scale`` the round's median |cosine|) the
    record decides instead: flagged when it is at or below ``min_cosine / scale``
    — for a node with no history, exactly the plain rule; for one with a
    history, one round near zero does not decide, either way.
    """
    out: dict[int, str] = {}
    for node, cosine in cosines.items():
        record = records.get(node) if records is not None else None
        if record is None or scale <= 0:
            if cosine > min_cosine:
                continue
        elif record > min_cosine / scale:
            continue
        out[node] = (
            f"update direction opposes the round's consensus: cosine {cosine:.3f} to the coordinate-wise "
            f"median of the other updates (it must be above {min_cosine:g})"
            + (f"; its record over the rounds is {record:+.2f} (in units of the round's median |cosine|)" if record is not None else "")
        )
    return out
