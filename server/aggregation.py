"""LoRA aggregation math: exact heterogeneous-rank aggregation, FedIT, SVD redistribution.

Pure functions over ``dict[str, np.ndarray]``; no Flower, no torch. A client update
for one adapted weight is the pair (A, B) with A of shape (r, in) and B of shape
(out, r) plus its LoRA scaling s = alpha / r, meaning ΔW = s · B @ A (out × in).

*Exact* aggregation averages the products: ΔW = Σᵢ wᵢ sᵢ Bᵢ Aᵢ, which equals the
weighted mean of the clients' updates whatever each client's rank. *Naive*
aggregation (FedIT) averages A and B separately (zero-padded to the largest rank,
as in HetLoRA) and multiplies the averages, which is not the mean of the products.

*Clipping* (off unless a caller asks for it) bounds each update's influence
before the exact aggregate: ``clip_updates`` scales an update whose ‖ΔW‖_F
exceeds a bound (e.g. the round's median norm, ``median_norm``) down to it
through its scaling, so ΣwᵢsᵢBᵢAᵢ stays exact for what is aggregated and an
update within the bound is left as it is (Sun et al. 2019, "Can You Really
Backdoor Federated Learning?"; FLAME, Nguyen et al. 2022, with
``gaussian_noise`` added to the aggregate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LoraUpdate",
    "Factorised",
    "normalised_weights",
    "common_modules",
    "exact_aggregate",
    "naive_aggregate",
    "weighted_mean",
    "svd_factorise",
    "factorise_all",
    "numerical_rank",
    "exact_factorise",
    "exact_factorise_all",
    "update_norm",
    "median_norm",
    "clip_factors",
    "clip_updates",
    "gaussian_noise",
]


@dataclass(frozen=True)
class LoraUpdate:
    """One client's LoRA factors per adapted module, with its scaling and weight."""

    a: Mapping[str, np.ndarray]
    """Module path → A (r × in)."""
    b: Mapping[str, np.ndarray]
    """Module path → B (out × r)."""
    scaling: float
    """alpha / r of this client's adapter."""
    weight: float
    """Aggregation weight (number of training examples)."""

    def delta(self, module: str) -> np.ndarray:
        """This client's ΔW = s · B @ A for one module (float64)."""
        return self.scaling * (self.b[module].astype(np.float64) @ self.a[module].astype(np.float64))


@dataclass(frozen=True)
class Factorised:
    """A rank-r factorisation B @ A of a dense update and what truncation dropped."""

    a: np.ndarray
    b: np.ndarray
    dropped_sq: float
    """Squared Frobenius norm of ΔW − B @ A (the discarded singular values)."""
    total_sq: float
    """Squared Frobenius norm of ΔW."""


def normalised_weights(weights: Sequence[float]) -> np.ndarray:
    """Weights scaled to sum to one; ``ValueError`` for negative or all-zero weights."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        raise ValueError("`weights` is empty: nothing to aggregate")
    if np.any(w < 0):
        raise ValueError(f"`weights` must be non-negative, got {w.tolist()}")
    total = w.sum()
    if total <= 0:
        raise ValueError("`weights` sum to zero: every update has zero examples")
    return w / total


def common_modules(updates: Sequence[LoraUpdate]) -> list[str]:
    """The modules every update adapts, sorted; ``ValueError`` when they differ or a factor pair's ranks disagree."""
    modules = sorted(updates[0].a)
    for i, u in enumerate(updates):
        if sorted(u.a) != modules or sorted(u.b) != modules:
            raise ValueError(f"update {i} adapts different modules than update 0")
        for m in modules:
            if u.a[m].shape[0] != u.b[m].shape[1]:
                raise ValueError(f"update {i}, module `{m}`: rank of A ({u.a[m].shape[0]}) != rank of B ({u.b[m].shape[1]})")
    return modules


