"""What regrowth needs around `models.pruning.regrow_heads`: kept weights that last, and a learning-rate boost.

The plasticity cycle prunes heads and, when central evaluation drops, brings
the most recently pruned ones back "from their kept weights", training them
faster for a few rounds (the seed's differential learning rates). Three pieces:

- `record_to_arrays` / `record_from_arrays`: a `PruneRecord` (the removed
  heads' exact weights) as flat ``dict[str, ndarray]`` and back, bit for bit,
  so the kept weights survive checkpoints and ``--resume``.
- `kept_head_deltas` / `restore_head_deltas`: the same at the level of the
  coordinator's global state, where heads are masked rather than removed:
  snapshot a head's slices of the dense ΔW when it is pruned, put exactly
  those values back when it regrows.
- `HeadLRBoost`: multiplies the optimiser's update of the grown heads' own
  weights by a factor; `HeadBoost` is what a node is told to boost (component
  ids and the factor), `boosted_heads` resolves the ids against its model.

Why the boost scales updates, not gradients or param groups: a head's weights
are slices (rows of q/k/v, columns of o) of tensors every head shares, so an
optimiser param group cannot hold them; and Adam is invariant to gradient
scale, so a gradient hook would not change its step. The boost snapshots the
slices before ``optimizer.step()`` and rescales their change after it, which
is the same as a larger learning rate for those entries under SGD, Adam and
AdamW (weight decay included). With PEFT LoRA the slices a head owns alone are
the rows of ``lora_B`` of q/k/v (ΔW rows = B rows · A) and the columns of
``lora_A`` of o (ΔW columns = B · A columns); the shared factors (q/k/v
``lora_A``, o ``lora_B``) keep the base rate. Trainable base weights (a fully
fine-tuned student) are boosted in the same slices of the weight itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from types import TracebackType
from typing import Any, Self

import numpy as np
import torch
from peft.tuners.lora import LoraLayer
from sentinel.models.components import (
    ModelLayout,
    base_layer_of,
    check_component,
    head_feature_ranges,
    model_layout,
    projection_role,
)
from sentinel.models.exceptions import ComponentError
from sentinel.models.head_mask import attention_sites
from sentinel.models.pruning import KV_IDS_ATTR, HeadWeights, KVWeights, PruneRecord, PruningError
from transformers.pytorch_utils import Conv1D

__all__ = [
    "HeadBoost",
    "HeadLRBoost",
    "boosted_heads",
    "kept_head_deltas",
    "record_from_arrays",
    "record_to_arrays",
    "restore_head_deltas",
]

# ---------------------------------------------------------------- PruneRecord <-> arrays

PARAMS_BEFORE_KEY = "params_before"
PARAMS_AFTER_KEY = "params_after"
_HEAD_KEY = re.compile(r"head/(\d+)/(\d+)/(\w+)")
_KV_KEY = re.compile(r"kv/(\d+)/(\d+)/(\w+)")
_LAYER_KEY = re.compile(r"heads/(\d+)")


def record_to_arrays(record: PruneRecord) -> dict[str, np.ndarray]:
    """A `PruneRecord` as flat arrays: ``heads/<layer>``, ``head/<layer>/<head>/<field>``, ``kv/<layer>/<kv>/<field>``.

    Weights keep their dtype (float32 stays float32), so a round trip is exact.
    """
    arrays: dict[str, np.ndarray] = {
        PARAMS_BEFORE_KEY: np.asarray(record.params_before, dtype=np.int64),
        PARAMS_AFTER_KEY: np.asarray(record.params_after, dtype=np.int64),
    }
    for layer, heads in record.heads.items():
        arrays[f"heads/{layer}"] = np.asarray(heads, dtype=np.int64)
    for prefix, items in (("head", record.weights), ("kv", record.kv_weights)):
        for (layer, index), weights in items.items():
            for f in fields(weights):
                value = getattr(weights, f.name)
                if value is not None:
                    arrays[f"{prefix}/{layer}/{index}/{f.name}"] = value.detach().cpu().numpy().copy()
    return arrays


def record_from_arrays(arrays: Mapping[str, np.ndarray]) -> PruneRecord:
    """The `PruneRecord` that `record_to_arrays` flattened (tensors on CPU)."""
    heads: dict[int, tuple[int, ...]] = {}
    parts: dict[str, dict[tuple[int, int], dict[str, torch.Tensor]]] = {"head": {}, "kv": {}}
    for key, value in arrays.items():
        if key in (PARAMS_BEFORE_KEY, PARAMS_AFTER_KEY):
            continue
        if m := _LAYER_KEY.fullmatch(key):
            heads[int(m.group(1))] = tuple(int(h) for h in np.asarray(value).tolist())
        elif m := (_HEAD_KEY.fullmatch(key) or _KV_KEY.fullmatch(key)):
            kind = key.split("/", 1)[0]
            parts[kind].setdefault((int(m.group(1)), int(m.group(2))), {})[m.group(3)] = torch.from_numpy(
                np.array(value, copy=True)
            )
        else:
            raise PruningError(f"`arrays`: unknown prune-record key {key!r}")
    try:
        optional = {"q_bias": None}  # bias-free models (Llama) store no bias arrays
        weights = {k: HeadWeights(**{**optional, **v}) for k, v in parts["head"].items()}
        kv_weights = {k: KVWeights(**{"k_bias": None, "v_bias": None, **v}) for k, v in parts["kv"].items()}
    except TypeError as e:
        raise PruningError(f"`arrays`: incomplete or unknown head weight fields: {e}") from e
    listed = {(layer, h) for layer, hs in heads.items() for h in hs}
    if listed != set(weights):
        raise PruningError(f"`arrays`: heads listed {sorted(listed)} differ from heads with weights {sorted(weights)}")
    return PruneRecord(
        heads=heads,
        weights=weights,
        kv_weights=kv_weights,
        params_before=int(arrays.get(PARAMS_BEFORE_KEY, 0)),
        params_after=int(arrays.get(PARAMS_AFTER_KEY, 0)),
    )


# ---------------------------------------------------------------- kept slices of the global ΔW


def _head_delta_slices(
    deltas: Mapping[str, np.ndarray], layout: ModelLayout, heads: Mapping[int, Iterable[int]]
) -> list[tuple[str, int, int, int]]:
    """(module, axis, start, stop) of every ΔW slice the given heads own alone."""
    wanted = {int(layer): {int(h) for h in hs} for layer, hs in heads.items()}
    group = layout.kv_group_size
    out: list[tuple[str, int, int, int]] = []
    for module in sorted(deltas):
        located = projection_role(layout.family, module)
        if located is None or located[0] not in wanted:
            continue
        layer, role = located
        for head in sorted(wanted[layer]):
            if role in ("k", "v") and group > 1:
                first = (head // group) * group
                if head != first or not set(range(first, first + group)) <= wanted[layer]:
                    continue  # a shared key/value head: restored only with its whole group, once
            axis = 1 if role == "o" else 0
            out.extend((module, axis, start, stop) for start, stop in head_feature_ranges(layout, role, head))
    return out


def _slice_key(module: str, axis: int, start: int, stop: int) -> str:
    return f"{module}#{axis}:{start}:{stop}"


_SLICE_KEY = re.compile(r"(?P<module>.+)#(?P<axis>[01]):(?P<start>\d+):(?P<stop>\d+)")


def kept_head_deltas(
    deltas: Mapping[str, np.ndarray], layout: ModelLayout, heads: Mapping[int, Iterable[int]]
) -> dict[str, np.ndarray]:
    """Copies of the slices of the dense global ΔW that `heads` (layer → ids) own, to keep while they are pruned.

    Keys read ``<module>#<axis>:<start>:<stop>`` (axis 0 = output rows of
    q/k/v, 1 = input columns of o; ΔW is out × in). A GQA key/value slice is
    kept only when its whole group is listed (else other heads still own it).
    Modules that are not attention projections carry no head and are skipped.
    """
    kept: dict[str, np.ndarray] = {}
    for module, axis, start, stop in _head_delta_slices(deltas, layout, heads):
        array = np.asarray(deltas[module])
        kept[_slice_key(module, axis, start, stop)] = np.take(array, range(start, stop), axis=axis).copy()
    return kept


def restore_head_deltas(deltas: Mapping[str, np.ndarray], kept: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A new ΔW mapping with every kept slice put back exactly; `deltas` is not changed.

    Modules without a kept slice are shared with `deltas`, not copied.
    """
    out = dict(deltas)
    copied: set[str] = set()
    for key, values in kept.items():
        m = _SLICE_KEY.fullmatch(key)
        if m is None:
            raise ValueError(f"`kept`: malformed slice key {key!r}")
        module, axis, start, stop = m["module"], int(m["axis"]), int(m["start"]), int(m["stop"])
        if module not in out:
            raise ValueError(f"`kept`: slice {key!r} is for module {module!r}, which `deltas` lacks")
        if module not in copied:
            out[module] = np.array(out[module], copy=True)
            copied.add(module)
        index = [slice(None), slice(None)]
        index[axis] = slice(start, stop)
        target = out[module][tuple(index)]
        if target.shape != np.shape(values):
            raise ValueError(f"`kept`: slice {key!r} has shape {np.shape(values)}, ΔW there is {target.shape}")
        out[module][tuple(index)] = values
    return out


