"""Narrowing feed-forward layers: keep the intermediate neurons that matter most.

The seed's "adaptive feed-forward network sizes". Attention heads are a small
share of a transformer's compute (pruning half of MiniLM's heads gives ~1.16x
under onnxruntime); the feed-forward network holds about two thirds of each
layer's matmul work, so a fast student must shrink it too.

An FFN computes ``down(act(up(x)))`` (Llama: ``down(act(gate(x)) * up(x))``);
intermediate neuron ``i`` is output feature ``i`` of the up (and gate)
projection and input feature ``i`` of the down projection. Removing a neuron
removes that row and that column, and the narrowed layer computes exactly what
the full layer computes with the neuron's activation set to zero. Where each
family keeps them:

- BERT: ``encoder.layer.{i}.intermediate.dense`` (up) and ``encoder.layer.{i}.output.dense`` (down).
- GPT-2: ``h.{i}.mlp.c_fc`` (up) and ``h.{i}.mlp.c_proj`` (down), Conv1D (weights stored (in, out)).
- Llama: ``layers.{i}.mlp.gate_proj`` and ``up_proj`` (up) and ``down_proj`` (down).

Neuron ids are always the original ones: the ids a narrowed layer still has
are stored on its transformer layer module (`FFN_IDS_ATTR`). Parameters are
replaced, so build optimizers after narrowing. A PeftModel must be merged first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sentinel.models.components import unwrap_model
from sentinel.models.exceptions import UnsupportedModelError
from sentinel.models.loading import Family, family_of
from sentinel.models.pruning import PruningError, count_parameters
from sentinel.protos.vocabulary import ComponentIdError, parse_component
from torch import nn
from transformers.pytorch_utils import Conv1D

FFN_IDS_ATTR = "sentinel_ffn_ids"
"""Attribute set on a narrowed transformer layer: original ids of the FFN neurons it still has."""

# family -> (layer module pattern, up projection suffixes, down projection suffix)
_FFN_PATHS: dict[Family, tuple[re.Pattern[str], tuple[str, ...], str]] = {
    "bert": (re.compile(r"(?:^|\.)encoder\.layer\.(\d+)$"), ("intermediate.dense",), "output.dense"),
    "gpt2": (re.compile(r"(?:^|\.)h\.(\d+)$"), ("mlp.c_fc",), "mlp.c_proj"),
    "llama": (re.compile(r"(?:^|\.)layers\.(\d+)$"), ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
}


@dataclass(frozen=True, eq=False)
class FfnSite:
    """One layer's feed-forward network, located: its up projection(s), down projection and neurons.

    `neurons` are the original ids of the intermediate neurons the layer has,
    in the order of the up projection's output features.
    """

    layer: int
    layer_path: str
    layer_module: nn.Module
    up_paths: tuple[str, ...]
    down_path: str
    neurons: tuple[int, ...]


@dataclass(frozen=True)
class FfnRecord:
    """What `keep_ffn_neurons` did: the neurons each changed layer kept, and parameter counts."""

    kept: dict[int, tuple[int, ...]]
    params_before: int
    params_after: int


def _plain(model: nn.Module) -> nn.Module:
    if callable(getattr(model, "get_base_model", None)):
        raise PruningError(
            "`model` is a PeftModel: merge the adapter first (`model.merge_and_unload()`); "
            "narrowing replaces the FFN projections"
        )
    return model


def _out_features(module: nn.Module) -> int:
    if isinstance(module, Conv1D):
        return int(module.weight.shape[1])
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    raise UnsupportedModelError(f"expected nn.Linear or Conv1D in the FFN, found {type(module).__name__}")


def ffn_sites(model: nn.Module) -> list[FfnSite]:
    """The FFN of every transformer layer, in layer order (plain model or PeftModel, read only)."""
    inner = unwrap_model(model)
    pattern, ups, down = _FFN_PATHS[family_of(inner)]
    sites: dict[int, FfnSite] = {}
    for path, module in inner.named_modules():
        match = pattern.search(path)
        if match is None:
            continue
        width = _out_features(inner.get_submodule(f"{path}.{ups[0]}"))
        neurons = tuple(getattr(module, FFN_IDS_ATTR, range(width)))
        if len(neurons) != width:
            raise PruningError(f"layer {match.group(1)}: {len(neurons)} recorded FFN neuron ids for width {width}")
        sites[int(match.group(1))] = FfnSite(
            layer=int(match.group(1)),
            layer_path=path,
            layer_module=module,
            up_paths=tuple(f"{path}.{u}" for u in ups),
            down_path=f"{path}.{down}",
            neurons=neurons,
        )
    return [sites[i] for i in sorted(sites)]


def ffn_widths(model: nn.Module) -> dict[int, int]:
    """Layer → number of FFN neurons it has now."""
    return {site.layer: len(site.neurons) for site in ffn_sites(model)}


def narrowed_ffn(model: nn.Module) -> dict[int, tuple[int, ...]]:
    """Layer → original ids of the FFN neurons it kept, for every narrowed layer (others left out)."""
    return {s.layer: s.neurons for s in ffn_sites(model) if hasattr(s.layer_module, FFN_IDS_ATTR)}


def ffn_layers_of(components: Iterable[str]) -> set[int]:
    """Layers whose ``layer.{i}.ffn`` component is among `components` (other ids are ignored).

    The caller passes the components whose consent contracts allow ``prune``;
    only those layers' FFNs may be narrowed.
    """
    layers: set[int] = set()
    for component in components:
        try:
            ref = parse_component(component)
        except ComponentIdError as e:
            raise ValueError(f"`components`: {e}") from e
        if ref.kind == "ffn" and ref.layer is not None:
            layers.add(ref.layer)
    return layers


# ---------------------------------------------------------------- importance of neurons


def _weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight in nn.Linear orientation (out, in)."""
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def ffn_magnitude(model: nn.Module) -> dict[int, np.ndarray]:
    """Per layer and present neuron: ``Π ‖W_up[i, :]‖ · ‖W_down[:, i]‖`` (up and gate rows, down column).

    A data-free proxy: a neuron whose incoming or outgoing weights are small
    moves the residual stream little. Arrays follow each site's `neurons` order.
    """
    inner = unwrap_model(model)
    scores: dict[int, np.ndarray] = {}
    with torch.no_grad():
        for site in ffn_sites(inner):
            score = _weight_out_in(inner.get_submodule(site.down_path)).norm(dim=0).double()
            for up in site.up_paths:
                score = score * _weight_out_in(inner.get_submodule(up)).norm(dim=1).double()
            scores[site.layer] = score.cpu().numpy()
    return scores


