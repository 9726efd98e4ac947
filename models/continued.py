"""The continued adapter: a node resumes the global adapter each round instead of starting a fresh one.

A fresh adapter (B = 0, random A, both factors trained) spends the start of
every round with a zero product and a zero gradient on A, and forgets the
directions the federation already found; Flower's FedAvg over PEFT LoRA, whose
nodes continue from the averaged adapter, does not. Here each node continues
the *global* adapter (FlexLoRA's start): the top-r balanced SVD factors of the
global ΔW,

    B₀ = U_r √(Σ_r / s),  A₀ = √(Σ_r / s) V_rᵀ   (s · B₀A₀ = the top-r part).

**The wire.** The coordinator sends the node its view as factors whose product
is ΔW's top-r part, split so that the start is read off them exactly:
A_sent = A₀ and B_sent = s · B₀ (``continued_view_factors``). The node takes
A₀ = A_sent, B₀ = B_sent / s (``start_factors``: one float32 division, correctly
rounded, so the node and the coordinator hold bit-identical starts; no SVD on
the node, whose result would depend on its BLAS). Directions whose singular
value is negligible are sent as exact zeros; for those, the node's A keeps
PEFT's random start and B₀'s column is zero (round 1 is a fresh adapter).

**The uplink** is the node's trained adapter (A₁, B₁) at its own rank r. The
coordinator, which knows the start it sent, rebuilds the change
s · (B₁A₁ − B₀A₀) as exact factors of rank 2r (``change_factors``), so
aggregation stays exact (Σ wᵢ sᵢ BᵢAᵢ) and every later check — consent,
norms, validators, contributions — reads it as the LoRA pair it is. A factor
consent froze on the node is bit-equal to its start, so its part of the change
is exactly zero. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sentinel.models.lora import lora_pairs

__all__ = [
    "LIVE_TOLERANCE",
    "change_arrays",
    "change_factors",
    "continued_view_factors",
    "split_view_at_rank",
    "start_factors",
    "update_factors",
]

LIVE_TOLERANCE = 1e-7
"""A direction whose singular value is below this share of the largest is sent as zeros (a fresh rank on the node)."""


def continued_view_factors(a: np.ndarray, b: np.ndarray, scaling: float, tol: float = LIVE_TOLERANCE) -> tuple[np.ndarray, np.ndarray]:
    """(A_sent, B_sent) of one module from its balanced top-r SVD factors (B = U√Σ, A = √Σ Vᵀ; ΔW ≈ B A).

    B_sent @ A_sent is the same product, split as A_sent = A₀ = √(Σ/s) Vᵀ and
    B_sent = s·B₀ = U √(Σ s); negligible directions (σ < ``tol`` σ_max) are zeros.
    """
    if scaling <= 0:
        raise ValueError(f"`scaling` must be positive, got {scaling}")
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    sigma = np.sum(a64**2, axis=1)  # rows of √Σ Vᵀ have norm √σ
    live = sigma > tol * max(float(sigma.max()) if sigma.size else 0.0, 1e-30)
    root = np.sqrt(scaling)
    a_sent = np.where(live[:, None], a64 / root, 0.0)
    b_sent = np.where(live[None, :], b64 * root, 0.0)
    return a_sent.astype(np.float32), b_sent.astype(np.float32)


def split_view_at_rank(
    factors: Mapping[str, tuple[np.ndarray, np.ndarray]], rank: int
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(start, rest) per module of a view's (A, B): its first ``rank`` directions (the adapter's start) and the others.

    A truncated view has no more than ``rank`` directions, so ``rest`` is empty
    there; an exact view's directions past the node's rank are merged into the
    node's base weights, so the node trains on the exact global model. Both
    sides call this on the same arrays, so they agree on the start.
    """
    if rank < 1:
        raise ValueError(f"`rank` must be >= 1, got {rank}")
    start = {m: (a[:rank], b[:, :rank]) for m, (a, b) in factors.items()}
    rest = {m: (a[rank:], b[:, rank:]) for m, (a, b) in factors.items() if a.shape[0] > rank}
    return start, rest


