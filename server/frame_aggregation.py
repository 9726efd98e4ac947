"""Reach-weighted aggregation in the shared frame: each direction of the frame averaged over the nodes that train it.

Under a shared-frame design (``client.frames``) every update of a round lies in
one rank-R frame: its row space (a B round: A frozen to the frame's rows) or
its column space (an A round: B frozen to its columns). A node of rank r < R
trains only r of the frame's R directions, its *sub-frame*, and leaves the
others alone. In the plain weighted mean its zero in the directions it cannot
reach counts with its full weight, so every direction that only the rank-R
nodes train moves by their share alone: with 2 of 6 nodes at rank 4, twelve of
sixteen directions move by 4/6 of the rank-16 nodes' mean. HeteroFL averages
each parameter over the clients that hold it; in the frame the parameters are
the update's coordinates, and what a node holds is its sub-frame, a projector
Pᵢ (R × R) read off the factor it kept frozen. The weighted least-squares
update given every node's partial view, ``X (Σ wᵢ Pᵢ) = Σ wᵢ Cᵢ``, is

    X = (Σ wᵢ Cᵢ) (Σ wᵢ Pᵢ)⁺      (Cᵢ = the node's update in frame coordinates)

which is the plain weighted mean when every node reaches the whole frame, and
the per-direction mean over the nodes that reach it when sub-frames are nested
(the frame's leading r directions). Consent's slices (``models.consent.adapt_support``)
are kept: a slice on the side away from the frame (a head's output rows in a B
round) weights each group of rows by the nodes that may change it; a module
that some node may change only in part *along* the frame's side falls back to
the consent-weighted mean (``server.aggregation.exact_aggregate``), as does any
part of an update outside the frame (nothing of an honest node's).

The frame's basis is the coordinator's own, rebuilt from the view it sent
(:func:`frame_bases`), never a node's claim; a node's sub-frame only decides how
much of the frame its update is trusted to speak for, and never more than the
whole frame (a node that reaches every direction counts as a rank-R node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from sentinel.client.frames import Factor, FrameScale, frame_columns, frame_rows, orthonormal_rows
from sentinel.protos.messages import LORA_ALPHA_PER_RANK
from sentinel.server.aggregation import LoraUpdate, common_modules, exact_aggregate, normalised_weights

Side = Literal["rows", "columns"]
REACH_TOLERANCE = 1e-6
"""Singular values of a node's frozen factor in frame coordinates below this share of its largest do not count as reach."""
FRAME_TOLERANCE = 1e-4
"""Share of a frozen factor's norm that may lie off the round's frame (float32 factors carry ~1e-7)."""


@dataclass(frozen=True)
class FrameBasis:
    """The round's frame for one module: an orthonormal basis and the side of ΔW it spans."""

    basis: np.ndarray
    """k × dim, orthonormal rows (k ≤ R: an A round's frame has as many directions as ΔW had)."""
    side: Side
    """``rows``: the frame spans ΔW's row space (a B round, A frozen); ``columns``: its column space (an A round)."""


def frame_bases(
    view_factors: Mapping[str, tuple[np.ndarray, np.ndarray]],
    shapes: Mapping[str, tuple[int, int]],
    factor: Factor,
    frame_rank: int,
    run_seed: int,
    server_round: int,
    gain: float,
    scale: FrameScale,
) -> dict[str, FrameBasis]:
    """The frame of every module as nodes build it from the view they were sent (``client.training._start_in_frame``).

    ``view_factors`` is module → (A, B) of the view; ``shapes`` module → ΔW's (out, in).
    """
    bases: dict[str, FrameBasis] = {}
    for module, (out, inp) in shapes.items():
        view_a, view_b = view_factors.get(module, (np.zeros((0, inp)), np.zeros((out, 0))))
        if factor == "b":
            rows = frame_rows(view_a, frame_rank, LORA_ALPHA_PER_RANK, run_seed, server_round, module, gain=gain, scale=scale)
            bases[module] = FrameBasis(orthonormal_rows(rows, frame_rank, inp), "rows")
        else:
            columns = frame_columns(view_b, frame_rank, LORA_ALPHA_PER_RANK, gain=gain, scale=scale)
            bases[module] = FrameBasis(orthonormal_rows(columns.T, frame_rank, out), "columns")
    return bases


def frame_problem(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    frames: Mapping[str, FrameBasis],
    supports: Mapping[str, np.ndarray] | None = None,
) -> str:
    """Why an update's frozen factors leave the round's frame ('' when every one lies in it).

    ``pairs`` is module → (A, B) as the node sent them. In a B round A is the
    frozen factor and must lie in the frame's rows, in an A round B in its
    columns; a consent slice along the frame (``supports``, as
    ``models.consent.adapt_support`` gives them) zeroes that part of the frame
    on the node, so the check is against the frame as consent left it. An
    update outside the frame would still be aggregated exactly, but it would
    raise the global ΔW's rank past the frame's and with it every node's exact
    view: a node must not be able to grow the downlink of all the others.
    """
    for module, (a, b) in sorted(pairs.items()):
        frame = frames.get(module)
        if frame is None:
            continue
        frozen = np.asarray(a if frame.side == "rows" else np.asarray(b).T, dtype=np.float64)
        norm = float(np.linalg.norm(frozen))
        if norm == 0.0:
            continue
        basis = frame.basis
        along = _along_frame(None if supports is None else supports.get(module), frame.side)
        if along is not None:  # a slice along the frame: the node's frame has those entries zeroed
            basis = orthonormal_rows(basis * along[None, :], basis.shape[0], basis.shape[1])
        if basis.shape[0] == 0:
            return f"outside the shared frame: module `{module}` has a frozen factor where the round's frame is empty"
        residual = float(np.linalg.norm(frozen - (frozen @ basis.T) @ basis)) / norm
        if residual > FRAME_TOLERANCE:
            return (
                f"outside the shared frame: module `{module}`'s frozen factor has {residual:.1e} of its norm off the "
                f"round's frame (tolerance {FRAME_TOLERANCE:g})"
            )
    return ""


