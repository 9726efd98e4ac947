"""The shared frame a node trains in: one LoRA factor frozen to the global update's own basis.

A node that trains both LoRA factors from ``B = 0`` each round (a *fresh*
adapter) adds a rank-r update in a new random subspace every round, so the
global ΔW grows in rank by the sum of the nodes' ranks per round and no node
can be given it exactly at its own rank. Here one factor is frozen to a frame
every node shares, derived from the global ΔW itself, and only the other one
trains:

- a **B round** freezes A to ``c · Vᵀ[:r]``, the global update's top right
  singular vectors (completed by shared random directions where ΔW has fewer),
  and trains B from zero: the update ``s · B · A`` changes ΔW only within
  rows it already spans;
- an **A round** freezes B to ``c · U[:, :r]``, its top left singular vectors,
  and trains A from zero: the update changes ΔW only within its column space.

Every node's update then lies in the same rank-R frame (R the largest rank),
so the exact aggregate Σ wᵢ sᵢ Bᵢ Aᵢ keeps the global ΔW at rank ≤ R and a
rank-R factorisation of it is exact: nodes receive the exact global model at
the cost of a rank-R view. Alternating the rounds lets both the row and the
column space move (as in alternating LoRA optimisation, RoLoRA); ``c`` is the
row norm of PEFT's own initialisation of A (``kaiming_uniform(a=√5)``: 1/√3),
so the trained factor sees the step size it would see on a fresh adapter.

Pure numpy; the node's training (``client.training``) applies the frame to its adapter.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal

import numpy as np

Factor = Literal["a", "b"]
"""Which LoRA factor trains in a round: ``b`` (A frozen) or ``a`` (B frozen)."""

FRAME_SCALE: Final = 1.0 / np.sqrt(3.0)
"""Norm of each frozen frame vector: PEFT's initial row norm of A, ``kaiming_uniform(a=√5)`` on (r, in)."""


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


def frame_rows(view_a: np.ndarray, rank: int, run_seed: int, server_round: int, module: str) -> np.ndarray:
    """The frozen A (rank × in) of a B round: the view's row directions, scaled to :data:`FRAME_SCALE`.

    ``view_a`` is the view's A factor (k × in, rows ordered by singular value).
    """
    dim = int(view_a.shape[1])
    rows = orthonormal_rows(view_a, rank, dim, _frame_seed(run_seed, server_round, module))
    return (FRAME_SCALE * rows).astype(np.float32)


def frame_columns(view_b: np.ndarray, rank: int) -> np.ndarray:
    """The frozen B (out × rank) of an A round: the view's column directions, scaled; zero where ΔW has fewer.

    No random completion: a zero column of B gives its row of A no gradient,
    so an A round never adds directions the global update does not have.
    """
    out = int(view_b.shape[0])
    basis = orthonormal_rows(np.asarray(view_b).T, min(rank, out), out)
    frame = np.zeros((out, rank))
    frame[:, : basis.shape[0]] = basis.T
    return (FRAME_SCALE * frame).astype(np.float32)


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


__all__ = ["FRAME_SCALE", "Factor", "factor_of_round", "frame_columns", "frame_rows", "orthonormal_rows"]
