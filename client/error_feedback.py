"""Error feedback for a node that sends less than it trained (``subframe="trained"`` below the frame's rank).

Such a node trains in the whole rank-R frame and sends the best rank-r part
of its update (``client.training.truncate_in_frame``). What the truncation
leaves out is not lost: the node keeps it as its *residual* (ΔW-space
factors X Y per module, LoRA scaling included) in its Flower ``Context.state``
and adds it to its next round's update before truncating again, the error
feedback of compressed SGD (Seide et al. 2014; Karimireddy et al. 2019, EF-SGD).
Over rounds the node delivers what it trained, at its own uplink rank.

The residual is also written to the node's disk after every round (:func:`save_residual`, atomically, one
directory per round, the newest :data:`KEEP` kept), so a node that restarts, or a simulation resumed with
``--resume``, takes up the residual of its newest round before the one it trains (:func:`load_residual`): a
resumed run's nodes send what an uninterrupted run's would.

Only the part of the residual that lies in the round's frame can join an
update (every update stays in the shared frame, so aggregation stays exact);
the rest is carried on, and the residual is kept at rank ≤ R (its best rank-R
part, so a node's memory stays at the size of one rank-R adapter). Consent
applies to what is added: a slice the node may not change this round stays
exactly zero, and what consent removes is dropped, not carried.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord
from peft import PeftModel
from sentinel.client.frames import Factor
from sentinel.client.node import node_local_dir
from sentinel.models.consent import ConsentMask
from sentinel.models.fileio import write_dir_atomically
from sentinel.models.lora import lora_layers
from sentinel.protos.records import from_array_record, to_array_record

Residual = dict[str, tuple[np.ndarray, np.ndarray]]
"""Module path → (X, Y), out × k and k × in: the ΔW a node trained but has not sent is X @ Y."""

STATE_RESIDUAL = "sentinel.error-feedback"
"""The key of a node's residual in its ``Context.state`` (an ArrayRecord, two arrays per module)."""

_X, _Y = "::x", "::y"


def residual_record(residual: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> ArrayRecord:
    """The residual as an ArrayRecord for ``Context.state`` (keys ``<module>::x`` and ``<module>::y``)."""
    arrays: dict[str, np.ndarray] = {}
    for module, (x, y) in residual.items():
        arrays[module + _X], arrays[module + _Y] = x.astype(np.float32), y.astype(np.float32)
    return to_array_record(arrays)


def residual_from_record(record: ArrayRecord) -> Residual:
    """The residual kept in ``Context.state``; a malformed record (a half pair, mismatched shapes) is an error."""
    arrays = from_array_record(record)
    modules = {k[: -len(_X)] for k in arrays if k.endswith(_X)} | {k[: -len(_Y)] for k in arrays if k.endswith(_Y)}
    residual: Residual = {}
    for module in sorted(modules):
        x, y = arrays.get(module + _X), arrays.get(module + _Y)
        if x is None or y is None or x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[0]:
            raise ValueError(f"the error-feedback residual of module `{module}` is malformed")
        residual[module] = (x.astype(np.float64), y.astype(np.float64))
    return residual


KEEP = 2
"""Rounds of residuals a node keeps on disk: the newest and the one before (a resumed round reads the one before)."""
_ROUND_DIR = re.compile(r"round-(\d+)")
_FILE = "residual.npz"


def residual_store_dir(configured: str | None, node_keys: str | None, partition_id: int, key_id: str, run_id: int) -> Path:
    """Where a node keeps its residuals (``client.node.node_local_dir``): configured, beside a simulation's node keys,
    or the user cache under its key id and Flower run id."""
    return node_local_dir(configured, node_keys, partition_id, "node-state", "node-state", key_id, f"run-{int(run_id)}")


def _rounds(store: Path) -> list[tuple[int, Path]]:
    if not store.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in store.iterdir() if (m := _ROUND_DIR.fullmatch(p.name)) and (p / _FILE).is_file()]
    return sorted(found)


