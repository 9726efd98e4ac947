"""The shared frame a node trains in: one LoRA factor frozen to the global adapter, the other trained.

A node that trains both LoRA factors from ``B = 0`` each round (a *fresh*
adapter) adds a rank-r update in a new random subspace every round, so the
global ΔW grows in rank by the sum of the nodes' ranks per round and no node
can be given it exactly at its own rank. Here every node continues the global
adapter itself — the balanced factors of the global ΔW, B̄ = U√(Σ/s), Ā = √(Σ/s)Vᵀ,
which the exact view already carries — with one factor frozen:

- a **B round** freezes A to Ā's top rows (completed by shared random
  directions where ΔW has fewer) and trains B from B̄ — as an update from zero
  on top of the merged global model, so the update is ``s · δB · Ā``;
- an **A round** freezes B to B̄'s top columns and trains A: the update is ``s · B̄ · δA``.

Every node's update then lies in the same rank-R frame (R the largest rank),
so the exact aggregate Σ wᵢ sᵢ Bᵢ Aᵢ keeps the global ΔW at rank ≤ R and its
exact view costs what a rank-R view costs. Alternating the rounds moves both
the row and the column space (alternating LoRA optimisation, as in RoLoRA); an
update is still a plain LoRA pair at the node's own rank, which the
coordinator's checks, the validators and exact aggregation take as they are.

Pure numpy; the node's training (``client.training``) applies the frame to its adapter.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

import numpy as np

Factor = Literal["a", "b"]
"""Which LoRA factor trains in a round: ``b`` (A frozen) or ``a`` (B frozen)."""
FrameScale = Literal["balanced", "unit"]
"""How the frozen factor is scaled: ``balanced``, the global adapter's own factor (√Σ per direction, so the step
the trained factor makes grows with ‖ΔW‖); ``unit``, an orthonormal basis of the same directions at PEFT's initial
norm (:data:`FILL_NORM`), so every round's step is a fresh adapter's, whatever ‖ΔW‖."""
FRAME_SCALES: Final = ("balanced", "unit")
Subframe = Literal["top", "gradient", "trained"]
"""Which r of the frame's R directions a node of rank r < R trains in: ``top``, the frame's leading r (the global
update's largest); ``gradient``, the r combinations of all R that carry most of the node's own gradient
(:func:`gradient_subframe`); ``trained``, none chosen beforehand: the node trains in the whole rank-R frame and
sends the best rank-r truncation of what it trained (the top-r singular combinations of its trained factor,
:func:`gradient_subframe` of that factor), so it uploads at its own rank and what it evaluated is what it sent.
Either way its update lies in the shared frame, so aggregation stays exact at rank ≤ R."""
SUBFRAMES: Final = ("top", "gradient", "trained")

FILL_NORM: Final = 1.0 / np.sqrt(3.0)
"""Norm of a random frame direction: PEFT's initial row norm of A (``kaiming_uniform(a=√5)`` on (r, in))."""


def _frame_seed(run_seed: int, server_round: int, module: str) -> int:
    digest = hashlib.sha256(f"frame:{run_seed}:{server_round}:{module}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def orthonormal_rows(rows: np.ndarray, count: int, dim: int, seed: int | None = None) -> np.ndarray:
    """Up to ``count`` orthonormal vectors of length ``dim``: the directions of ``rows`` in order, then seeded random ones.

    Rows that are (numerically) zero or dependent on earlier ones are skipped,
    so the result spans the rows' space first. With a ``seed`` the basis is
    completed to ``count`` vectors by random directions (the same on every
    node for the same seed); without one it may be shorter.
    """
    if count > dim:
        raise ValueError(f"`count` ({count}) exceeds the dimension ({dim})")
    basis: list[np.ndarray] = []
    candidates = [np.asarray(r, dtype=np.float64) for r in np.asarray(rows).reshape(-1, dim)]
    scale = max((float(np.linalg.norm(r)) for r in candidates), default=0.0)
    rng = np.random.default_rng(seed) if seed is not None else None
    while len(basis) < count and (candidates or rng is not None):
        v = candidates.pop(0) if candidates else rng.standard_normal(dim)  # type: ignore[union-attr]
        norm0 = float(np.linalg.norm(v))
        for _ in range(2):  # twice: one pass of classical Gram–Schmidt loses orthogonality
            for q in basis:
                v = v - (q @ v) * q
        if norm0 == 0.0 or float(np.linalg.norm(v)) <= 1e-8 * max(norm0, scale):
            continue
        basis.append(v / np.linalg.norm(v))
    return np.stack(basis) if basis else np.zeros((0, dim))


def _significant(count_of: np.ndarray) -> int:
    """How many leading vectors (rows of a norms array) are not numerically zero."""
    norms = np.asarray(count_of, dtype=np.float64)
    if norms.size == 0 or norms.max() == 0.0:
        return 0
    return int(np.sum(norms > 1e-12 * norms.max()))


def frame_rows(
    view_a: np.ndarray,
    rank: int,
    scaling: float,
    run_seed: int,
    server_round: int,
    module: str,
    gain: float = 1.0,
    scale: FrameScale = "balanced",
) -> np.ndarray:
    """The frozen A (rank × in) of a B round: the global adapter's top rows, then shared random directions.

    ``view_a`` is the view's A factor (k × in, scaling 1, balanced: √Σ Vᵀ,
    rows by singular value); the adapter's own A is ``view_a / √scaling``.
    Where ΔW has fewer than ``rank`` components, seeded random directions
    orthogonal to them, of PEFT's initial norm, complete the frame (the same
    on every node). ``gain`` scales the whole frame (the step size the trained factor sees).
    With ``scale="unit"`` the top rows are normalised to :data:`FILL_NORM` too
    (the same directions: the view's rows are orthogonal).
    """
    _check_scale(scale)
    dim = int(view_a.shape[1])
    k = min(_significant(np.linalg.norm(view_a, axis=1)) if view_a.size else 0, rank)
    top = np.asarray(view_a[:k], dtype=np.float64) / np.sqrt(scaling)
    basis = orthonormal_rows(top, rank, dim, _frame_seed(run_seed, server_round, module))
    if scale == "unit":
        return (gain * FILL_NORM * basis).astype(np.float32)
    return (gain * np.concatenate([top, basis[k:] * FILL_NORM])).astype(np.float32)


def _check_scale(scale: str) -> None:
    if scale not in FRAME_SCALES:
        raise ValueError(f"frame scale must be one of {FRAME_SCALES}, got {scale!r}")


def frame_columns(
    view_b: np.ndarray, rank: int, scaling: float, gain: float = 1.0, scale: FrameScale = "balanced"
) -> np.ndarray:
    """The frozen B (out × rank) of an A round: the global adapter's top columns, zero where ΔW has fewer.

    No random completion: a zero column of B gives its row of A no gradient,
    so an A round never adds directions the global update does not have.
    With ``scale="unit"`` the columns are an orthonormal basis of the same
    directions at :data:`FILL_NORM`.
    """
    _check_scale(scale)
    out = int(view_b.shape[0])
    k = min(_significant(np.linalg.norm(view_b, axis=0)) if view_b.size else 0, rank)
    frame = np.zeros((out, rank))
    top = np.asarray(view_b[:, :k], dtype=np.float64) / np.sqrt(scaling)
    if scale == "unit" and k:
        basis = orthonormal_rows(top.T, k, out)
        frame[:, : basis.shape[0]] = FILL_NORM * basis.T
    else:
        frame[:, :k] = top
    return (gain * frame).astype(np.float32)


def gradient_subframe(frame_gradient: np.ndarray, rank: int, factor: Factor) -> np.ndarray:
    """The R × r orthonormal mixing Q that puts the most of a node's gradient into its rank-r sub-frame.

    ``frame_gradient`` is the gradient of the node's loss with respect to the
    trained factor of a rank-R adapter in the full frame: out × R (∂L/∂B with
    A = F) in a B round, R × in (∂L/∂A with B = C) in an A round. The node then
    freezes ``Qᵀ F`` (B round) or ``C Q`` (A round) at its own rank r: its
    update still lies in the frame, and the gradient its trained factor sees,
    ``G Fᵀ Q`` or ``Qᵀ Cᵀ G``, keeps the largest share ‖·‖² any r combinations
    of the frame's directions can (Eckart–Young: the top-r singular vectors).
    Where the gradient is zero (a module consent keeps the node off), Q is the
    frame's leading r directions, as under ``top``. GaLore chooses its
    projection the same way, from the gradient's own singular vectors.
    """
    g = np.asarray(frame_gradient, dtype=np.float64)
    frame_rank = g.shape[1] if factor == "b" else g.shape[0]
    if not 0 < rank <= frame_rank:
        raise ValueError(f"sub-frame rank {rank} must be in [1, {frame_rank}] (the frame's rank)")
    if not np.isfinite(g).all() or not g.any():
        return np.eye(frame_rank)[:, :rank]
    if factor == "b":
        _, _, vt = np.linalg.svd(g, full_matrices=False)  # right singular vectors: combinations of the frame's rows
        q = vt.T
    else:
        q, _, _ = np.linalg.svd(g, full_matrices=False)  # left singular vectors: combinations of the frame's columns
    if q.shape[1] < rank:  # fewer singular vectors than r (R > the other dimension): complete with the frame's own
        q = orthonormal_rows(np.concatenate([q.T, np.eye(frame_rank)]), rank, frame_rank).T
    return q[:, :rank]


def factor_of_round(server_round: int, schedule: str) -> Factor:
    """The factor that trains in ``server_round`` under ``schedule`` (``b``: always B; ``alternate``: B, A, B, …).

    Round 1 is always a B round: with the global update still zero there is no
    column frame for an A round to train against.
    """
    if schedule == "b":
        return "b"
    if schedule == "alternate":
        return "b" if server_round % 2 == 1 else "a"
    raise ValueError(f"`schedule` must be 'b' or 'alternate', got {schedule!r}")


__all__ = [
    "FILL_NORM",
    "FRAME_SCALES",
    "SUBFRAMES",
    "Factor",
    "FrameScale",
    "Subframe",
    "factor_of_round",
    "frame_columns",
    "frame_rows",
    "gradient_subframe",
    "orthonormal_rows",
]