def exact_aggregate(
    updates: Sequence[LoraUpdate], supports: Sequence[Mapping[str, np.ndarray]] | None = None
) -> dict[str, np.ndarray]:
    """The weighted mean of the clients' products, ΔW = Σᵢ wᵢ sᵢ Bᵢ Aᵢ, per module.

    Exact for any mixture of ranks: the result is the mean of what each client
    would have applied to the model. ``supports`` (one mapping per update:
    module → a boolean array broadcasting to ΔW, ``models.consent.adapt_support``;
    a module absent is supported everywhere) makes it the mean over the clients
    that may change each entry: Σᵢ wᵢ Mᵢ ΔWᵢ / Σᵢ wᵢ Mᵢ, 0 where no client may
    (HeteroFL's rule for parameters only some clients train). Without it, a node
    that consent keeps out of a slice would pull that slice's mean toward zero
    by its weight: in the default policy edge nodes may not adapt layers 0–1.
    """
    modules = common_modules(updates)
    w = normalised_weights([u.weight for u in updates])
    if supports is not None and len(supports) != len(updates):
        raise ValueError(f"{len(supports)} supports for {len(updates)} updates")
    out: dict[str, np.ndarray] = {}
    for m in modules:
        masks = [s.get(m) for s in supports] if supports is not None else [None] * len(updates)
        if all(k is None for k in masks):
            out[m] = sum(wi * u.delta(m) for wi, u in zip(w, updates))
            continue
        total: np.ndarray | float = 0.0
        cover: np.ndarray | float = 0.0
        for wi, u, k in zip(w, updates, masks, strict=True):
            support = True if k is None else k
            total = total + wi * np.where(support, u.delta(m), 0.0)
            cover = cover + wi * np.broadcast_to(support, np.shape(total))
        out[m] = np.divide(total, cover, out=np.zeros_like(total), where=cover > 0)
    return out


def _pad_rank(x: np.ndarray, rank: int, axis: int) -> np.ndarray:
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, rank - x.shape[axis])
    return np.pad(x.astype(np.float64), pad)


def naive_aggregate(updates: Sequence[LoraUpdate]) -> dict[str, np.ndarray]:
    """FedIT: average (s·B) and A separately, zero-padded to the largest rank, then multiply.

    Provided as a baseline: (Σ wᵢ sᵢ Bᵢ)(Σ wᵢ Aᵢ) differs from Σ wᵢ sᵢ Bᵢ Aᵢ by
    the cross terms between clients.
    """
    modules = common_modules(updates)
    w = normalised_weights([u.weight for u in updates])
    out: dict[str, np.ndarray] = {}
    for m in modules:
        rank = max(u.a[m].shape[0] for u in updates)
        a_mean = sum(wi * _pad_rank(u.a[m], rank, 0) for wi, u in zip(w, updates))
        b_mean = sum(wi * u.scaling * _pad_rank(u.b[m], rank, 1) for wi, u in zip(w, updates))
        out[m] = b_mean @ a_mean
    return out


