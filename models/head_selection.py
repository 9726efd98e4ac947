"""Which heads to prune: a head mask from per-head scores, and two baseline scores.

The federation ranks heads by aggregated importance (`models.importance`);
`lowest_heads_mask` turns any ``[num_layers, num_heads]`` score into a 0/1
mask that prunes the lowest-scored share of heads, only among heads consent
lets it prune. `head_magnitude` (weight norms) and `random_head_scores` are
the baselines importance-based pruning is compared with.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sentinel.models.components import ModelLayout, model_layout
from sentinel.models.pruning import read_head_weights

__all__ = ["head_magnitude", "lowest_heads_mask", "random_head_scores"]


def head_magnitude(model: torch.nn.Module) -> np.ndarray:
    """``[L, H]``: the ℓ2 norm of all weights a head owns (q, k, v rows and o columns).

    Grouped key/value rows (Llama GQA) are shared and left out. Pruned heads
    get NaN. A plain model (merge a PeftModel first).
    """
    layout = model_layout(model)
    scores = np.full((layout.num_layers, layout.num_heads), np.nan)
    with torch.no_grad():
        for (layer, head), w in read_head_weights(model).items():
            parts = [w.q_weight, w.o_weight, w.k_weight, w.v_weight]
            scores[layer, head] = math.sqrt(sum(float(p.double().pow(2).sum()) for p in parts if p is not None))
    return scores


def random_head_scores(layout: ModelLayout, seed: int) -> np.ndarray:
    """``[L, H]`` uniform random scores under `seed`: the random-pruning baseline."""
    return np.random.default_rng(seed).random((layout.num_layers, layout.num_heads))


def lowest_heads_mask(
    scores: np.ndarray,
    share: float,
    prunable: np.ndarray | None = None,
    current: np.ndarray | None = None,
    min_heads_per_layer: int = 1,
) -> np.ndarray:
    """A 0/1 ``[L, H]`` mask pruning ``round(share * L * H)`` heads in all, lowest `scores` first.

    Ranking is global (across layers), as in Michel et al. 2019; per-layer
    ℓ2-normalised importance makes layers comparable. Heads already at 0 in
    `current` stay pruned and count towards the share. Only heads where
    `prunable` is True (consent allows ``prune``) are removed, and every layer
    keeps at least `min_heads_per_layer` heads; when these limits leave fewer
    candidates than the share asks for, fewer heads are pruned (the caller can
    compare the mask's zeros with the target). NaN scores rank lowest.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"`scores` must be [num_layers, num_heads], got shape {list(scores.shape)}")
    if not 0.0 <= share < 1.0:
        raise ValueError(f"`share` must be in [0, 1), got {share!r}")
    layers, heads = scores.shape
    if not 1 <= min_heads_per_layer <= heads:
        raise ValueError(f"`min_heads_per_layer` must be in [1, {heads}], got {min_heads_per_layer}")
    mask = np.ones_like(scores, dtype=np.float32) if current is None else np.asarray(current, dtype=np.float32).copy()
    allowed = np.ones_like(scores, dtype=bool) if prunable is None else np.asarray(prunable, dtype=bool)
    for name, array in (("current", mask), ("prunable", allowed)):
        if array.shape != scores.shape:
            raise ValueError(f"`{name}` has shape {list(array.shape)}, `scores` has {list(scores.shape)}")
    target = int(round(share * layers * heads))
    ranked = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(ranked, axis=None, kind="stable")
    for flat in order:
        if int((mask == 0).sum()) >= target:
            break
        layer, head = divmod(int(flat), heads)
        if mask[layer, head] == 0 or not allowed[layer, head]:
            continue
        if int(mask[layer].sum()) <= min_heads_per_layer:
            continue
        mask[layer, head] = 0.0
    return mask
