"""Entropy-based gating: attention routing that turns down diffuse heads, per input.

For each example and head, the gate is computed from the head's attention in
the *same* forward pass and multiplies that head's context before the output
projection:

    Ĥ_h = mean over real queries q with n_q >= 2 real keys of  H(p_hq) / log n_q
    g_h = sigmoid((τ_h - Ĥ_h) / temperature)

``H`` is the entropy (nats) of query ``q``'s attention distribution, so
``Ĥ ∈ [0, 1]``: 0 when every query puts all its weight on one key, 1 when
attention is uniform. Heads whose attention is more diffuse than the threshold
``τ`` get gates below 1/2; focused heads get gates near 1. ``τ`` is one number
or, with ``learnable=True``, a trainable per-head parameter. Queries that see a
single key (the first token of a causal model) say nothing about diffuseness
and are left out; an example with no other query gets ``Ĥ = 0`` (gate open).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

import torch
from sentinel.models.components import model_layout
from sentinel.models.head_mask import AttentionSite, attention_sites, scale_heads
from torch import nn


def key_validity(attention_mask: torch.Tensor | None, probs: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """Boolean ``[B, 1|H, Q, K]``: which keys each query may attend to.

    From the additive 4-D mask the attention forward received (``0`` allowed,
    a very negative number blocked); without one, every key (bidirectional) or
    every earlier key (causal).
    """
    batch, _, q_len, k_len = probs.shape
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[..., :q_len, :k_len]
        if mask.dtype == torch.bool:
            return mask
        return mask > torch.finfo(mask.dtype).min / 2
    valid = torch.ones(batch, 1, q_len, k_len, dtype=torch.bool, device=probs.device)
    if is_causal:
        valid = torch.tril(valid, diagonal=k_len - q_len)
    return valid


def _query_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) per query, with a finite gradient where a probability is exactly 0.

    ``torch.special.entr`` has an infinite derivative at 0 (masked keys), which
    turns into NaN in the model's gradients; clamping inside the log keeps
    ``0 * log 0 = 0`` and a finite derivative.
    """
    p = probs.double()
    return -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(dim=-1)


def normalised_entropy(probs: torch.Tensor, keys_valid: torch.Tensor) -> torch.Tensor:
    """Per example and head, the mean of ``H / log(real keys)`` over informative real queries: ``[B, H]``.

    A query is real when it may attend to its own position (padding positions
    are blocked as keys, so their own row's diagonal is blocked) and
    informative when it sees at least two keys.
    """
    q_len, k_len = probs.shape[-2:]
    n_keys = keys_valid.sum(dim=-1).to(torch.float64)  # [B, 1|H, Q]
    diagonal = torch.arange(q_len, device=probs.device) + (k_len - q_len)
    real_query = keys_valid[..., torch.arange(q_len, device=probs.device), diagonal]  # [B, 1|H, Q]
    use = real_query & (n_keys >= 2)
    ratio = _query_entropy(probs) / torch.log(n_keys.clamp(min=2))  # [B, H, Q]
    weights = use.to(ratio.dtype).expand_as(ratio)
    counts = weights.sum(dim=-1)
    mean = torch.where(counts > 0, (ratio * weights).sum(dim=-1) / counts.clamp(min=1), torch.zeros_like(counts))
    return mean.to(probs.dtype)


