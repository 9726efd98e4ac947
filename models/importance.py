"""How much each attention head matters: attention entropy and gradient importance.

Two per-head signals, both ``[num_layers, num_heads]`` arrays in original head
ids (a physically pruned head gets NaN entropy and 0 importance):

- attention entropy: how diffuse a head's attention is (natural log; 0 = all
  weight on one key, ``log n`` = uniform over ``n`` keys). Validators compare
  entropy profiles before and after an update (the entropy gate).
- gradient importance (Michel et al. 2019, "Are Sixteen Heads Really Better
  than One?"): with a gate ``ξ_h = 1`` on every head's output,
  ``I_h = E_x |∂L(x)/∂ξ_h|``, then ℓ2-normalised within each layer. Low
  importance marks a head that pruning would hurt least.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from sentinel.models.components import model_layout
from sentinel.models.global_model import ClassifierTally
from sentinel.models.head_mask import HeadGates, attention_sites

LossFn = Callable[[object, Mapping[str, torch.Tensor]], torch.Tensor]
"""``loss_fn(model_outputs, batch) -> scalar``: the mean over the batch's examples of a per-example loss."""


@dataclass(frozen=True)
class HeadImportance:
    """Both importance signals of one model on one data set, ``[num_layers, num_heads]`` each."""

    entropy: np.ndarray
    gradient: np.ndarray | None
    """None when not measured (``head_importance(gradient=False)``)."""
    normalised_entropy: np.ndarray | None = None
    """The entropy normalised per query by the log of its key count (``attention_entropy(normalised=True)``); None if not measured."""

    def to_dict(self) -> dict[str, list[list[float | None]]]:
        """JSON-ready nested lists; NaN (a pruned head's entropy) becomes None."""
        out = {"entropy": _to_lists(self.entropy)}
        if self.gradient is not None:
            out["gradient"] = _to_lists(self.gradient)
        return out


def _to_lists(array: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else float(v) for v in row] for row in array]


# ---------------------------------------------------------------- pure math


def query_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention distribution: ``[..., Q, K] -> [..., Q]``; 0·log 0 = 0."""
    return torch.special.entr(probs.double()).sum(dim=-1)


def entropy_sums(
    probs: torch.Tensor, query_mask: torch.Tensor | None, *, normalised: bool = False, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per head, the sum of query entropies over real queries and the number of real queries.

    `probs` ``[B, H, Q, K]``; `query_mask` ``[B, Q]`` (1 = real token, 0 =
    padding; None = all real). Masked keys carry probability 0, so padding
    keys add nothing; padding queries are left out by `query_mask`. With
    `normalised`, each query's entropy is divided by the log of the number of
    keys it may attend to (real keys; with `causal`, only those at or before it),
    so 1.0 means uniform attention; queries that see a single key are left out.
    """
    entropy = query_entropy(probs)  # [B, H, Q]
    q_len, k_len = probs.shape[2], probs.shape[3]
    if query_mask is None:
        query_mask = torch.ones(probs.shape[0], q_len, device=probs.device)
    weights = query_mask.to(entropy.dtype)[:, None, :q_len]
    if normalised:
        keys = query_mask.to(entropy.dtype)[:, None, :k_len].expand(-1, q_len, -1)  # [B, Q, K]
        if causal:
            keys = keys * torch.tril(torch.ones(q_len, k_len, dtype=entropy.dtype, device=probs.device), diagonal=k_len - q_len)
        n_keys = keys.sum(-1)[:, None, :]  # [B, 1, Q]
        weights = weights * (n_keys > 1).to(entropy.dtype)
        entropy = entropy / torch.log(n_keys.clamp(min=2))
    return (entropy * weights).sum(dim=(0, 2)), weights.sum(dim=(0, 2)).expand(probs.shape[1])


def normalise_per_layer(importance: np.ndarray) -> np.ndarray:
    """ℓ2-normalise each row (layer); a row of zeros stays zeros (no NaN)."""
    norms = np.linalg.norm(importance, axis=-1, keepdims=True)
    return np.divide(importance, norms, out=np.zeros_like(importance, dtype=np.float64), where=norms > 0)


# ---------------------------------------------------------------- measuring


@contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off for a measurement, the caller's train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device, keep_labels: bool) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if keep_labels or k != "labels"}


def attention_entropy(
    model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], *, normalised: bool = False
) -> np.ndarray:
    """Mean attention entropy (nats) per head over real query tokens: ``[num_layers, num_heads]``.

    Each batch holds the model's inputs (``input_ids``, ``attention_mask``, …;
    ``labels`` is ignored). Padding queries (``attention_mask == 0``) are left
    out. Runs under ``no_grad`` in eval mode. Pruned heads get NaN. With
    ``normalised`` each query's entropy is divided by the log of the number of
    keys it sees (1.0 = uniform attention), which makes heads comparable across
    sequence lengths: the consent policy's entropy-saturation rule reads it.
    """
    return cast(np.ndarray, _probe(model, batches, None, entropies=True, gradient=False)[1 if normalised else 0])


def _batch_size(batch: Mapping[str, torch.Tensor]) -> int:
    for key in ("input_ids", "attention_mask", "inputs_embeds"):
        if key in batch:
            return int(batch[key].shape[0])
    raise ValueError(f"batch has none of `input_ids`, `attention_mask`, `inputs_embeds`: keys {sorted(batch)}")


