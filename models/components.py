"""Addressable components of a transformer and the exact weights each one owns.

Component ids (the vocabulary consent contracts, masks and the ledger use):
``embeddings``, ``layer.{i}.head.{j}``, ``layer.{i}.ffn``, and the task head
``classifier`` (classification) or ``lm_head`` (causal LM). Their grammar lives
in :mod:`sentinel.protos.vocabulary`; here they are checked against a model.

Which weights belong to attention head ``j`` of a layer (``d`` = head_dim):

- q projection: output features ``[j*d, (j+1)*d)`` (rows of an ``nn.Linear``
  weight and its bias).
- k and v projections: output features of key/value head ``g = j // group``
  where ``group = num_heads // num_kv_heads``. Without GQA ``g = j``. With GQA
  (Llama) one key/value slice serves every query head of its group, so that
  slice is listed for each of those heads: it belongs to all of them.
- o projection: input features ``[j*d, (j+1)*d)`` (columns of an ``nn.Linear``
  weight); its bias is shared by all heads and belongs to none.
- GPT-2 fuses q, k, v into one ``Conv1D`` (``c_attn``) whose weight is stored
  as (in, out): q, k, v sit at output offsets 0, H and 2H, i.e. on dim 1, and
  the ``c_proj`` input features are dim 0.

Everything here works on a plain model and on a PeftModel wrapping one; module
and parameter names are relative to the model given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch
from sentinel.models.exceptions import ComponentError, UnsupportedModelError
from sentinel.models.loading import Family, family_of, model_config
from sentinel.protos.vocabulary import CLASSIFIER, LM_HEAD, ComponentIdError, ComponentRef, parse_component, standard_components
from sentinel.protos.vocabulary import head_id as head_id  # re-exported: server.governance_observer imports it from here
from transformers.pytorch_utils import Conv1D

ProjectionRole = Literal["q", "k", "v", "qkv", "o"]
"""Which attention projection a module is: query, key, value, GPT-2's fused qkv, or output."""