class EntropyGate(nn.Module):
    """Gates ``sigmoid((τ - Ĥ) / temperature)`` from normalised attention entropy Ĥ (see module doc).

    `threshold` τ is in normalised-entropy units ([0, 1]); with `learnable`
    it becomes a ``[num_layers, num_heads]`` parameter initialised to it.
    """

    def __init__(
        self, num_layers: int, num_heads: int, threshold: float = 0.9, temperature: float = 0.1, learnable: bool = False
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"`temperature` must be > 0, got {temperature!r}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"`threshold` is a normalised entropy and must be in [0, 1], got {threshold!r}")
        self.temperature = float(temperature)
        tau = torch.full((num_layers, num_heads), float(threshold))
        if learnable:
            self.threshold = nn.Parameter(tau)
        else:
            self.register_buffer("threshold", tau)

    def forward(self, entropy: torch.Tensor, layer: int, heads: torch.Tensor | None = None) -> torch.Tensor:
        """Gates for normalised entropies ``[B, h]`` of layer `layer` (`heads`: their original ids)."""
        tau = self.threshold[layer] if heads is None else self.threshold[layer].index_select(0, heads)
        return torch.sigmoid((tau.to(entropy.dtype) - entropy) / self.temperature)


class EntropyGating:
    """Hooks that apply an `EntropyGate` inside a model's forward; see `enable_entropy_gating`.

    `last_gates` maps layer → the ``[batch, heads_present]`` gates of the
    latest forward. `disable()` makes the hooks pass everything through
    unchanged (bit-identical outputs), `enable()` turns them back on,
    `remove()` uninstalls them.
    """

    def __init__(self, model: nn.Module, gate: EntropyGate) -> None:
        self.gate = gate
        self.enabled = True
        self.last_gates: dict[int, torch.Tensor] = {}
        self._contexts: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []
        for site in attention_sites(model):
            if site.o_inside:
                # The context is o's input; stash it last (after any HeadGates) and redo o gated.
                stash = self._stash_hook(site.layer)
                self._handles.append(site.o_module.register_forward_pre_hook(stash))
            hook = self._gate_hook(site)
            self._handles.append(site.attention.register_forward_hook(hook, with_kwargs=True))

    def _stash_hook(self, layer: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            del module
            if self.enabled:
                self._contexts[layer] = args[0]

        return hook

    def _gate_hook(self, site: AttentionSite) -> Callable[..., Any]:
        heads = torch.tensor(site.heads, dtype=torch.long)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:  # noqa: ANN401
            del args
            if not self.enabled:
                return None
            attn_out, probs = output[0], output[1]
            if probs is None:
                raise RuntimeError(
                    f"layer {site.layer}: the attention module returned no probabilities; "
                    "entropy gating needs eager attention (attn_implementation='eager')"
                )
            valid = key_validity(kwargs.get("attention_mask"), probs, bool(getattr(module, "is_causal", False)))
            gates = self.gate(normalised_entropy(probs, valid), site.layer, heads.to(probs.device))
            self.last_gates[site.layer] = gates.detach()
            if site.o_inside:
                context = self._contexts.pop(site.layer)
                # `forward` (not `__call__`) so o's pre-hooks (HeadGates) are not applied twice.
                attn_out = site.o_module.forward(scale_heads(context, gates, site.head_dim))
                dropout = getattr(module, "resid_dropout", None)  # GPT-2 drops out after c_proj
                if dropout is not None:
                    attn_out = dropout(attn_out)
            else:
                attn_out = scale_heads(attn_out, gates, site.head_dim)
            return (attn_out, *output[1:])

        return hook

    def enable(self) -> None:
        """Gate head outputs again (after `disable`)."""
        self.enabled = True

    def disable(self) -> None:
        """Leave the hooks installed but pass outputs through unchanged."""
        self.enabled = False
        self._contexts.clear()

    def remove(self) -> None:
        """Uninstall the hooks. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._contexts.clear()
        self.enabled = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()


def enable_entropy_gating(
    model: nn.Module,
    threshold: float = 0.9,
    temperature: float = 0.1,
    learnable: bool = False,
    gate: EntropyGate | None = None,
) -> EntropyGating:
    """Gate every head's output by its own attention entropy in the same forward pass.

    Builds an `EntropyGate` (or uses `gate`, e.g. a trained one) and installs
    hooks: each attention module's output probabilities give the gates, which
    scale the head contexts before the output projection. The model must run
    with eager attention (the presets do). Returns the handle to disable or
    remove the gating.
    """
    if gate is None:
        layout = model_layout(model)
        gate = EntropyGate(layout.num_layers, layout.num_heads, threshold, temperature, learnable)
        gate.to(next(model.parameters()).device)
    return EntropyGating(model, gate)