def save_residual(store: Path, server_round: int, residual: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write the residual left after ``server_round`` to ``store`` atomically; keep the newest :data:`KEEP` rounds."""
    arrays = {k: v.numpy() for k, v in residual_record(residual).items()}
    target = write_dir_atomically(store / f"round-{int(server_round):06d}", lambda d: np.savez(d / _FILE, **arrays))
    for _, old in _rounds(store)[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_residual(store: Path, before_round: int) -> Residual | None:
    """The residual of the newest round before ``before_round`` kept in ``store`` (None when there is none)."""
    earlier = [p for r, p in _rounds(store) if r < before_round]
    if not earlier:
        return None
    with np.load(earlier[-1] / _FILE, allow_pickle=False) as data:
        return residual_from_record(to_array_record({k: data[k] for k in data.files}))


def fold_residual(
    peft_model: PeftModel, factor: Factor, residual: Mapping[str, tuple[np.ndarray, np.ndarray]], scaling: float,
    mask: ConsentMask | None,
) -> Residual:
    """Add the in-frame part of ``residual`` to each module's trained factor, in place; return the part left out.

    B round (A = F frozen): B += X (Y F⁺) / s, and X (Y − Y F⁺ F) is carried.
    A round (B = C frozen): A += (C⁺ X) Y / s, and (X − C C⁺ X) Y is carried.
    Then consent's zeroes are restored on every masked factor.
    """
    adapter = peft_model.active_adapter
    carried: Residual = {}
    for name, module in lora_layers(peft_model):
        if name not in residual:
            continue
        x, y = (np.asarray(v, dtype=np.float64) for v in residual[name])
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        if x.shape[0] != b.shape[0] or y.shape[1] != a.shape[1]:
            raise ValueError(f"the error-feedback residual of `{name}` has shape {x.shape[0]}×{y.shape[1]}, "
                             f"the module {b.shape[0]}×{a.shape[1]}")
        if factor == "b":
            frame = a.detach().cpu().double().numpy()
            coef = y @ np.linalg.pinv(frame)  # k × R
            added, carried[name] = x @ coef / scaling, (x, y - coef @ frame)
            target = b
        else:
            frame = b.detach().cpu().double().numpy()
            coef = np.linalg.pinv(frame) @ x  # R × k
            added, carried[name] = coef @ y / scaling, (x - frame @ coef, y)
            target = a
        with torch.no_grad():
            target.add_(torch.from_numpy(added).to(target.device, target.dtype))
    if mask is not None:
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for pname, trainable in mask.trainable.items():
                params[pname].mul_(trainable.to(params[pname].device, params[pname].dtype))
    return carried


def merged_residual(parts: list[Mapping[str, tuple[np.ndarray, np.ndarray]]], max_rank: int) -> Residual:
    """The sum of residuals, module by module, cut to its best rank-``max_rank`` part (QR of both sides, then an SVD)."""
    modules = sorted({m for p in parts for m in p})
    merged: Residual = {}
    for module in modules:
        xs = [np.asarray(p[module][0], np.float64) for p in parts if module in p]
        ys = [np.asarray(p[module][1], np.float64) for p in parts if module in p]
        x, y = np.concatenate(xs, axis=1), np.concatenate(ys, axis=0)
        qx, rx = np.linalg.qr(x)
        qy, ry = np.linalg.qr(y.T)
        u, sigma, vt = np.linalg.svd(rx @ ry.T)
        top = float(sigma[0]) if sigma.size else 0.0
        keep = min(max_rank, int((sigma > top * 1e-12).sum()))  # drop the numerically zero directions
        merged[module] = ((qx @ u[:, :keep]) * sigma[:keep], vt[:keep] @ qy.T)
    return merged


__all__ = [
    "KEEP",
    "STATE_RESIDUAL",
    "Residual",
    "fold_residual",
    "load_residual",
    "merged_residual",
    "residual_from_record",
    "residual_record",
    "residual_store_dir",
    "save_residual",
]