# Attention projection modules per family: regex on a module path -> (layer, projection role).
_PROJECTION_PATTERNS: dict[Family, tuple[re.Pattern[str], dict[str, ProjectionRole]]] = {
    "bert": (
        re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\.attention\.(self\.query|self\.key|self\.value|output\.dense)$"),
        {"self.query": "q", "self.key": "k", "self.value": "v", "output.dense": "o"},
    ),
    "gpt2": (
        re.compile(r"(?:^|\.)h\.(\d+)\.attn\.(c_attn|c_proj)$"),
        {"c_attn": "qkv", "c_proj": "o"},
    ),
    "llama": (
        re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.(q_proj|k_proj|v_proj|o_proj)$"),
        {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"},
    ),
}
# Any module inside transformer layer i (for mapping non-attention modules to `layer.{i}.ffn`).
_LAYER_INDEX_PATTERNS: dict[Family, re.Pattern[str]] = {
    "bert": re.compile(r"(?:^|\.)encoder\.layer\.(\d+)\."),
    "gpt2": re.compile(r"(?:^|\.)h\.(\d+)\."),
    "llama": re.compile(r"(?:^|\.)layers\.(\d+)\."),
}


@dataclass(frozen=True)
class ModelLayout:
    """The attention geometry of a model: what consent, masks and slices are computed from."""

    family: Family
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def kv_group_size(self) -> int:
        """How many query heads share one key/value head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class ParamSlice:
    """A contiguous range `[start, stop)` along dimension `dim` of the parameter `param_name`."""

    param_name: str
    dim: int
    start: int
    stop: int


@dataclass(frozen=True, eq=False)
class Projection:
    """One attention projection of one layer, located in the model.

    `path` is the module's dotted name in the given model's `named_modules()`
    (the PEFT wrapper when LoRA is attached); `module` is the underlying
    ``nn.Linear`` or GPT-2 ``Conv1D``; `weight_name`/`bias_name` are the
    names of its base parameters in `named_parameters()`. The projection's own
    features are ``[offset, offset + size)``: output features for q/k/v (GPT-2
    c_attn holds all three at offsets 0, H, 2H), input features for o.
    `transposed` is True when the weight is stored (in, out) (``Conv1D``).
    """

    path: str
    module: torch.nn.Module
    weight_name: str
    bias_name: str | None
    offset: int
    size: int
    transposed: bool


@dataclass(frozen=True, eq=False)
class AttentionParts:
    """The q, k, v and o projections of one attention layer."""

    layer: int
    q: Projection
    k: Projection
    v: Projection
    o: Projection


# ---------------------------------------------------------------- component ids


def check_component(layout: ModelLayout, cid: str) -> ComponentRef:
    """The parsed id `cid` if it names a component the layout has; `ComponentError` (a `ValueError`) otherwise.

    Malformed ids (the grammar is :func:`sentinel.protos.vocabulary.parse_component`'s)
    and layer or head indices beyond the layout are both refused.
    """
    try:
        ref = parse_component(cid)
    except ComponentIdError as e:
        raise ComponentError(f"bad component id {cid!r}: {e}") from e
    if ref.layer is not None and ref.layer >= layout.num_layers:
        raise ComponentError(f"component {cid!r}: layer {ref.layer} out of range (model has {layout.num_layers})")
    if ref.head is not None and ref.head >= layout.num_heads:
        raise ComponentError(f"component {cid!r}: head {ref.head} out of range (layers have {layout.num_heads})")
    return ref


# ---------------------------------------------------------------- layout


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PeftModel (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_layout(model: torch.nn.Module) -> ModelLayout:
    """The attention layout of a model or PeftModel, read from its config."""
    config = model_config(model)
    family = family_of(model)
    num_heads = int(config.num_attention_heads)
    hidden = int(config.hidden_size)
    num_kv = int(getattr(config, "num_key_value_heads", None) or num_heads) if family == "llama" else num_heads
    head_dim = int(getattr(config, "head_dim", None) or hidden // num_heads) if family == "llama" else hidden // num_heads
    if num_heads % num_kv != 0:
        raise UnsupportedModelError(f"num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv}")
    return ModelLayout(
        family=family,
        num_layers=int(config.num_hidden_layers),
        num_heads=num_heads,
        num_kv_heads=num_kv,
        head_dim=head_dim,
        hidden_size=hidden,
    )


def task_head_component(model: torch.nn.Module) -> Literal["classifier", "lm_head"] | None:
    """``classifier`` for a sequence classifier, ``lm_head`` for a causal LM, None for a bare encoder."""
    inner = unwrap_model(model)
    if hasattr(inner, "classifier") or hasattr(inner, "score"):
        return CLASSIFIER
    if hasattr(inner, "lm_head") or hasattr(inner, "cls"):
        return LM_HEAD
    return None


def list_components(model: torch.nn.Module) -> list[str]:
    """All component ids of a model, in order: embeddings, per layer its heads then ffn, task head."""
    layout = model_layout(model)
    output = task_head_component(model)
    return standard_components(layout.num_layers, layout.num_heads, output=output)


# ---------------------------------------------------------------- module paths


def projection_role(family: Family, path: str) -> tuple[int, ProjectionRole] | None:
    """(layer, projection role) of an attention projection module path, None for any other module.

    Works on paths with or without a PEFT prefix (``base_model.model.``).
    """
    pattern, roles = _PROJECTION_PATTERNS[family]
    m = pattern.search(path)
    if m is None:
        return None
    return int(m.group(1)), roles[m.group(2)]


def layer_of_path(family: Family, path: str) -> int | None:
    """Index of the transformer layer a module path lies in, None outside the layers."""
    m = _LAYER_INDEX_PATTERNS[family].search(path + ".")
    return int(m.group(1)) if m else None


def head_feature_ranges(layout: ModelLayout, role: ProjectionRole, head: int) -> list[tuple[int, int]]:
    """Feature ranges `[start, stop)` of a projection that belong to query head `head`.

    Output features for q/k/v/qkv (GPT-2's fused c_attn gives three ranges),
    input features for o. For k/v under GQA this is the range of the shared
    key/value head ``head // kv_group_size``.
    """
    if not 0 <= head < layout.num_heads:
        raise ComponentError(f"head {head} out of range (layers have {layout.num_heads})")
    d = layout.head_dim
    q_range = (head * d, (head + 1) * d)
    kv = head // layout.kv_group_size
    kv_range = (kv * d, (kv + 1) * d)
    if role in ("q", "o"):
        return [q_range]
    if role in ("k", "v"):
        return [kv_range]
    width = layout.num_heads * d  # qkv: GPT-2 has no GQA
    return [(offset + q_range[0], offset + q_range[1]) for offset in (0, width, 2 * width)]


def base_layer_of(module: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    """The nn.Linear or Conv1D under a (possibly PEFT-wrapped) module, and the name suffix leading to it."""
    suffix = ""
    while hasattr(module, "base_layer") and isinstance(module.base_layer, torch.nn.Module):
        module = module.base_layer
        suffix += ".base_layer"
    if not isinstance(module, (torch.nn.Linear, Conv1D)):
        raise UnsupportedModelError(f"expected nn.Linear or Conv1D, found {type(module).__name__}")
    return module, suffix


def _projection(path: str, module: torch.nn.Module, offset: int, size: int) -> Projection:
    """Locate a projection's base layer and parameter names."""
    base, suffix = base_layer_of(module)
    return Projection(
        path=path,
        module=base,
        weight_name=f"{path}{suffix}.weight",
        bias_name=f"{path}{suffix}.bias" if base.bias is not None else None,
        offset=offset,
        size=size,
        transposed=isinstance(base, Conv1D),
    )


def attention_modules(model: torch.nn.Module) -> list[AttentionParts]:
    """The q, k, v, o projections of every layer, in layer order."""
    layout = model_layout(model)
    found: dict[int, dict[ProjectionRole, tuple[str, torch.nn.Module]]] = {}
    for path, module in model.named_modules():
        located = projection_role(layout.family, path)
        if located is not None:
            layer, role = located
            found.setdefault(layer, {})[role] = (path, module)
    q_width = layout.num_heads * layout.head_dim
    kv_width = layout.num_kv_heads * layout.head_dim
    parts: list[AttentionParts] = []
    for layer in range(layout.num_layers):
        roles = found.get(layer, {})
        if "qkv" in roles:
            path, module = roles["qkv"]
            q, k, v = (_projection(path, module, off, q_width) for off in (0, q_width, 2 * q_width))
        else:
            missing = [r for r in ("q", "k", "v") if r not in roles]
            if missing:
                raise UnsupportedModelError(f"layer {layer}: attention projections {missing} not found")
            q = _projection(*roles["q"], 0, q_width)
            k = _projection(*roles["k"], 0, kv_width)
            v = _projection(*roles["v"], 0, kv_width)
        if "o" not in roles:
            raise UnsupportedModelError(f"layer {layer}: attention output projection not found")
        o = _projection(*roles["o"], 0, q_width)
        parts.append(AttentionParts(layer=layer, q=q, k=k, v=v, o=o))
    return parts


def head_parameter_slices(model: torch.nn.Module, layer: int, head: int) -> list[ParamSlice]:
    """The exact slices of base weights and biases that belong to one attention head.

    q/k/v: the head's output features of the weight (dim 0 for nn.Linear,
    dim 1 for GPT-2's Conv1D c_attn, at the q/k/v offsets) and of the bias.
    o: the head's input features of the weight (dim 1 for nn.Linear, dim 0 for
    Conv1D); the o bias is shared and not included. GQA: the key/value slice
    of kv head ``head // (num_heads // num_kv_heads)`` is included for every
    query head in its group, since it belongs to all of them.
    """
    layout = model_layout(model)
    if not 0 <= layer < layout.num_layers:
        raise ComponentError(f"layer {layer} out of range (model has {layout.num_layers})")
    parts = attention_modules(model)[layer]
    d = layout.head_dim
    kv = head // layout.kv_group_size if 0 <= head < layout.num_heads else -1
    if kv < 0:
        raise ComponentError(f"head {head} out of range (layers have {layout.num_heads})")
    slices: list[ParamSlice] = []
    for proj, index in ((parts.q, head), (parts.k, kv), (parts.v, kv)):
        start, stop = proj.offset + index * d, proj.offset + (index + 1) * d
        slices.append(ParamSlice(proj.weight_name, 1 if proj.transposed else 0, start, stop))
        if proj.bias_name is not None:
            slices.append(ParamSlice(proj.bias_name, 0, start, stop))
    o = parts.o
    slices.append(ParamSlice(o.weight_name, 0 if o.transposed else 1, head * d, (head + 1) * d))
    return slices
