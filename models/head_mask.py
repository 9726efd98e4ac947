"""Per-head multiplicative gates and 0/1 head masks, plus the head-mask file format.

A head's output is its context vector (attention probabilities times values),
which the attention output projection ``o`` mixes back into the residual
stream. Multiplying that context by a gate ``g`` scales exactly the head's
contribution: ``g = 0`` removes the head, ``g = 1`` leaves it alone, and a
gate with ``requires_grad`` measures how much the loss depends on the head
(Michel et al. 2019). transformers v5 removed the ``head_mask`` forward
argument, so gates are applied by a forward pre-hook on ``o`` that scales the
head slices of its input; this works the same for BERT, GPT-2 and Llama, on a
plain model and on a PeftModel (the hook sits on the LoRA wrapper, so the LoRA
path sees the gated input too).

Head ids are always the model's original ones: after physical pruning
(`models.pruning`) a layer keeps a subset of its heads, and gates, masks and
importance arrays still have ``num_heads`` columns per layer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
import pydantic
import torch
from sentinel.models.components import ModelLayout, attention_modules, model_layout
from sentinel.models.exceptions import ModelError
from sentinel.models.fileio import write_text_atomically

HEAD_IDS_ATTR = "sentinel_head_ids"
"""Attribute set on a pruned attention module: original ids of the query heads it still has."""


class HeadMaskError(ModelError, ValueError):
    """A head mask (array or file) is malformed or does not fit the model."""


# ---------------------------------------------------------------- where heads live


@dataclass(frozen=True, eq=False)
class AttentionSite:
    """One layer's attention, located for hooking.

    `attention` is the module whose forward returns ``(output, attention_probs)``;
    `o_module` is the output projection as the forward calls it (the PEFT
    wrapper when LoRA is attached); both come with their paths in the model; `o_inside` is True when ``o`` runs inside
    `attention`'s forward (GPT-2, Llama) and False when it runs after it
    (BERT's ``attention.output.dense``). `heads` are the original ids of the
    query heads the layer has, in the order of its projection slices.
    """

    layer: int
    attention_path: str
    attention: torch.nn.Module
    o_path: str
    o_module: torch.nn.Module
    o_inside: bool
    heads: tuple[int, ...]
    head_dim: int


def kept_heads(attention: torch.nn.Module, num_heads: int) -> tuple[int, ...]:
    """Original ids of the query heads an attention module still has (all when unpruned)."""
    return tuple(getattr(attention, HEAD_IDS_ATTR, range(num_heads)))


def attention_sites(model: torch.nn.Module) -> list[AttentionSite]:
    """The attention module, o projection and present heads of every layer, in layer order."""
    layout = model_layout(model)
    sites: list[AttentionSite] = []
    for parts in attention_modules(model):
        attention_path = parts.q.path.rsplit(".", 1)[0]
        attention = model.get_submodule(attention_path)
        sites.append(
            AttentionSite(
                layer=parts.layer,
                attention_path=attention_path,
                attention=attention,
                o_path=parts.o.path,
                o_module=model.get_submodule(parts.o.path),
                o_inside=parts.o.path.startswith(attention_path + "."),
                heads=kept_heads(attention, layout.num_heads),
                head_dim=layout.head_dim,
            )
        )
    return sites


def scale_heads(x: torch.Tensor, gates: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Multiply each head slice of a context tensor ``[B, ..., heads*head_dim]`` by its gate.

    `gates` is ``[heads]`` (one gate per head) or ``[B, heads]`` (one per example and head).
    """
    heads = gates.shape[-1]
    if x.shape[-1] != heads * head_dim:
        raise HeadMaskError(
            f"context width {x.shape[-1]} is not {heads} heads x {head_dim}; "
            "was the model pruned after the gates were installed?"
        )
    if gates.dim() == 2:
        gates = gates.reshape(gates.shape[0], *([1] * (x.dim() - 2)), heads)
    split = x.reshape(*x.shape[:-1], heads, head_dim)
    return (split * gates.to(x.dtype).unsqueeze(-1)).reshape(x.shape)


# ---------------------------------------------------------------- gates


class HeadGates:
    """Multiplicative gates on every attention head's context, installed as o-projection pre-hooks.

    `gates` has shape ``[num_layers, num_heads]`` (or ``[batch, num_layers,
    num_heads]`` for one gate per example, which per-example gradient
    importance uses). It is read at every forward, so changing it in place
    changes the next forward. Use as a context manager or call `remove()`.
    """

    def __init__(
        self, model: torch.nn.Module, gates: torch.Tensor | None = None, requires_grad: bool = False
    ) -> None:
        layout = model_layout(model)
        self.layout = layout
        if gates is None:
            gates = torch.ones(layout.num_layers, layout.num_heads)
        if tuple(gates.shape[-2:]) != (layout.num_layers, layout.num_heads) or gates.dim() not in (2, 3):
            raise HeadMaskError(
                f"`gates` must have shape [num_layers, num_heads] = [{layout.num_layers}, {layout.num_heads}] "
                f"(optionally with a leading batch dimension), got {list(gates.shape)}"
            )
        device = next(model.parameters()).device
        self.gates = gates.detach().to(device=device, dtype=torch.float32).clone().requires_grad_(requires_grad)
        self._handles = []
        for site in attention_sites(model):
            hook = self._make_hook(site)
            # prepend: gates act on the raw context, before any other pre-hook (entropy gating
            # reads the context after all pre-hooks and must see the gated one).
            self._handles.append(site.o_module.register_forward_pre_hook(hook, prepend=True))

    def _make_hook(self, site: AttentionSite):  # noqa: ANN202 - torch hook signature
        index = torch.tensor(site.heads, dtype=torch.long)

        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            del module
            layer_gates = self.gates[..., site.layer, :].index_select(-1, index.to(self.gates.device))
            return (scale_heads(args[0], layer_gates, site.head_dim), *args[1:])

        return hook

    @property
    def active(self) -> bool:
        """Whether the hooks are still installed."""
        return bool(self._handles)

    def remove(self) -> None:
        """Uninstall the hooks; the model computes exactly what it did before. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def install_head_gates(
    model: torch.nn.Module, gates: torch.Tensor | None = None, requires_grad: bool = False
) -> HeadGates:
    """Install per-head multiplicative gates (all ones by default) on a model or PeftModel."""
    return HeadGates(model, gates, requires_grad=requires_grad)


def check_mask(mask: np.ndarray | torch.Tensor, layout: ModelLayout) -> np.ndarray:
    """Validate a 0/1 head mask against a layout and return it as float32 ``[L, H]``."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.shape != (layout.num_layers, layout.num_heads):
        raise HeadMaskError(
            f"head mask has shape {list(array.shape)}, the model needs "
            f"[num_layers, num_heads] = [{layout.num_layers}, {layout.num_heads}]"
        )
    if not np.isin(array, (0, 1)).all():
        raise HeadMaskError("head mask values must be 0 (pruned/masked) or 1 (kept)")
    return array.astype(np.float32)


def apply_head_mask(model: torch.nn.Module, mask: np.ndarray | torch.Tensor) -> HeadGates:
    """Mask heads (0) and keep heads (1): masked heads contribute exactly nothing until `remove()`."""
    array = check_mask(mask, model_layout(model))
    return HeadGates(model, torch.from_numpy(array))


def pruned_of_mask(mask: np.ndarray) -> dict[int, list[int]]:
    """Layer → sorted list of masked (0) heads, for every layer with at least one."""
    return {
        int(layer): [int(h) for h in np.flatnonzero(row == 0)]
        for layer, row in enumerate(np.asarray(mask))
        if (row == 0).any()
    }


def mask_of_pruned(pruned: Mapping[int, Sequence[int]], layout: ModelLayout) -> np.ndarray:
    """A float32 ``[L, H]`` mask with the listed heads set to 0 and every other head 1."""
    mask = np.ones((layout.num_layers, layout.num_heads), dtype=np.float32)
    for layer, heads in pruned.items():
        if not 0 <= int(layer) < layout.num_layers:
            raise HeadMaskError(f"layer {layer} out of range (model has {layout.num_layers} layers)")
        for head in heads:
            if not 0 <= int(head) < layout.num_heads:
                raise HeadMaskError(f"layer {layer}: head {head} out of range (layers have {layout.num_heads} heads)")
            mask[int(layer), int(head)] = 0.0
    return mask


# ---------------------------------------------------------------- file format


class HeadMaskFile(pydantic.BaseModel):
    """A head mask on disk: the full form or the pruned-list form, exactly one of them.

    Full: ``{"num_layers": L, "num_heads": H, "mask": [[1, 0, ...], ...]}``
    (1 keeps a head, 0 masks it). Pruned list: ``{"pruned": {"0": [1, 3]}}``
    (layer → heads to mask; unlisted layers keep every head).
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    num_layers: pydantic.PositiveInt | None = None
    num_heads: pydantic.PositiveInt | None = None
    mask: list[list[int]] | None = None
    pruned: dict[int, list[pydantic.NonNegativeInt]] | None = None

    @pydantic.model_validator(mode="after")
    def _one_form(self) -> Self:
        full = (self.num_layers, self.num_heads, self.mask)
        if self.pruned is not None:
            if any(v is not None for v in full):
                raise ValueError("give either `pruned` or `num_layers`/`num_heads`/`mask`, not both")
            for layer, heads in self.pruned.items():
                if layer < 0:
                    raise ValueError(f"`pruned`: layer {layer} is negative")
                if len(set(heads)) != len(heads):
                    raise ValueError(f"`pruned`: layer {layer} lists a head twice: {heads}")
            return self
        if any(v is None for v in full):
            raise ValueError("the full form needs all of `num_layers`, `num_heads` and `mask` (or give `pruned`)")
        assert self.mask is not None  # checked just above; narrows the type
        if len(self.mask) != self.num_layers:
            raise ValueError(f"`mask` has {len(self.mask)} rows but `num_layers` is {self.num_layers}")
        for i, row in enumerate(self.mask):
            if len(row) != self.num_heads:
                raise ValueError(f"`mask` row {i} has {len(row)} entries but `num_heads` is {self.num_heads}")
            if any(v not in (0, 1) for v in row):
                raise ValueError(f"`mask` row {i}: values must be 0 or 1, got {row}")
        return self

    def to_mask(self, layout: ModelLayout) -> np.ndarray:
        """The float32 ``[L, H]`` mask this file describes, checked against `layout`."""
        if self.pruned is not None:
            return mask_of_pruned(self.pruned, layout)
        if (self.num_layers, self.num_heads) != (layout.num_layers, layout.num_heads):
            raise HeadMaskError(
                f"mask is for {self.num_layers} layers x {self.num_heads} heads, the model has "
                f"{layout.num_layers} x {layout.num_heads}"
            )
        return check_mask(np.asarray(self.mask), layout)


def load_head_mask(path: str | os.PathLike[str], layout: ModelLayout) -> np.ndarray:
    """Read a head-mask JSON file (`HeadMaskFile`) and return its float32 ``[L, H]`` mask."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise HeadMaskError(f"cannot read head mask file {path}: {e}") from e
    try:
        parsed = HeadMaskFile.model_validate_json(text)
    except pydantic.ValidationError as e:
        try:
            json.loads(text)
        except json.JSONDecodeError as je:
            raise HeadMaskError(f"{path}:{je.lineno}:{je.colno}: not valid JSON: {je.msg}") from e
        raise HeadMaskError(f"{path}: invalid head mask: {e}") from e
    try:
        return parsed.to_mask(layout)
    except HeadMaskError as e:
        raise HeadMaskError(f"{path}: {e.reason}") from e


def save_head_mask(path: str | os.PathLike[str], mask: np.ndarray | torch.Tensor) -> Path:
    """Write a 0/1 mask in the full `HeadMaskFile` form, atomically; returns the path."""
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if array.ndim != 2 or not np.isin(array, (0, 1)).all():
        raise HeadMaskError(f"`mask` must be a 2-D array of 0/1, got shape {list(array.shape)}")
    record = HeadMaskFile(
        num_layers=array.shape[0], num_heads=array.shape[1], mask=array.astype(int).tolist()
    )
    return write_text_atomically(path, record.model_dump_json(exclude_none=True, indent=2))
