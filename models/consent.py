"""Consent on LoRA: train only permitted heads, and detect updates that touch others.

A node may adapt only the components in its permitted set. Here that is
enforced on a PEFT LoRA model and checked on adapter arrays:

- q/k/v projections: the rows of ``lora_B`` that produce a forbidden head's
  output features are zeroed and their gradients masked, so ``B @ A`` is zero
  in those rows whatever happens to A.
- o projection: the columns of ``lora_A`` that read a forbidden head's input
  features are zeroed and masked, so ``B @ A`` is zero in those columns.
- GQA (Llama): a key/value head is shared by a group of query heads; its k/v
  rows may be adapted only if ALL query heads of the group are permitted, and
  a change in them touches every head of the group.
- Other LoRA modules (when targets go beyond attention) are adaptable only if
  their component (``layer.{i}.ffn`` or ``embeddings``) is permitted.
- The classification head (``classifier``) trains only if permitted.

With the entries zero and their gradients exactly zero, plain SGD and AdamW
(weight decay included) leave them exactly zero, so the product stays zero in
every forbidden slice. Apply the mask to a freshly attached adapter (B = 0),
after any `load_adapter_arrays`, since loading overwrites the zeroed entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper
from sentinel.models.components import (
    ModelLayout,
    ProjectionRole,
    check_component,
    layer_of_path,
    model_layout,
    projection_role,
)
from sentinel.models.exceptions import AdapterError, ComponentError
from sentinel.models.lora import HEAD_MODULES, head_module_keys, lora_pairs, module_path
from sentinel.protos.vocabulary import CLASSIFIER, EMBEDDINGS, ffn_id, head_id


@dataclass(frozen=True)
class HeadUnit:
    """A feature range of a projection and the query heads that own it together.

    For q and o each unit is one head; for GQA k/v a unit is one key/value
    head, owned by all query heads of its group.
    """

    heads: tuple[int, ...]
    start: int
    stop: int


def head_units(layout: ModelLayout, role: ProjectionRole) -> list[HeadUnit]:
    """The per-head feature ranges of a projection: output features (q/k/v/qkv) or input features (o)."""
    d = layout.head_dim
    group = layout.kv_group_size
    q_units = [HeadUnit((j,), j * d, (j + 1) * d) for j in range(layout.num_heads)]
    kv_units = [
        HeadUnit(tuple(range(g * group, (g + 1) * group)), g * d, (g + 1) * d) for g in range(layout.num_kv_heads)
    ]
    if role in ("q", "o"):
        return q_units
    if role in ("k", "v"):
        return kv_units
    q_width, kv_width = layout.num_heads * d, layout.num_kv_heads * d
    shifted = [HeadUnit(u.heads, u.start + q_width, u.stop + q_width) for u in kv_units]
    shifted += [HeadUnit(u.heads, u.start + q_width + kv_width, u.stop + q_width + kv_width) for u in kv_units]
    return q_units + shifted


def _non_head_component(layout: ModelLayout, path: str) -> str:
    """The component of a LoRA-adapted module that is not an attention projection."""
    layer = layer_of_path(layout.family, path)
    if layer is not None:
        return ffn_id(layer)
    if "embed" in path or path.endswith(("wte", "wpe")):
        return EMBEDDINGS
    raise ComponentError(f"LoRA module {path!r} belongs to no component consent can speak about")


@dataclass
class ConsentMask:
    """The gradient masks installed by `restrict_lora_to_heads`; `remove()` takes them off.

    `trainable` maps each masked LoRA parameter name to a boolean tensor, True
    where the entry may change. `frozen` lists head parameters whose
    ``requires_grad`` was switched off because `classifier` is not permitted.
    """

    permitted: frozenset[str]
    trainable: dict[str, torch.Tensor]
    frozen: list[str]
    _handles: list[torch.utils.hooks.RemovableHandle] = field(default_factory=list, repr=False)
    _frozen_params: list[torch.nn.Parameter] = field(default_factory=list, repr=False)

    def remove(self) -> None:
        """Remove the gradient hooks and unfreeze the head (zeroed entries stay zero)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for param in self._frozen_params:
            param.requires_grad_(True)
        self._frozen_params.clear()