def gradient_importance(
    model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], loss_fn: LossFn | None = None
) -> np.ndarray:
    """Michel et al. head importance ``E_x |∂L(x)/∂ξ_h|``, ℓ2-normalised per layer: ``[L, H]``.

    Every example gets its own gates (all ones, so the model's outputs are
    unchanged), so the absolute value is taken per example, as in the paper's
    expectation, not per batch. The loss is the model's own (batches must hold
    ``labels``) or ``loss_fn(outputs, batch)``, which must be the mean over
    the batch's examples of a per-example loss (for a token-averaged language
    model loss the per-example weighting is approximate). Gradients are
    taken with respect to the gates only: model parameters' ``.grad`` are not
    touched. Runs in eval mode. Pruned heads get 0.
    """
    return cast(np.ndarray, _probe(model, batches, loss_fn, entropies=False, gradient=True)[2])


def _loss(outputs: object, batch: Mapping[str, torch.Tensor], loss_fn: LossFn | None) -> torch.Tensor:
    if loss_fn is not None:
        return loss_fn(outputs, batch)
    loss = getattr(outputs, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: give batches `labels` or pass `loss_fn`")
    return loss


def head_importance(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    loss_fn: LossFn | None = None,
    *,
    gradient: bool = True,
    tally: ClassifierTally | None = None,
) -> HeadImportance:
    """Attention entropy (raw and normalised) and gradient importance of every head over the same batches.

    One forward and one backward pass per batch give all three: the gates are
    all ones, so the attention the gated forward returns is the model's own,
    and :func:`attention_entropy` and :func:`gradient_importance` run apart
    would cost two more forward passes (a node's probe after every round).
    The values equal theirs (a test checks it). With ``gradient=False`` only
    the entropies are measured, in one forward pass without gradients (a third
    of the cost): gradient importance serves federated plasticity alone.
    With ``tally`` the same forward passes also count the model's accuracy and
    loss on the batches' labels, so a node that probes its validation data
    need not run those examples through the model again.
    """
    entropy, normalised_entropy, grad = _probe(model, batches, loss_fn, entropies=True, gradient=gradient, tally=tally)
    return HeadImportance(entropy=cast(np.ndarray, entropy), gradient=grad, normalised_entropy=normalised_entropy)


def _probe(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    loss_fn: LossFn | None,
    *,
    entropies: bool,
    gradient: bool,
    tally: ClassifierTally | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(raw entropy, normalised entropy, gradient importance) from one pass per batch, each None when not asked for.

    The one measuring loop behind :func:`attention_entropy`,
    :func:`gradient_importance` and :func:`head_importance`. With ``gradient``
    each example gets its own gates (all ones: the attention the gated
    forward returns is the model's own) and one backward pass; without it the
    forward runs under ``no_grad``. An empty ``batches`` gives NaN entropies
    and is an error for gradient importance.
    """
    layout = model_layout(model)
    causal = layout.family in ("gpt2", "llama")
    sites = attention_sites(model)
    shape = (layout.num_layers, layout.num_heads)
    sums = {False: torch.zeros(shape, dtype=torch.float64), True: torch.zeros(shape, dtype=torch.float64)}
    counts = {False: torch.zeros(shape, dtype=torch.float64), True: torch.zeros(shape, dtype=torch.float64)}
    total = torch.zeros(shape, dtype=torch.float64)
    examples = 0
    with _eval_mode(model):
        device = next(model.parameters()).device
        for batch in batches:
            size = _batch_size(batch)
            if gradient:
                gates = HeadGates(model, torch.ones(size, *shape), requires_grad=True)
                try:
                    inputs = _model_inputs(batch, gates.gates.device, keep_labels=loss_fn is None)
                    outputs = model(**inputs, output_attentions=entropies)
                    (grad,) = torch.autograd.grad(_loss(outputs, batch, loss_fn), gates.gates)
                finally:
                    gates.remove()
                # d(mean loss)/d(ξ of example b) = (1/B) dL_b/dξ_b: scale back before |·|.
                total += (grad.detach().double() * size).abs().sum(dim=0).cpu()
            else:
                inputs = _model_inputs(batch, device, keep_labels=False)
                with torch.no_grad():
                    outputs = model(**inputs, output_attentions=True)
            examples += size
            if tally is not None and "labels" in batch:
                tally.add(outputs.logits, batch["labels"])
            if not entropies:
                continue
            query_mask = inputs.get("attention_mask")
            with torch.no_grad():
                for site, probs in zip(sites, outputs.attentions, strict=True):
                    heads = list(site.heads)
                    for normalised in (False, True):
                        part, count = entropy_sums(probs.detach(), query_mask, normalised=normalised, causal=causal)
                        sums[normalised][site.layer, heads] += part.cpu()
                        counts[normalised][site.layer, heads] += count.cpu()
    if gradient and examples == 0:
        raise ValueError("`batches` is empty: gradient importance needs at least one example")

    def mean(normalised: bool) -> np.ndarray:
        c = counts[normalised].numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c > 0, sums[normalised].numpy() / c, np.nan)

    return (
        mean(False) if entropies else None,
        mean(True) if entropies else None,
        normalise_per_layer((total / examples).numpy()) if gradient else None,
    )
