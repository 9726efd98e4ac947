"""The continued adapter: a node resumes the global adapter each round instead of starting a fresh one.

A fresh adapter (B = 0, random A, both factors trained) spends the start of
every round with a zero product and a zero gradient on A, and forgets the
directions the federation already found; Flower's FedAvg over PEFT LoRA, whose
nodes continue from the averaged adapter, does not. Here each node continues
the *global* adapter (FlexLoRA's start): the top-r balanced SVD factors of its
view of the global ΔW,

    B₀ = U_r √(Σ_r / s),  A₀ = √(Σ_r / s) V_rᵀ   (s · B₀A₀ = the top-r part),

with the rest of the view (beyond rank r) merged into the base weights, so
the node computes exactly the model it was sent. Where the view has rank
k < r the remaining rows of A keep PEFT's random start and the columns of B
are zero (round 1 is a fresh adapter). Both factors train (in a module with
forbidden heads only one: ``models.consent.restrict_lora_changes_to_heads``).

The update is the change, ``s · (B₁A₁ − B₀A₀)``, of rank ≤ 2r. The node sends
it as exact factors of rank 2r (``update_factors``: what consent froze is exactly zero),
so aggregation stays exact (Σ wᵢ sᵢ BᵢAᵢ) and everything downstream — checks,
validators, contributions — reads it as the LoRA pair it is. Pure numpy here;
``client.training`` applies it to the PEFT model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["ContinuedStart", "continued_start", "update_factors"]


@dataclass(frozen=True)
class ContinuedStart:
    """Per module: the adapter's starting factors (A₀ rows, B₀ columns; k ≤ r of them) and the residual to merge."""

    a0: dict[str, np.ndarray]
    """Module → A₀ (k × in)."""
    b0: dict[str, np.ndarray]
    """Module → B₀ (out × k)."""
    residual: dict[str, np.ndarray]
    """Module → the view's ΔW minus s · B₀A₀ (merged into the base weights)."""


def continued_start(factors: Mapping[str, tuple[np.ndarray, np.ndarray]], rank: int, scaling: float, tol: float = 1e-7) -> ContinuedStart:
    """The continued start of a node of ``rank`` from its view's factors (A, B) with ΔW = B @ A."""
    if rank < 1:
        raise ValueError(f"`rank` must be at least 1, got {rank}")
    if scaling <= 0:
        raise ValueError(f"`scaling` must be positive, got {scaling}")
    a0, b0, residual = {}, {}, {}
    for module, (a, b) in factors.items():
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        delta = b64 @ a64 if a64.shape[0] else np.zeros((b64.shape[0], a64.shape[1]))
        u, sig, vt = _thin_svd(b64, a64)
        keep = int(min(rank, np.sum(sig > tol * max(float(sig[0]) if sig.size else 0.0, 1e-30))))
        root = np.sqrt(sig[:keep] / scaling)
        b_top, a_top = u[:, :keep] * root, root[:, None] * vt[:keep]
        a0[module] = a_top.astype(np.float32)
        b0[module] = b_top.astype(np.float32)
        residual[module] = (delta - scaling * (b0[module].astype(np.float64) @ a0[module].astype(np.float64))).astype(np.float32)
    return ContinuedStart(a0, b0, residual)


def _thin_svd(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD of B @ A from the factors (QR of each, SVD of the small core): U, Σ (descending), Vᵀ."""
    if a.shape[0] == 0:
        return np.zeros((b.shape[0], 0)), np.zeros(0), np.zeros((0, a.shape[1]))
    qb, rb = np.linalg.qr(b)
    qa, ra = np.linalg.qr(a.T)
    u, sig, vt = np.linalg.svd(rb @ ra.T)
    return qb @ u, sig, vt @ qa.T


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