def _mask_rows(weight: torch.Tensor, ranges: list[tuple[int, int]], dim: int) -> torch.Tensor:
    """Boolean mask of `weight`'s shape, False in the given ranges along `dim`."""
    mask = torch.ones_like(weight, dtype=torch.bool)
    for start, stop in ranges:
        mask.narrow(dim, start, stop - start).fill_(False)
    return mask


def _install(param: torch.nn.Parameter, mask: torch.Tensor, handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    """Zero `param` outside `mask` and make its gradient exactly zero there."""
    with torch.no_grad():
        param.masked_fill_(~mask, 0.0)
    handles.append(param.register_hook(lambda grad: grad.masked_fill(~mask, 0.0)))


def _forbidden_ranges(layout: ModelLayout, role: ProjectionRole, layer: int, permitted: frozenset[str]) -> list[tuple[int, int]]:
    """Feature ranges of a projection owned by at least one head outside the permitted set."""
    return [
        (u.start, u.stop)
        for u in head_units(layout, role)
        if not all(head_id(layer, h) in permitted for h in u.heads)
    ]


def restrict_lora_to_heads(peft_model: PeftModel, permitted: Iterable[str]) -> ConsentMask:
    """Confine LoRA training to the permitted components (heads, ffn, embeddings, classifier).

    Zeroes the LoRA entries that would change a forbidden component and hooks
    their gradients to exactly zero (see the module docstring for the rules,
    GQA included). Freezes the classification head unless ``classifier`` is
    permitted. Returns the `ConsentMask`; call its `remove()` to undo the hooks.
    """
    layout = model_layout(peft_model)
    allowed = frozenset(permitted)
    for cid in allowed:
        check_component(layout, cid)
    adapter = peft_model.active_adapter
    params = {id(p): name for name, p in peft_model.named_parameters()}
    mask = ConsentMask(permitted=allowed, trainable={}, frozen=[])
    for path, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            a = module.lora_A[adapter].weight
            b = module.lora_B[adapter].weight
            base_path = module_path(path)
            located = projection_role(layout.family, base_path)
            if located is None:
                ranges_b = [] if _non_head_component(layout, base_path) in allowed else [(0, b.shape[0])]
                masks = {b: _mask_rows(b, ranges_b, 0), a: _mask_rows(a, [(0, a.shape[1])] if ranges_b else [], 1)}
            elif located[1] == "o":
                masks = {a: _mask_rows(a, _forbidden_ranges(layout, "o", located[0], allowed), 1)}
            else:
                masks = {b: _mask_rows(b, _forbidden_ranges(layout, located[1], located[0], allowed), 0)}
            for param, trainable in masks.items():
                if not bool(trainable.all()):
                    _install(param, trainable, mask._handles)
                    mask.trainable[params[id(param)]] = trainable
        elif isinstance(module, ModulesToSaveWrapper) and CLASSIFIER not in allowed:
            if path.split(".")[-1] == HEAD_MODULES[layout.family]:
                for name, param in module.modules_to_save[adapter].named_parameters():
                    if param.requires_grad:
                        param.requires_grad_(False)
                        mask._frozen_params.append(param)
                        mask.frozen.append(f"{path}.modules_to_save.{adapter}.{name}")
    return mask


def _hook_only(param: torch.nn.Parameter, mask: torch.Tensor, handles: list[torch.utils.hooks.RemovableHandle]) -> None:
    """Make `param`'s gradient exactly zero outside `mask`, leaving its values as they are."""
    handles.append(param.register_hook(lambda grad: grad.masked_fill(~mask, 0.0)))


def _freeze(param: torch.nn.Parameter, mask: ConsentMask, name: str) -> None:
    if param.requires_grad:
        param.requires_grad_(False)
        mask._frozen_params.append(param)
        mask.frozen.append(name)


def restrict_lora_changes_to_heads(peft_model: PeftModel, permitted: Iterable[str]) -> ConsentMask:
    """Confine the *change* of a LoRA that does not start at zero (a continued adapter) to the permitted components.

    `restrict_lora_to_heads` zeroes forbidden entries, which is right for an
    adapter whose product starts at zero; a continued adapter (B₀, A₀ ≠ 0)
    must keep its starting values, and its change B₁A₁ − B₀A₀ must vanish on
    forbidden features. With both factors free that fails (a forbidden row of
    B₀ times a changed A is a change), so in a module with forbidden features
    only one factor trains: for q/k/v (output features, rows of B) A is frozen
    and B's forbidden rows get zero gradient; for o (input features, columns
    of A) B is frozen and A's forbidden columns get zero gradient; a module of
    a forbidden non-head component is frozen whole; fully permitted modules
    train both factors. The classification head is frozen unless ``classifier``
    is permitted. `remove()` undoes hooks and freezes.
    """
    layout = model_layout(peft_model)
    allowed = frozenset(permitted)
    for cid in allowed:
        check_component(layout, cid)
    adapter = peft_model.active_adapter
    params = {id(p): name for name, p in peft_model.named_parameters()}
    mask = ConsentMask(permitted=allowed, trainable={}, frozen=[])
    for path, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            a = module.lora_A[adapter].weight
            b = module.lora_B[adapter].weight
            base_path = module_path(path)
            located = projection_role(layout.family, base_path)
            if located is None:
                if _non_head_component(layout, base_path) not in allowed:
                    _freeze(a, mask, params[id(a)])
                    _freeze(b, mask, params[id(b)])
                continue
            layer, role = located
            ranges = _forbidden_ranges(layout, role, layer, allowed)
            if not ranges:
                continue
            trained, fixed, dim = (a, b, 1) if role == "o" else (b, a, 0)
            _freeze(fixed, mask, params[id(fixed)])
            trainable = _mask_rows(trained, ranges, dim)
            if bool(trainable.any()):
                _hook_only(trained, trainable, mask._handles)
                mask.trainable[params[id(trained)]] = trainable
            else:
                _freeze(trained, mask, params[id(trained)])
        elif isinstance(module, ModulesToSaveWrapper) and CLASSIFIER not in allowed:
            if path.split(".")[-1] == HEAD_MODULES[layout.family]:
                for name, param in module.modules_to_save[adapter].named_parameters():
                    _freeze(param, mask, f"{path}.modules_to_save.{adapter}.{name}")
    return mask


def adapt_support(
    layout: ModelLayout, path: str, shape: tuple[int, int], permitted: frozenset[str] | None
) -> np.ndarray | None:
    """Where a node with ``permitted`` may change module ``path``'s ΔW (out × in); None when everywhere.

    A boolean array that broadcasts to ``shape``: ``(out, 1)`` for q/k/v (a
    forbidden head's output rows are False), ``(1, in)`` for o (its input
    columns), ``(1, 1)`` for another module (its component permitted or not).
    The same rules as :func:`restrict_lora_to_heads`, GQA included. Why: exact
    aggregation averages each slice of ΔW over the nodes that may change it
    (``server.aggregation.exact_aggregate``); a node that consent kept out of a
    slice does not vote for leaving it unchanged.
    """
    if permitted is None:
        return None
    located = projection_role(layout.family, path)
    if located is None:
        return None if _non_head_component(layout, path) in permitted else np.zeros((1, 1), dtype=bool)
    layer, role = located
    ranges = _forbidden_ranges(layout, role, layer, permitted)
    if not ranges:
        return None
    axis = 1 if role == "o" else 0
    support = np.ones(shape[axis], dtype=bool)
    for start, stop in ranges:
        support[start:stop] = False
    return support[None, :] if axis == 1 else support[:, None]


def adapt_supports(
    layout: ModelLayout, arrays: Mapping[str, np.ndarray], permitted: frozenset[str] | None
) -> dict[str, np.ndarray]:
    """:func:`adapt_support` of every LoRA module of ``arrays`` (PEFT keys) that ``permitted`` restricts; the others are absent."""
    supports: dict[str, np.ndarray] = {}
    for path, pair in lora_pairs(arrays).items():
        shape = (int(np.shape(arrays[pair.b_key])[0]), int(np.shape(arrays[pair.a_key])[1]))
        support = adapt_support(layout, path, shape, permitted)
        if support is not None:
            supports[path] = support
    return supports


def _layout(layout_or_model: ModelLayout | torch.nn.Module) -> ModelLayout:
    return layout_or_model if isinstance(layout_or_model, ModelLayout) else model_layout(layout_or_model)


def _nonzero(values: np.ndarray, atol: float) -> bool:
    return values.size > 0 and bool(np.max(np.abs(values)) > atol)


def touched_heads(
    layout_or_model: ModelLayout | torch.nn.Module, arrays: Mapping[str, np.ndarray], atol: float = 0.0
) -> set[str]:
    """Head components an adapter changes, read from its arrays alone (PEFT keys) and the layout.

    A head is touched when the update ``B @ A`` (unscaled) has an entry above
    `atol` in absolute value in the head's slice: its output rows for q/k/v,
    its input columns for o. A masked update has its B rows / A columns zero
    there, so its product is exactly zero; a product (rather than a factor)
    test also leaves alone an untrained adapter whose A is random but whose B
    is still zero, since it changes nothing. A touched GQA key/value slice
    touches every query head of its group. Non-attention modules are ignored
    here (see `touched_components`).
    """
    layout = _layout(layout_or_model)
    touched: set[str] = set()
    for path, pair in lora_pairs(arrays).items():
        located = projection_role(layout.family, path)
        if located is None:
            continue
        layer, role = located
        a, b = np.asarray(arrays[pair.a_key]), np.asarray(arrays[pair.b_key])
        units = head_units(layout, role)
        axis = 1 if role == "o" else 0
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise AdapterError(f"adapter module {path!r}: lora_B {b.shape} and lora_A {a.shape} do not multiply")
        product = b @ a
        if product.shape[axis] != units[-1].stop:
            raise AdapterError(
                f"adapter module {path!r}: update shape {product.shape} does not fit {role!r} in the model layout"
            )
        for unit in units:
            piece = product[unit.start : unit.stop] if axis == 0 else product[:, unit.start : unit.stop]
            if _nonzero(piece, atol):
                touched.update(head_id(layer, h) for h in unit.heads)
    return touched


def touched_components(
    layout_or_model: ModelLayout | torch.nn.Module,
    arrays: Mapping[str, np.ndarray],
    reference_arrays: Mapping[str, np.ndarray] | None = None,
    atol: float = 0.0,
) -> set[str]:
    """Every component an adapter changes: `touched_heads`, other LoRA modules, and the head.

    A non-attention LoRA module counts (as ``layer.{i}.ffn`` or ``embeddings``)
    when its ``B @ A`` has an entry above `atol`. ``classifier`` counts when
    the head arrays differ from `reference_arrays` (by more than `atol`), or,
    with no reference, whenever head arrays are present.
    """
    layout = _layout(layout_or_model)
    touched = touched_heads(layout, arrays, atol)
    for path, pair in lora_pairs(arrays).items():
        if projection_role(layout.family, path) is None and _nonzero(
            np.asarray(arrays[pair.b_key]) @ np.asarray(arrays[pair.a_key]), atol
        ):
            touched.add(_non_head_component(layout, path))
    for key in head_module_keys(arrays):
        reference = None if reference_arrays is None else reference_arrays.get(key)
        if (
            reference is None
            or np.shape(reference) != np.shape(arrays[key])
            or _nonzero(np.asarray(arrays[key]) - np.asarray(reference), atol)
        ):
            touched.add(CLASSIFIER)
    return touched