def weighted_mean(arrays: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-key weighted mean of dense arrays with identical keys and shapes (FedAvg)."""
    w = normalised_weights(weights)
    keys = sorted(arrays[0])
    for i, a in enumerate(arrays):
        if sorted(a) != keys:
            raise ValueError(f"arrays {i} has keys {sorted(a)}, expected {keys}")
    return {k: sum(wi * a[k].astype(np.float64) for wi, a in zip(w, arrays)) for k in keys}


def svd_factorise(delta: np.ndarray, rank: int) -> Factorised:
    """Best rank-r approximation of ``delta`` (Eckart–Young), as factors B (out×r), A (r×in).

    The singular values are split evenly (B = U√S, A = √S Vᵀ) so both factors have
    comparable scale. Ranks above min(out, in) are padded with zero rows/columns so
    a node always receives the rank it asked for.
    """
    if rank < 1:
        raise ValueError(f"`rank` must be >= 1, got {rank}")
    return _truncate(*np.linalg.svd(np.asarray(delta, dtype=np.float64), full_matrices=False), rank)


def _truncate(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int) -> Factorised:
    """Rank-``rank`` factors from a thin SVD (zero-padded past its length)."""
    k = min(rank, s.size)
    root = np.sqrt(s[:k])
    b = u[:, :k] * root
    a = root[:, None] * vt[:k]
    if k < rank:
        b = np.pad(b, [(0, 0), (0, rank - k)])
        a = np.pad(a, [(0, rank - k), (0, 0)])
    return Factorised(
        a=a.astype(np.float32),
        b=b.astype(np.float32),
        dropped_sq=float(np.sum(s[k:] ** 2)),
        total_sq=float(np.sum(s**2)),
    )


def factorise_all(deltas: Mapping[str, np.ndarray], rank: int) -> tuple[dict[str, Factorised], float]:
    """Factorise every module's ΔW at ``rank``; also return the relative norm dropped.

    The relative residual is ‖ΔW − B A‖_F / ‖ΔW‖_F over all modules together
    (0.0 when the global update is still zero).
    """
    parts = {m: svd_factorise(d, rank) for m, d in deltas.items()}
    dropped = sum(p.dropped_sq for p in parts.values())
    total = sum(p.total_sq for p in parts.values())
    return parts, (float(np.sqrt(dropped / total)) if total > 0 else 0.0)


def numerical_rank(singular_values: np.ndarray, tolerance: float) -> int:
    """The smallest k with ‖σ[k:]‖₂ ≤ ``tolerance`` · ‖σ‖₂ (0 for a zero matrix).

    Eckart–Young: truncating a matrix at this rank leaves a relative Frobenius
    residual of at most ``tolerance``.
    """
    if tolerance < 0:
        raise ValueError(f"`tolerance` must be >= 0, got {tolerance}")
    s = np.asarray(singular_values, dtype=np.float64)
    total = float(np.sum(s**2))
    if total == 0.0:
        return 0
    # tail[k] = Σ_{j ≥ k} σⱼ²; the first k whose tail is within the tolerance.
    tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
    return int(np.argmax(tail <= (tolerance**2) * total))


def exact_factorise(delta: np.ndarray, tolerance: float = 1e-6, min_rank: int = 0, max_rank: int | None = None) -> Factorised:
    """Factors B (out×k), A (k×in) of ``delta`` at the smallest rank k whose residual is ≤ ``tolerance`` relative.

    k is at least ``min_rank`` (padded with zero components past the matrix's
    rank) and at most ``max_rank`` (which may then leave more than the
    tolerance: ``dropped_sq`` says how much). Singular values are split
    evenly between the factors, as in :func:`svd_factorise`.
    """
    d = np.asarray(delta, dtype=np.float64)
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    k = max(numerical_rank(s, tolerance), min_rank)
    if max_rank is not None:
        k = min(k, max_rank)
    return _truncate(u, s, vt, k)


def exact_factorise_all(
    deltas: Mapping[str, np.ndarray], tolerance: float = 1e-6, min_rank: int = 0
) -> tuple[dict[str, Factorised], float]:
    """:func:`exact_factorise` for every module; also the relative residual over all modules together."""
    parts = {m: exact_factorise(d, tolerance, min_rank) for m, d in deltas.items()}
    dropped = sum(p.dropped_sq for p in parts.values())
    total = sum(p.total_sq for p in parts.values())
    return parts, (float(np.sqrt(dropped / total)) if total > 0 else 0.0)


def update_norm(update: LoraUpdate) -> float:
    """‖ΔW‖_F of one update over all its modules, s·‖BA‖ without forming BA (‖BA‖² = Σ (BᵀB) ∘ (AAᵀ))."""
    total = 0.0
    for m in update.a:
        a, b = update.a[m].astype(np.float64), update.b[m].astype(np.float64)
        total += float(np.sum((b.T @ b) * (a @ a.T)))
    return float(abs(update.scaling) * np.sqrt(max(total, 0.0)))


def median_norm(norms: Sequence[float]) -> float:
    """The median of the round's update norms: the clipping bound a minority cannot move far."""
    if len(norms) == 0:
        raise ValueError("`norms` is empty")
    return float(np.median(np.asarray(norms, dtype=np.float64)))


def clip_factors(norms: Sequence[float], bound: float) -> np.ndarray:
    """Per update min(1, bound / norm): 1 for an update within the bound (and for a zero update)."""
    if bound < 0:
        raise ValueError(f"`bound` must be >= 0, got {bound}")
    n = np.asarray(norms, dtype=np.float64)
    return np.where(n > bound, bound / np.where(n > 0, n, 1.0), 1.0)


def clip_updates(updates: Sequence[LoraUpdate], bound: float) -> list[LoraUpdate]:
    """Each update with ‖ΔW‖ above ``bound`` scaled down to it (its scaling times bound/‖ΔW‖); the rest unchanged.

    The updates within the bound are returned as the same objects, so with a
    bound no update exceeds the aggregate is exactly the unclipped one.
    """
    factors = clip_factors([update_norm(u) for u in updates], bound)
    return [u if f >= 1.0 else LoraUpdate(u.a, u.b, u.scaling * float(f), u.weight) for u, f in zip(updates, factors)]


def gaussian_noise(
    deltas: Mapping[str, np.ndarray], multiplier: float, bound: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``deltas`` plus i.i.d. Gaussian noise of total expected norm ``multiplier × bound`` (0: unchanged).

    Per coordinate σ = multiplier · bound / √D over all D coordinates of all
    modules, so the multiplier is relative to the clipping bound whatever the
    model's size (FLAME's adaptive noise, λ·S_t).
    """
    if multiplier < 0:
        raise ValueError(f"`multiplier` must be >= 0, got {multiplier}")
    if multiplier == 0 or bound == 0:
        return dict(deltas)
    size = sum(int(np.asarray(d).size) for d in deltas.values())
    sigma = multiplier * bound / np.sqrt(size)
    return {m: (np.asarray(d, np.float64) + rng.normal(0.0, sigma, np.shape(d))) for m, d in sorted(deltas.items())}