def ffn_activation_importance(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]
) -> dict[int, np.ndarray]:
    """Per layer and present neuron: ``E_tokens |a_i| · ‖W_down[:, i]‖`` over real tokens.

    ``a_i`` is the neuron's activation (the down projection's input), averaged
    over tokens with ``attention_mask == 1``; times the norm of its down column
    this is how much the neuron moves the residual stream on this data (the
    activation-aware criterion of Wanda, Sun et al. 2023, per neuron). Runs
    under ``no_grad`` in eval mode; the caller's mode is restored.
    """
    inner = unwrap_model(model)
    sites = ffn_sites(inner)
    sums = {s.layer: torch.zeros(len(s.neurons), dtype=torch.float64) for s in sites}
    state: dict[str, torch.Tensor | None] = {"mask": None}
    handles = []

    def make_hook(layer: int):  # noqa: ANN202 - torch hook signature
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            del module
            act = args[0].detach().abs().double()
            mask = state["mask"]
            if mask is not None and act.dim() == 3:
                act = act * mask[..., None].to(act)
            sums[layer] += act.reshape(-1, act.shape[-1]).sum(0).cpu()

        return hook

    for site in sites:
        handles.append(inner.get_submodule(site.down_path).register_forward_pre_hook(make_hook(site.layer)))
    was_training = inner.training
    inner.eval()
    device = next(inner.parameters()).device
    tokens = 0.0
    try:
        with torch.no_grad():
            for batch in batches:
                inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "teacher_logits")}
                mask = inputs.get("attention_mask")
                state["mask"] = mask
                tokens += float(mask.sum()) if mask is not None else float(inputs["input_ids"].numel())
                inner(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        inner.train(was_training)
    if tokens == 0:
        raise ValueError("`batches` is empty: activation importance needs at least one token")
    down_norms = {s.layer: _weight_out_in(inner.get_submodule(s.down_path)).detach().norm(dim=0).double().cpu() for s in sites}
    return {layer: (sums[layer] / tokens * down_norms[layer]).numpy() for layer in sums}


# ---------------------------------------------------------------- narrowing


def widths_for(model: nn.Module, layers: Iterable[int], keep: float, multiple_of: int = 1) -> dict[int, int]:
    """Target width per layer in `layers`: ``keep`` times its original width, rounded to `multiple_of`.

    The original width is the config's ``intermediate_size`` (``n_inner`` or
    ``4 * n_embd`` for GPT-2); the result is at least `multiple_of` and at most
    the layer's current width (narrowing never widens).
    """
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"`keep` must be in (0, 1], got {keep!r}")
    if multiple_of < 1:
        raise ValueError(f"`multiple_of` must be at least 1, got {multiple_of}")
    config = unwrap_model(model).config
    original = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.n_embd
    current = ffn_widths(model)
    out: dict[int, int] = {}
    for layer in layers:
        if layer not in current:
            raise PruningError(f"`layers`: layer {layer!r} out of range (model has {len(current)} layers)")
        width = max(multiple_of, int(round(original * keep / multiple_of)) * multiple_of)
        out[int(layer)] = min(width, current[layer])
    return out