def _reach(basis: np.ndarray, frozen: np.ndarray) -> np.ndarray:
    """The projector (k × k) onto the part of the frame a node's frozen factor spans (its rows: dim-long vectors)."""
    y = basis @ np.asarray(frozen, dtype=np.float64).T  # k × r: the frozen factor in frame coordinates
    if not y.any():
        return np.zeros((basis.shape[0], basis.shape[0]))
    u, s, _ = np.linalg.svd(y, full_matrices=False)
    u = u[:, s > REACH_TOLERANCE * s.max()]
    return u @ u.T


def _oriented(mask: np.ndarray, side: Side) -> np.ndarray:
    """A consent support (broadcasting to ΔW) turned so that its axis 1 runs along the frame."""
    m = np.asarray(mask, dtype=bool)
    return m.T if side == "columns" else m


def _along_frame(mask: np.ndarray | None, side: Side) -> np.ndarray | None:
    """The entries along the frame a consent support keeps (None when it does not vary along the frame)."""
    if mask is None:
        return None
    m = _oriented(mask, side)
    return m.reshape(-1) if m.shape[1] > 1 else None


def _mask_kind(mask: np.ndarray | None, side: Side) -> tuple[str, np.ndarray | None]:
    """How a consent support restricts a module: ``all``, ``none``, ``across`` (rows away from the frame) or ``along``."""
    if mask is None or bool(np.all(mask)):
        return "all", None
    if not bool(np.any(mask)):
        return "none", None
    if _along_frame(mask, side) is not None:
        return "along", None
    return "across", _oriented(mask, side).reshape(-1)


def _module_mean(
    deltas: Sequence[np.ndarray], frozen: Sequence[np.ndarray], weights: np.ndarray, masks: Sequence[np.ndarray | None], frame: FrameBasis
) -> np.ndarray | None:
    """One module's reach-weighted mean, or None when a consent slice runs along the frame (the caller falls back).

    ``frozen`` holds each node's frozen factor with the frame's vectors as rows (A, or Bᵀ in an A round).
    """
    transpose = frame.side == "columns"  # work on ΔWᵀ, whose row space is the column frame
    kinds = [_mask_kind(k, frame.side) for k in masks]
    if any(kind == "along" for kind, _ in kinds):
        return None
    basis = frame.basis
    d = [np.asarray(x, dtype=np.float64).T if transpose else np.asarray(x, dtype=np.float64) for x in deltas]
    rows = d[0].shape[0]
    row_weights = np.zeros((len(d), rows))
    for i, (kind, rowmask) in enumerate(kinds):
        row_weights[i] = 0.0 if kind == "none" else weights[i] * (rowmask if rowmask is not None else 1.0)
    coords = [x @ basis.T for x in d]  # rows × k
    reach = [_reach(basis, x) for x in frozen]
    outside = sum(w[:, None] * (x - c @ basis) for w, x, c in zip(row_weights, d, coords, strict=True))
    cover = row_weights.sum(axis=0)
    mean = np.zeros_like(d[0])
    signatures, groups = np.unique(row_weights.T, axis=0, return_inverse=True)
    for g, signature in enumerate(signatures):
        idx = np.flatnonzero(groups.reshape(-1) == g)
        if not signature.any():
            continue
        gram = sum(w * p for w, p in zip(signature, reach, strict=True))
        total = sum(w * c[idx] for w, c in zip(signature, coords, strict=True))
        mean[idx] = (total @ np.linalg.pinv(gram, rcond=REACH_TOLERANCE, hermitian=True)) @ basis
    mean += np.divide(outside, cover[:, None], out=np.zeros_like(mean), where=cover[:, None] > 0)
    return mean.T if transpose else mean


def reach_weighted_aggregate(
    updates: Sequence[LoraUpdate],
    frames: Mapping[str, FrameBasis],
    supports: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> dict[str, np.ndarray]:
    """The mean of the updates' products, each frame direction over the nodes that reach it (module docstring).

    ``frames`` is module → the round's :class:`FrameBasis` (:func:`frame_bases`);
    a module without one, or with a consent slice along its frame, is the
    consent-weighted mean of ``server.aggregation.exact_aggregate``.
    """
    modules = common_modules(updates)
    w = normalised_weights([u.weight for u in updates])
    out: dict[str, np.ndarray] = {}
    for module in modules:
        frame = frames.get(module)
        if frame is None or frame.basis.shape[0] == 0:
            continue
        masks = [s.get(module) for s in supports] if supports is not None else [None] * len(updates)
        frozen = [u.a[module] if frame.side == "rows" else u.b[module].T for u in updates]
        mean = _module_mean([u.delta(module) for u in updates], frozen, w, masks, frame)
        if mean is not None:
            out[module] = mean
    rest = [m for m in modules if m not in out]
    if rest:  # the consent-weighted mean, computed only for the modules the frame does not decide
        only = [replace(u, a={m: u.a[m] for m in rest}, b={m: u.b[m] for m in rest}) for u in updates]
        out.update(exact_aggregate(only, supports))
    return out


__all__ = ["FRAME_TOLERANCE", "FrameBasis", "REACH_TOLERANCE", "frame_bases", "frame_problem", "reach_weighted_aggregate"]