def start_factors(
    a_sent: np.ndarray, b_sent: np.ndarray, scaling: float, rank: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A₀, B₀, live) at ``rank`` from the sent factors: A₀ = A_sent, B₀ = B_sent / s in float32; ``live`` marks the sent directions.

    The node and the coordinator both call this on the same arrays and get the
    same bits. A row of A_sent that is all zeros is a direction not sent (as
    are the rows past the sent rank, up to ``rank``): the node keeps PEFT's
    random row there, and B₀'s column is zero either way.
    """
    a0 = np.asarray(a_sent, dtype=np.float32)
    b0 = (np.asarray(b_sent, dtype=np.float32) / np.float32(scaling)).astype(np.float32)
    if a0.ndim != 2 or b0.ndim != 2 or a0.shape[0] != b0.shape[1]:
        raise ValueError(f"the sent factors do not multiply: B {b0.shape}, A {a0.shape}")
    if a0.shape[0] > rank:
        raise ValueError(f"the view has rank {a0.shape[0]}, more than the adapter's rank {rank}")
    pad = rank - a0.shape[0]
    a0 = np.pad(a0, [(0, pad), (0, 0)])
    b0 = np.pad(b0, [(0, 0), (0, pad)])
    live = np.any(a0 != 0, axis=1) & np.any(b0 != 0, axis=0)
    b0 = np.where(live[None, :], b0, np.float32(0.0)).astype(np.float32)
    return a0.astype(np.float32), b0, live


def update_factors(a1: np.ndarray, b1: np.ndarray, a_init: np.ndarray, b_init: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact rank-2r factors (A', B') of the change B₁A₁ − B_init A_init of one module's adapter.

    B₁A₁ − B₀A₀ = (B₁ − B₀)·A₁ + B₀·(A₁ − A₀), so A' = [A₁; A₁ − A₀] and
    B' = [B₁ − B₀, B₀]. A frozen factor has an exactly zero difference, so a
    module (or a head's rows or columns) that consent froze gets an exactly
    zero product, which the coordinator's consent check reads as untouched.
    """
    a1, b1 = np.asarray(a1, dtype=np.float32), np.asarray(b1, dtype=np.float32)
    a_init, b_init = np.asarray(a_init, dtype=np.float32), np.asarray(b_init, dtype=np.float32)
    if a1.shape != a_init.shape or b1.shape != b_init.shape:
        raise ValueError(f"the adapter changed shape: A {a_init.shape} → {a1.shape}, B {b_init.shape} → {b1.shape}")
    return np.concatenate([a1, a1 - a_init], axis=0), np.concatenate([b1 - b_init, b_init], axis=1)


def change_factors(
    a1: np.ndarray, b1: np.ndarray, a_sent: np.ndarray, b_sent: np.ndarray, scaling: float
) -> tuple[np.ndarray, np.ndarray]:
    """The coordinator's side: exact rank-2r factors of a node's change from its trained (A₁, B₁) and the view it was sent.

    A₀'s rows for directions not sent are zeros here (random on the node); B₀'s
    columns there are zero, so B₀A₀, and with it the change, does not depend on them.
    """
    a1 = np.asarray(a1, dtype=np.float32)
    a0, b0, _ = start_factors(a_sent, b_sent, scaling, a1.shape[0] if a1.ndim == 2 else 0)
    return update_factors(a1, b1, a0, b0)


def change_arrays(
    arrays: Mapping[str, np.ndarray], sent: Mapping[str, tuple[np.ndarray, np.ndarray]], scaling: float
) -> dict[str, np.ndarray]:
    """A node's adapter arrays (PEFT keys, rank r) with every module's pair replaced by its change at rank 2r.

    ``sent`` maps each module to the (A, B) the node was sent. A module the
    node adapts that was not sent is a ``KeyError``; shapes that do not match
    the sent start are a ``ValueError`` (the reply is malformed).
    """
    out = dict(arrays)
    for module, pair in lora_pairs(arrays).items():
        if module not in sent:
            raise KeyError(f"module `{module}` was not in the view the node was sent")
        a_sent, b_sent = sent[module]
        out[pair.a_key], out[pair.b_key] = change_factors(arrays[pair.a_key], arrays[pair.b_key], a_sent, b_sent, scaling)
    return out
