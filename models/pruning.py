"""Physical pruning and regrowth of attention heads (the plasticity cycle).

Pruning a head removes its weights: its rows of the q/k/v projections and its
input columns of the o projection, so the model gets smaller and faster, and
computes what the same model with that head masked computes (up to float
rounding). The removed slices are kept in a `PruneRecord`, from which
`regrow_heads` puts heads back, either exactly as they were ("restore") or
freshly initialised ("fresh").

How each family is rebuilt (checked against the installed transformers v5
forward code, which reshapes with ``view(..., -1, head_dim)``):

- BERT: new ``query``/``key``/``value``/``attention.output.dense`` Linears;
  ``num_attention_heads`` and ``all_head_size`` of the self-attention updated.
- GPT-2: new fused ``c_attn`` and ``c_proj`` Conv1D; ``num_heads`` and
  ``split_size`` (the width ``c_attn``'s output is split by) updated.
- Llama (GQA): a key/value head is removed only when every query head of its
  group is pruned. While a group is partly pruned, its key/value head stays and
  ``k_proj``/``v_proj`` become a `GroupedKVLinear` that maps each remaining
  query head to its key/value head (``num_key_value_groups`` set to 1), so the
  stock forward works unchanged. Known limit: LoRA cannot be attached to such a
  `GroupedKVLinear` (attach LoRA before pruning, or prune whole groups).

Head ids are always the original ones; the heads a layer still has are stored
on its attention module (`models.head_mask.HEAD_IDS_ATTR`). Parameters are
replaced, so build optimizers after pruning or regrowth. A PeftModel must be
merged first (``merge_and_unload()``). A layer must keep at least one head.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from sentinel.models.components import ModelLayout, model_layout
from sentinel.models.exceptions import ModelError
from sentinel.models.head_mask import HEAD_IDS_ATTR, AttentionSite, attention_sites
from sentinel.models.loading import model_config
from torch import nn
from transformers.pytorch_utils import Conv1D

KV_IDS_ATTR = "sentinel_kv_head_ids"
"""Attribute set on a pruned Llama attention module: original ids of its key/value heads."""


class PruningError(ModelError, ValueError):
    """A pruning or regrowth request does not fit the model."""


class GroupedKVLinear(nn.Linear):
    """A key/value projection that emits one key/value head per remaining query head.

    Holds the weights of the layer's key/value heads (``out_features =
    kv_heads * head_dim``) and `query_to_kv`, the key/value head (position in
    this weight) of each remaining query head; its output has one head per
    query head, so the attention forward runs with no repetition
    (``num_key_value_groups = 1``). Used only while a GQA group is partly pruned.
    """

    def __init__(self, in_features: int, head_dim: int, query_to_kv: list[int], kv_heads: int, bias: bool) -> None:
        super().__init__(in_features, kv_heads * head_dim, bias=bias)
        self.head_dim = head_dim
        self.register_buffer("query_to_kv", torch.tensor(query_to_kv, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        heads = y.reshape(*y.shape[:-1], -1, self.head_dim).index_select(-2, self.query_to_kv)
        return heads.flatten(-2)


# ---------------------------------------------------------------- per-head weights


@dataclass
class HeadWeights:
    """The weights one query head owns, in nn.Linear orientation (out, in).

    `q_weight` ``[d, in]`` and `q_bias` ``[d]``: its query rows; `o_weight`
    ``[out, d]``: its o-projection input columns. Without GQA the head also
    owns its key/value rows (`k_*`, `v_*`); with GQA those live in `KVWeights`.
    """

    q_weight: torch.Tensor
    q_bias: torch.Tensor | None
    o_weight: torch.Tensor
    k_weight: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_weight: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None


@dataclass
class KVWeights:
    """The key and value rows of one GQA key/value head."""

    k_weight: torch.Tensor
    k_bias: torch.Tensor | None
    v_weight: torch.Tensor
    v_bias: torch.Tensor | None


@dataclass
class PruneRecord:
    """What `prune_heads` removed: the heads, copies of their weights, and parameter counts.

    `heads` maps layer → original ids of the heads pruned by this call;
    `weights` holds each pruned head's slices and `kv_weights` the GQA
    key/value heads removed with their last query head (keyed by
    ``(layer, kv_head)``). `regrow_heads` reads it.
    """

    heads: dict[int, tuple[int, ...]]
    weights: dict[tuple[int, int], HeadWeights] = field(default_factory=dict)
    kv_weights: dict[tuple[int, int], KVWeights] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0


@dataclass
class _Layer:
    """One layer's attention weights split per original head (the common currency here)."""

    heads: dict[int, HeadWeights]
    kv: dict[int, KVWeights]
    o_bias: torch.Tensor | None


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters in a model (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def pruned_heads(model: nn.Module) -> dict[int, list[int]]:
    """Layer → original ids of the heads physically pruned from it (layers with none are left out)."""
    layout = model_layout(model)
    out: dict[int, list[int]] = {}
    for site in attention_sites(model):
        missing = sorted(set(range(layout.num_heads)) - set(site.heads))
        if missing:
            out[site.layer] = missing
    return out


def _linear_rows(module: nn.Module, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output rows [start, stop) of a Linear/Conv1D as (weight [rows, in], bias [rows])."""
    if isinstance(module, Conv1D):
        weight = module.weight[:, start:stop].T
    else:
        weight = module.weight[start:stop]
    bias = None if module.bias is None else module.bias[start:stop]
    return weight.detach().clone(), None if bias is None else bias.detach().clone()


def _linear_cols(module: nn.Module, start: int, stop: int) -> torch.Tensor:
    """Input columns [start, stop) of a Linear/Conv1D as a weight [out, cols]."""
    weight = module.weight[start:stop].T if isinstance(module, Conv1D) else module.weight[:, start:stop]
    return weight.detach().clone()


def _projections(site: AttentionSite, family: str) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """The (q, k, v, o) modules of a layer; GPT-2 returns its fused c_attn three times."""
    attn = site.attention
    if family == "bert":
        return attn.query, attn.key, attn.value, site.o_module
    if family == "gpt2":
        return attn.c_attn, attn.c_attn, attn.c_attn, attn.c_proj
    return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj


def _kv_ids(site: AttentionSite, layout: ModelLayout) -> tuple[int, ...]:
    """Original ids of the key/value heads a layer has."""
    if layout.num_kv_heads == layout.num_heads:
        return site.heads
    return tuple(getattr(site.attention, KV_IDS_ATTR, range(layout.num_kv_heads)))


def _read_layer(site: AttentionSite, layout: ModelLayout) -> _Layer:
    """Split a layer's current projections into per-head weights keyed by original id."""
    q, k, v, o = _projections(site, layout.family)
    d = layout.head_dim
    n = len(site.heads)
    k_off, v_off = (n * d, 2 * n * d) if layout.family == "gpt2" else (0, 0)
    grouped = layout.num_kv_heads != layout.num_heads
    heads: dict[int, HeadWeights] = {}
    for pos, head in enumerate(site.heads):
        q_w, q_b = _linear_rows(q, pos * d, (pos + 1) * d)
        w = HeadWeights(q_w, q_b, _linear_cols(o, pos * d, (pos + 1) * d))
        if not grouped:
            w.k_weight, w.k_bias = _linear_rows(k, k_off + pos * d, k_off + (pos + 1) * d)
            w.v_weight, w.v_bias = _linear_rows(v, v_off + pos * d, v_off + (pos + 1) * d)
        heads[head] = w
    kv: dict[int, KVWeights] = {}
    if grouped:
        for pos, kv_head in enumerate(_kv_ids(site, layout)):
            k_w, k_b = _linear_rows(k, pos * d, (pos + 1) * d)
            v_w, v_b = _linear_rows(v, pos * d, (pos + 1) * d)
            kv[kv_head] = KVWeights(k_w, k_b, v_w, v_b)
    o_bias = None if o.bias is None else o.bias.detach().clone()
    return _Layer(heads, kv, o_bias)


def read_head_weights(model: nn.Module) -> dict[tuple[int, int], HeadWeights]:
    """Copies of the weights every present head owns, keyed by ``(layer, original head id)``.

    Works on pruned and unpruned plain models (merge a PeftModel first). GQA
    key/value rows are shared, so they are not part of a head's weights here.
    """
    layout, sites = _sites(model)
    return {(site.layer, head): w for site in sites for head, w in _read_layer(site, layout).heads.items()}


# ---------------------------------------------------------------- rebuilding a layer


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if not parts or parts[0] is None else torch.cat(parts, dim=0)  # type: ignore[arg-type]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Module) -> nn.Linear:
    """An nn.Linear holding `weight` [out, in] and `bias`, with `like`'s trainability."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    _fill(layer, weight, bias, like)
    return layer


def _conv1d(weight: torch.Tensor, bias: torch.Tensor, like: nn.Module) -> Conv1D:
    """A GPT-2 Conv1D computing ``x @ weight.T + bias`` (weight given as [out, in])."""
    layer = Conv1D(weight.shape[0], weight.shape[1]).to(device=weight.device, dtype=weight.dtype)
    _fill(layer, weight.T, bias, like)
    return layer


def _fill(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, like: nn.Module) -> None:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    layer.weight.requires_grad_(like.weight.requires_grad)
    if layer.bias is not None and like.bias is not None:
        layer.bias.requires_grad_(like.bias.requires_grad)
    layer.train(like.training)


def _install_layer(
    model: nn.Module, site: AttentionSite, layout: ModelLayout, weights: _Layer, keep: list[int]
) -> None:
    """Replace a layer's projections by ones holding exactly the heads `keep` (original ids, sorted)."""
    attn, d = site.attention, layout.head_dim
    q_old, k_old, v_old, o_old = _projections(site, layout.family)
    hw = [weights.heads[h] for h in keep]
    q_w, q_b = torch.cat([w.q_weight for w in hw]), _cat([w.q_bias for w in hw])
    o_w = torch.cat([w.o_weight for w in hw], dim=1)
    if layout.family == "llama":
        _install_llama(site, layout, weights, keep, q_w, q_b)
    else:
        k_w, k_b = torch.cat([w.k_weight for w in hw]), _cat([w.k_bias for w in hw])  # type: ignore[misc]
        v_w, v_b = torch.cat([w.v_weight for w in hw]), _cat([w.v_bias for w in hw])  # type: ignore[misc]
        if layout.family == "bert":
            attn.query, attn.key, attn.value = _linear(q_w, q_b, q_old), _linear(k_w, k_b, k_old), _linear(v_w, v_b, v_old)
            attn.num_attention_heads = len(keep)
            attn.all_head_size = len(keep) * d
        else:  # gpt2: fused c_attn, output split into q | k | v of `split_size` each
            fused_b = torch.cat([q_b, k_b, v_b])  # type: ignore[list-item]
            attn.c_attn = _conv1d(torch.cat([q_w, k_w, v_w]), fused_b, q_old)
            attn.num_heads = len(keep)
            attn.split_size = len(keep) * d
    new_o = (_conv1d if layout.family == "gpt2" else _linear)(o_w, weights.o_bias, o_old)
    model.set_submodule(site.o_path, new_o)
    setattr(attn, HEAD_IDS_ATTR, tuple(keep))


def _install_llama(
    site: AttentionSite, layout: ModelLayout, weights: _Layer, keep: list[int], q_w: torch.Tensor, q_b: torch.Tensor | None
) -> None:
    """Llama: q rows of `keep`, and the key/value heads their groups need (GQA-aware)."""
    attn, d, group = site.attention, layout.head_dim, layout.kv_group_size
    kv_keep = sorted({h // group for h in keep})
    kws = [weights.kv[g] for g in kv_keep]
    k_w, k_b = torch.cat([w.k_weight for w in kws]), _cat([w.k_bias for w in kws])
    v_w, v_b = torch.cat([w.v_weight for w in kws]), _cat([w.v_bias for w in kws])
    q_old, k_old, v_old = attn.q_proj, attn.k_proj, attn.v_proj
    attn.q_proj = _linear(q_w, q_b, q_old)
    whole_groups = all(sum(1 for h in keep if h // group == g) == group for g in kv_keep)
    if whole_groups:
        attn.k_proj, attn.v_proj = _linear(k_w, k_b, k_old), _linear(v_w, v_b, v_old)
        attn.num_key_value_groups = group
    else:
        query_to_kv = [kv_keep.index(h // group) for h in keep]
        new_k = GroupedKVLinear(k_w.shape[1], d, query_to_kv, len(kv_keep), k_b is not None).to(k_w.device, k_w.dtype)
        new_v = GroupedKVLinear(v_w.shape[1], d, query_to_kv, len(kv_keep), v_b is not None).to(v_w.device, v_w.dtype)
        _fill(new_k, k_w, k_b, k_old)
        _fill(new_v, v_w, v_b, v_old)
        attn.k_proj, attn.v_proj = new_k, new_v
        attn.num_key_value_groups = 1
    setattr(attn, KV_IDS_ATTR, tuple(kv_keep))


# ---------------------------------------------------------------- public API


def _sites(model: nn.Module) -> tuple[ModelLayout, list[AttentionSite]]:
    """Layout and sites of a plain (non-PEFT) model; a PeftModel must be merged first."""
    if callable(getattr(model, "get_base_model", None)):
        raise PruningError(
            "`model` is a PeftModel: merge the adapter first (`model.merge_and_unload()`); "
            "pruning replaces the projections LoRA wraps"
        )
    return model_layout(model), attention_sites(model)


def _check_heads(heads: Mapping[int, Iterable[int]], layout: ModelLayout, what: str) -> dict[int, set[int]]:
    checked: dict[int, set[int]] = {}
    for layer, layer_heads in heads.items():
        if not isinstance(layer, numbers.Integral) or not 0 <= layer < layout.num_layers:
            raise PruningError(f"`{what}`: layer {layer!r} out of range (model has {layout.num_layers} layers)")
        for head in layer_heads:
            if not isinstance(head, numbers.Integral) or not 0 <= head < layout.num_heads:
                raise PruningError(
                    f"`{what}`: layer {layer} head {head!r} out of range (layers have {layout.num_heads} heads)"
                )
            checked.setdefault(int(layer), set()).add(int(head))
    return checked


def prune_heads(model: nn.Module, heads: Mapping[int, Iterable[int]]) -> PruneRecord:
    """Physically remove attention heads (original ids, layer → heads); returns what was removed.

    Heads already pruned are ignored. The model then computes what it computed
    with those heads masked; its parameter count drops. Raises `PruningError`
    for out-of-range ids, for a request that would leave a layer with no head,
    and for a PeftModel (merge it first).
    """
    layout, sites = _sites(model)
    request = _check_heads(heads, layout, "heads")
    record = PruneRecord(heads={}, params_before=count_parameters(model))
    for layer, wanted in sorted(request.items()):
        site = sites[layer]
        remove = sorted(wanted & set(site.heads))
        if not remove:
            continue
        keep = [h for h in site.heads if h not in wanted]
        if not keep:
            raise PruningError(f"`heads`: pruning {remove} would leave layer {layer} with no head; keep at least one")
        weights = _read_layer(site, layout)
        for head in remove:
            record.weights[(layer, head)] = weights.heads[head]
        if layout.num_kv_heads != layout.num_heads:
            still_used = {h // layout.kv_group_size for h in keep}
            for kv_head in sorted(set(weights.kv) - still_used):
                record.kv_weights[(layer, kv_head)] = weights.kv[kv_head]
        _install_layer(model, site, layout, weights, keep)
        record.heads[layer] = tuple(remove)
    record.params_after = count_parameters(model)
    return record


def _fresh_head(like: HeadWeights, std: float, gen: torch.Generator) -> HeadWeights:
    """New q (and k/v) rows ~ N(0, std), zero biases, and ZERO o columns (see `regrow_heads`)."""

    def normal(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.randn(t.shape, generator=gen).mul_(std).to(t.device, t.dtype)

    def zeros(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else torch.zeros_like(t)

    return HeadWeights(
        q_weight=normal(like.q_weight),  # type: ignore[arg-type]
        q_bias=zeros(like.q_bias),
        o_weight=torch.zeros_like(like.o_weight),
        k_weight=normal(like.k_weight),
        k_bias=zeros(like.k_bias),
        v_weight=normal(like.v_weight),
        v_bias=zeros(like.v_bias),
    )


def regrow_heads(
    model: nn.Module,
    record: PruneRecord,
    heads: Mapping[int, Iterable[int]] | None = None,
    init: Literal["restore", "fresh"] = "restore",
    seed: int = 0,
) -> PruneRecord:
    """Bring pruned heads back (all of `record`'s by default); returns the part of `record` still pruned.

    ``init="restore"`` puts back the exact weights `record` saved, so an
    untouched pruned model regains its original outputs. ``init="fresh"``
    re-initialises the heads: q/k/v rows drawn from N(0, initializer_range)
    under `seed`, biases zero, and the o-projection columns set to ZERO. Zero o
    columns make a regrown head contribute nothing yet, so regrowth never
    perturbs the model's function (no accuracy drop at the moment of growth,
    which would defeat regrowing to recover quality); the head's other weights
    are random, so gradients reach the o columns and training grows the head
    back in. A GQA key/value head removed with its group is restored from
    `record` ("restore") or drawn fresh ("fresh").
    """
    if init not in ("restore", "fresh"):
        raise PruningError(f"`init` must be 'restore' or 'fresh', got {init!r}")
    layout, sites = _sites(model)
    wanted = _check_heads(heads if heads is not None else record.heads, layout, "heads")
    for layer, layer_heads in wanted.items():
        missing = layer_heads - set(record.heads.get(layer, ()))
        if missing:
            raise PruningError(f"`heads`: layer {layer} heads {sorted(missing)} were not pruned by this `record`")
        present = layer_heads & set(sites[layer].heads)
        if present:
            raise PruningError(f"`heads`: layer {layer} heads {sorted(present)} are already present (regrown before?)")
    std = float(getattr(model_config(model), "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    for layer, grow in sorted(wanted.items()):
        site = sites[layer]
        weights = _read_layer(site, layout)
        for head in sorted(grow):
            saved = record.weights[(layer, head)]
            weights.heads[head] = saved if init == "restore" else _fresh_head(saved, std, gen)
            kv_head = head // layout.kv_group_size
            if layout.num_kv_heads != layout.num_heads and kv_head not in weights.kv:
                template = next(iter(weights.kv.values()))
                weights.kv[kv_head] = _regrown_kv(record, layer, kv_head, init, template, std, gen)
        _install_layer(model, site, layout, weights, sorted(set(site.heads) | grow))
    remaining = {
        layer: tuple(h for h in hs if h not in wanted.get(layer, set()))
        for layer, hs in record.heads.items()
    }
    remaining = {layer: hs for layer, hs in remaining.items() if hs}
    return PruneRecord(
        heads=remaining,
        weights={key: w for key, w in record.weights.items() if key[1] in remaining.get(key[0], ())},
        kv_weights=dict(record.kv_weights),
        params_before=record.params_before,
        params_after=count_parameters(model),
    )


def _regrown_kv(
    record: PruneRecord, layer: int, kv_head: int, init: str, kv_like: KVWeights, std: float, gen: torch.Generator
) -> KVWeights:
    """The key/value head a regrown GQA query head needs when its whole group had been pruned."""
    if init == "fresh":
        return KVWeights(
            torch.randn(kv_like.k_weight.shape, generator=gen).mul_(std).to(kv_like.k_weight),
            None if kv_like.k_bias is None else torch.zeros_like(kv_like.k_bias),
            torch.randn(kv_like.v_weight.shape, generator=gen).mul_(std).to(kv_like.v_weight),
            None if kv_like.v_bias is None else torch.zeros_like(kv_like.v_bias),
        )
    saved = record.kv_weights.get((layer, kv_head))
    if saved is None:
        raise PruningError(
            f"layer {layer}: key/value head {kv_head} was removed by a later prune; regrow that record first"
        )
    return saved