# ---------------------------------------------------------------- differential learning rate


def _projection_modules(site: Any, family: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    attn = site.attention
    if family == "bert":
        return attn.query, attn.key, attn.value, site.o_module
    if family == "gpt2":
        return attn.c_attn, attn.c_attn, attn.c_attn, site.o_module
    return attn.q_proj, attn.k_proj, attn.v_proj, site.o_module


def _trainable_slices(module: torch.nn.Module, start: int, stop: int, outputs: bool) -> list[tuple[torch.Tensor, int, int, int]]:
    """(tensor, dim, start, stop) of the trainable entries of `module` that own features [start, stop)."""
    out: list[tuple[torch.Tensor, int, int, int]] = []
    if isinstance(module, LoraLayer):
        for adapter in module.active_adapters:
            if adapter in module.lora_A:
                tensor = module.lora_B[adapter].weight if outputs else module.lora_A[adapter].weight
                if tensor.requires_grad:
                    out.append((tensor, 0 if outputs else 1, start, stop))
    base, _ = base_layer_of(module)
    conv = isinstance(base, Conv1D)
    if base.weight.requires_grad:
        dim = (1 if conv else 0) if outputs else (0 if conv else 1)
        out.append((base.weight, dim, start, stop))
    if outputs and base.bias is not None and base.bias.requires_grad:
        out.append((base.bias, 0, start, stop))
    return out


def head_update_slices(model: torch.nn.Module, heads: Mapping[int, Iterable[int]]) -> list[tuple[torch.Tensor, int, int, int]]:
    """The trainable tensor slices ``(tensor, dim, start, stop)`` that the given present heads own alone.

    Positions follow the model's current (possibly pruned) layout; a GQA
    key/value head counts only when every present query head of its group is listed.
    """
    layout = model_layout(model)
    d = layout.head_dim
    out: list[tuple[torch.Tensor, int, int, int]] = []
    for site in attention_sites(model):
        wanted = {int(h) for h in heads.get(site.layer, ())}
        if not wanted:
            continue
        absent = wanted - set(site.heads)
        if absent:
            raise PruningError(f"`heads`: layer {site.layer} heads {sorted(absent)} are not present in the model")
        q, k, v, o = _projection_modules(site, layout.family)
        n = len(site.heads)
        k_off, v_off = (n * d, 2 * n * d) if layout.family == "gpt2" else (0, 0)
        for head in sorted(wanted):
            pos = site.heads.index(head)
            out += _trainable_slices(q, pos * d, (pos + 1) * d, outputs=True)
            out += _trainable_slices(o, pos * d, (pos + 1) * d, outputs=False)
            if layout.num_kv_heads == layout.num_heads:
                out += _trainable_slices(k, k_off + pos * d, k_off + (pos + 1) * d, outputs=True)
                out += _trainable_slices(v, v_off + pos * d, v_off + (pos + 1) * d, outputs=True)
        if layout.num_kv_heads != layout.num_heads:
            kv_ids = tuple(getattr(site.attention, KV_IDS_ATTR, range(layout.num_kv_heads)))
            for pos, kv in enumerate(kv_ids):
                members = {h for h in site.heads if h // layout.kv_group_size == kv}
                if members and members <= wanted:
                    out += _trainable_slices(k, pos * d, (pos + 1) * d, outputs=True)
                    out += _trainable_slices(v, pos * d, (pos + 1) * d, outputs=True)
    return out


@dataclass(frozen=True)
class HeadBoost:
    """Heads to train at a boosted learning rate this round: component ids ``layer.{i}.head.{j}`` and the factor."""

    heads: tuple[str, ...]
    factor: float


def boosted_heads(components: Iterable[str], layout: ModelLayout) -> dict[int, tuple[int, ...]]:
    """Layer → sorted heads named by `components`, each of which must be an attention head of `layout`.

    The ids come from the coordinator (``boost-heads``), so each is checked
    against the component-id grammar and the model: a `ComponentError` (a
    ``ValueError``) names the first id that is malformed, out of range or not a head.
    """
    heads: dict[int, set[int]] = {}
    for cid in components:
        ref = check_component(layout, cid)
        if ref.kind != "head" or ref.layer is None or ref.head is None:
            raise ComponentError(f"boost component {cid!r} is a {ref.kind}, not an attention head (`layer.<i>.head.<j>`)")
        heads.setdefault(ref.layer, set()).add(ref.head)
    return {layer: tuple(sorted(hs)) for layer, hs in sorted(heads.items())}


class HeadLRBoost:
    """Multiply `optimizer`'s update of the given heads' own weights by `factor` (see the module docstring).

    Installs step pre/post hooks on the optimiser; use as a context manager
    or call `remove()` after the boosted rounds. `factor = 1` changes nothing.
    Build it after the optimiser and after any pruning or regrowth (those
    replace parameters).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, heads: Mapping[int, Iterable[int]], factor: float
    ) -> None:
        if not factor > 0:
            raise ValueError(f"`factor` must be > 0, got {factor!r}")
        self.factor = float(factor)
        self.slices = head_update_slices(model, heads)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self.slices = [s for s in self.slices if id(s[0]) in in_optimizer]
        self._before: list[torch.Tensor] = []
        self._handles = [
            optimizer.register_step_pre_hook(self._snapshot),
            optimizer.register_step_post_hook(self._rescale),
        ]

    def _snapshot(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        del optimizer, args, kwargs
        self._before = [t.detach().narrow(dim, start, stop - start).clone() for t, dim, start, stop in self.slices]

    def _rescale(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        del optimizer, args, kwargs
        with torch.no_grad():
            for (tensor, dim, start, stop), before in zip(self.slices, self._before, strict=True):
                now = tensor.narrow(dim, start, stop - start)
                now.copy_(before + self.factor * (now - before))
        self._before = []

    def remove(self) -> None:
        """Uninstall the hooks; later steps use the base rate everywhere. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