def _slice_module(module: nn.Module, index: torch.Tensor, dim_out: bool) -> nn.Module:
    """A copy of a Linear/Conv1D keeping output features (`dim_out`) or input features `index`."""
    weight = _weight_out_in(module).detach()
    weight = weight.index_select(0 if dim_out else 1, index)
    bias = None if module.bias is None else module.bias.detach()
    if bias is not None and dim_out:
        bias = bias.index_select(0, index)
    if isinstance(module, Conv1D):
        new: nn.Module = Conv1D(weight.shape[0], weight.shape[1]).to(weight.device, weight.dtype)
        stored = weight.T
    else:
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
        stored = weight
    with torch.no_grad():
        new.weight.copy_(stored)
        if bias is not None:
            new.bias.copy_(bias)
    new.weight.requires_grad_(module.weight.requires_grad)
    if module.bias is not None:
        new.bias.requires_grad_(module.bias.requires_grad)
    new.train(module.training)
    return new


def keep_ffn_neurons(model: nn.Module, keep: Mapping[int, Sequence[int]]) -> FfnRecord:
    """Narrow FFNs to exactly the listed neurons (layer → original ids); other layers are untouched.

    Ids are kept in increasing order. Every id must be present in its layer
    and at least one must be kept. Raises `PruningError` otherwise and for a
    PeftModel (merge it first).
    """
    model = _plain(model)
    sites = {s.layer: s for s in ffn_sites(model)}
    before = count_parameters(model)
    checked: dict[int, list[int]] = {}
    for layer, ids in keep.items():
        if layer not in sites:
            raise PruningError(f"`keep`: layer {layer!r} out of range (model has {len(sites)} layers)")
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            raise PruningError(f"`keep`: layer {layer} would keep no FFN neuron; keep at least one")
        missing = sorted(set(wanted) - set(sites[layer].neurons))
        if missing:
            raise PruningError(f"`keep`: layer {layer} has no FFN neurons {missing[:5]} (already removed?)")
        checked[int(layer)] = wanted
    for layer, wanted in sorted(checked.items()):
        site = sites[layer]
        position = {n: p for p, n in enumerate(site.neurons)}
        index = torch.tensor([position[n] for n in wanted], dtype=torch.long)
        for path in site.up_paths:
            model.set_submodule(path, _slice_module(model.get_submodule(path), index, dim_out=True))
        model.set_submodule(site.down_path, _slice_module(model.get_submodule(site.down_path), index, dim_out=False))
        setattr(site.layer_module, FFN_IDS_ATTR, tuple(wanted))
    return FfnRecord(
        kept={layer: tuple(ids) for layer, ids in checked.items()},
        params_before=before,
        params_after=count_parameters(model),
    )


def narrow_ffn(
    model: nn.Module, widths: Mapping[int, int], scores: Mapping[int, np.ndarray] | None = None
) -> FfnRecord:
    """Narrow each listed layer's FFN to `widths[layer]` neurons, keeping the highest-scored ones.

    `scores` gives, per layer, one importance per present neuron (in the
    site's `neurons` order, as `ffn_magnitude` and `ffn_activation_importance`
    return them); it defaults to `ffn_magnitude`. Ties keep the lower id.
    """
    sites = {s.layer: s for s in ffn_sites(_plain(model))}
    if scores is None:
        scores = ffn_magnitude(model)
    keep: dict[int, list[int]] = {}
    for layer, width in widths.items():
        if layer not in sites:
            raise PruningError(f"`widths`: layer {layer!r} out of range (model has {len(sites)} layers)")
        neurons = sites[layer].neurons
        if not 1 <= int(width) <= len(neurons):
            raise PruningError(f"`widths`: layer {layer} width {width} must be in [1, {len(neurons)}]")
        score = np.asarray(scores[layer], dtype=np.float64)
        if score.shape != (len(neurons),):
            raise PruningError(f"`scores`: layer {layer} has {score.shape} scores for {len(neurons)} neurons")
        order = np.argsort(-score, kind="stable")[: int(width)]
        keep[int(layer)] = [neurons[int(p)] for p in order]
    return keep_ffn_neurons(model, keep)
