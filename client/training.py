"""A node's local round: apply the global state, train a LoRA within consent, report.

No Flower here: the ClientApp translates messages into these calls. Each round
starts from the pristine base model plus the global ΔW the coordinator sent
(factors of the exact global update, merged into the base weights) and the
global classification head. The node then trains a LoRA adapter whose product
is its update, ``s · B · A`` at its own rank, which the coordinator aggregates
exactly at any mix of ranks; consent masking keeps forbidden head slices of
that update exactly zero. How the adapter starts (``frame``):

- ``None`` — a *fresh* adapter: B = 0, A random, both factors train;
- ``"b"`` / ``"a"`` — the shared frame (``client.frames``): A (or B) is frozen
  to the global update's own singular directions and only the other factor
  trains, from zero. The update stays in the frame all nodes share, so the
  global ΔW keeps the rank of the largest adapter and its exact view stays small.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from peft import PeftModel
from sentinel.client.data import Example
from sentinel.client.data.batching import iter_batches, iter_length_sorted_batches, sample_batches
from sentinel.client.error_feedback import Residual, fold_residual, merged_residual
from sentinel.client.frames import Factor, FrameScale, Subframe, frame_columns, frame_rows, gradient_subframe
from sentinel.models.components import model_layout
from sentinel.models.consent import restrict_lora_changes_to_heads, restrict_lora_to_heads
from sentinel.models.continued import split_view_at_rank, start_factors
from sentinel.models.global_model import ClassifierTally, evaluate_classifier, materialise_factors
from sentinel.models.head_mask import apply_head_mask
from sentinel.models.importance import head_importance
from sentinel.models.loading import LoadedModel
from sentinel.models.lora import adapter_arrays, attach_lora, lora_layers, lora_pairs, lora_scaling
from sentinel.models.regrowth import HeadBoost, HeadLRBoost, boosted_heads
from sentinel.protos.messages import LORA_ALPHA_PER_RANK


@dataclass(frozen=True)
class GlobalView:
    """What a node receives of the global state: ΔW factors per module and the head."""

    factors: Mapping[str, tuple[np.ndarray, np.ndarray]]
    """Module path → (A, B) with ΔW = B @ A (scaling 1), rows of A / columns of B ordered by singular value."""
    head: Mapping[str, np.ndarray]
    """Base-model parameter name → value (the classification head)."""
    head_mask: np.ndarray | None = None
    """Layers × heads 0/1 mask of the global model (None: all heads on)."""


@dataclass(frozen=True)
class LocalUpdate:
    """What a node returns from a round of local training."""

    arrays: dict[str, np.ndarray]
    num_examples: int
    train_loss: float
    val_accuracy: float
    val_loss: float
    scaling: float
    rank: int
    entropy: np.ndarray
    gradient_importance: np.ndarray | None
    """None when the coordinator did not ask for it (``measure_gradient=False``)."""
    normalised_entropy: np.ndarray
    """Entropy ÷ log(keys seen): 1.0 is uniform attention (read by the consent agency rule)."""
    residual: Residual | None = None
    """What this node trained but did not send (``client.error_feedback``); None without error feedback."""


def materialise_global(base: LoadedModel, view: GlobalView) -> torch.nn.Module:
    """A copy of the base model with the global ΔW (from its factors) merged in and the head loaded."""
    return materialise_factors(base, view.factors, view.head)


def resolve_device(requested: str | None = "auto") -> torch.device:
    """The torch device a node computes on: ``auto`` takes CUDA when present, else the CPU."""
    if requested in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device `{requested}` was requested but CUDA is not available on this node")
    return device


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def evaluate_examples(
    model: torch.nn.Module, base: LoadedModel, examples: Sequence[Example], batch_size: int, max_length: int
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a classifier on ``examples`` (on the model's device)."""
    return evaluate_classifier(model, iter_length_sorted_batches(base.tokenizer, examples, batch_size, max_length))


def train_local(
    base: LoadedModel,
    view: GlobalView,
    train: Sequence[Example],
    val: Sequence[Example],
    *,
    rank: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    max_length: int,
    seed: int,
    permitted: Iterable[str] | None = None,
    importance_batches: int = 2,
    device: torch.device | str = "cpu",
    frame: Factor | None = None,
    frame_seed: int = 0,
    frame_gain: float = 1.0,
    frame_scale: FrameScale = "balanced",
    frame_rank: int | None = None,
    subframe: Subframe = "top",
    server_round: int = 0,
    boost: HeadBoost | None = None,
    continued: bool = False,
    measure_gradient: bool = True,
    residual: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> LocalUpdate:
    """Train a LoRA on top of the global model for ``steps`` steps and report the update.

    ``permitted`` is the node's permitted set (component ids) for this round; None
    means everything. ``frame`` is how the adapter starts (see the module
    docstring; ``frame_seed`` and ``server_round`` seed the random directions
    that complete a frame, the same on every node; ``frame_gain`` scales the
    frozen factor and ``frame_scale`` sets how it is normalised, ``client.frames.frame_rows``). Training runs on
    ``device``; the arrays returned are on the CPU. The returned arrays are
    PEFT adapter arrays (lora_A/lora_B and the head), and ``s · B · A`` is the
    update. Deterministic for a given ``seed``. ``boost`` (regrown heads, from
    federated plasticity) multiplies those heads' own LoRA updates by its factor
    during training (``models.regrowth.HeadLRBoost``); its ids are checked against the model first.
    ``continued`` resumes the global adapter instead (``models.continued``): the
    view's factors are the adapter's start, and the trained adapter (rank r) is
    sent; the coordinator rebuilds the change from the start it sent.
    ``measure_gradient`` adds gradient head importance to the probe (a backward
    pass per probe batch); the coordinator asks for it when federated plasticity runs.
    ``frame_rank`` is the rank R of the shared frame (the largest rank of the
    round; None: the node's own); a node of smaller rank trains in r of its
    directions, chosen by ``subframe`` (``client.frames.Subframe``: the leading r,
    or the r combinations that carry most of its gradient on its first
    training batches, :func:`frame_subframes`, or, ``trained``, the whole frame
    and then the best rank-r part of what it trained, :func:`truncate_in_frame`).
    ``residual`` turns on error feedback for a ``trained`` node below the frame's
    rank (``client.error_feedback``; ``{}``: none kept yet): its in-frame part joins
    this round's update before the cut, and the update's ``residual`` is what is left.
    """
    if continued and frame is not None:
        raise ValueError("a continued adapter does not train in the shared frame: give `frame` or `continued`, not both")
    if frame_rank is not None and frame_rank < rank:
        raise ValueError(f"the frame's rank ({frame_rank}) is below this node's LoRA rank ({rank})")
    boost_heads = boosted_heads(boost.heads, model_layout(base.model)) if boost is not None else {}
    torch.manual_seed(seed)
    if continued:  # the view's top-r part is the adapter's start; what it sends beyond rank r is merged into the base
        start, rest = split_view_at_rank(view.factors, rank)
        model = materialise_factors(base, rest, view.head)
    else:
        model = materialise_global(base, view)
    truncated = frame is not None and subframe == "trained" and frame_rank is not None and frame_rank > rank
    adapter_rank = int(frame_rank) if truncated and frame_rank is not None else rank  # trains in the whole frame
    peft_model = attach_lora(model, rank=adapter_rank, alpha=LORA_ALPHA_PER_RANK * adapter_rank, seed=seed).to(device)
    mixing: dict[str, np.ndarray] = {}
    if frame is not None and subframe == "gradient" and frame_rank is not None and frame_rank > rank:
        batches = list(sample_batches(base.tokenizer, train, batch_size, max_length, min(steps, SUBFRAME_BATCHES), seed))
        start = FrameStart(frame, frame_seed, server_round, frame_gain, frame_scale, frame_rank)
        mixing = frame_subframes(base, view, start, rank, batches, permitted, device)
    frozen = (
        _start_in_frame(peft_model, view, frame, frame_seed, server_round, frame_gain, frame_scale, frame_rank, mixing)
        if frame is not None
        else []
    )
    if continued:
        _start_continued(peft_model, dataclasses.replace(view, factors=start))
        mask = restrict_lora_changes_to_heads(peft_model, permitted) if permitted is not None else None
    else:
        mask = restrict_lora_to_heads(peft_model, permitted) if permitted is not None else None
    for param in frozen:  # after the consent mask: it zeroes the frame's forbidden slices too
        param.requires_grad_(False)
    gates = apply_head_mask(peft_model, view.head_mask) if view.head_mask is not None else None
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    booster = HeadLRBoost(optimiser, peft_model, boost_heads, boost.factor) if boost is not None and boost_heads else None
    peft_model.train()
    losses: list[float] = []
    for batch in sample_batches(base.tokenizer, train, batch_size, max_length, steps, seed):
        optimiser.zero_grad(set_to_none=True)
        loss = peft_model(**_to(batch, torch.device(device))).loss
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    if booster is not None:
        booster.remove()
    kept: dict[str, np.ndarray] = {}
    new_residual: Residual | None = None
    if truncated and frame is not None:  # send the best rank-r part; with error feedback, add what was left out before
        carried = fold_residual(peft_model, frame, residual, lora_scaling(peft_model), mask) if residual else {}
        kept, cut = truncate_in_frame(peft_model, frame, rank)
        new_residual = merged_residual([carried, cut], adapter_rank) if residual is not None else None
    peft_model.eval()
    # One pass over the validation data: the importance probe's first examples count towards accuracy and loss too.
    probe_examples = list(val or train)[: importance_batches * batch_size]
    probe = list(iter_batches(base.tokenizer, probe_examples, batch_size, max_length))
    tally = ClassifierTally()
    importance = head_importance(peft_model, probe, gradient=measure_gradient, tally=tally if val else None)
    rest = list(val)[len(probe_examples) :] if val else []
    val_acc, val_loss = evaluate_classifier(peft_model, iter_length_sorted_batches(base.tokenizer, rest, batch_size * 2, max_length), tally)
    if mask is not None:
        mask.remove()
    if gates is not None:
        gates.remove()
    for param in frozen:
        param.requires_grad_(True)
    arrays = adapter_arrays(peft_model) if not kept else adapter_arrays_at_rank(adapter_arrays(peft_model), kept)
    return LocalUpdate(
        arrays=arrays,
        num_examples=len(train),
        train_loss=float(np.mean(losses)) if losses else float("nan"),
        val_accuracy=val_acc,
        val_loss=val_loss,
        scaling=lora_scaling(peft_model),
        rank=rank,
        entropy=np.asarray(importance.entropy, dtype=np.float32),
        gradient_importance=None if importance.gradient is None else np.asarray(importance.gradient, dtype=np.float32),
        normalised_entropy=np.asarray(importance.normalised_entropy, dtype=np.float32),
        residual=new_residual,
    )


def truncate_in_frame(peft_model: PeftModel, factor: Factor, rank: int) -> tuple[dict[str, np.ndarray], Residual]:
    """Cut every trained rank-R frame adapter to its best rank-``rank`` part, in place.

    Returns (module → the R × r mixing Q, module → the ΔW the cut left out as
    factors (X, Y), the scaling included: the node's error-feedback residual, ``client.error_feedback``).

    ``subframe="trained"``: the trained factor (B, out × R, in a B round; A,
    R × in, in an A round) is projected onto its own top-r singular
    combinations Q (:func:`client.frames.gradient_subframe` of the factor),
    B ← B Q Qᵀ or A ← Q Qᵀ A, so the adapter computes the Eckart–Young best
    rank-r part of the node's update within the frame (with a ``unit`` frame,
    whose frozen factor is orthonormal up to scale and consent's zeroes). The node evaluates and probes that model, and
    :func:`adapter_arrays_at_rank` sends it at rank r: ``(Qᵀ A, B Q)``. Consent
    zeroes stay zero: a zero row of B (column of A) is one of B Q (Qᵀ A).
    """
    adapter = peft_model.active_adapter
    scaling = lora_scaling(peft_model)
    kept: dict[str, np.ndarray] = {}
    cut: Residual = {}
    for name, module in lora_layers(peft_model):
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        trained = b if factor == "b" else a
        q = gradient_subframe(trained.detach().cpu().numpy(), rank, factor)
        a64, b64 = a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()
        rest = np.eye(q.shape[0]) - q @ q.T
        cut[name] = (scaling * b64 @ rest, a64) if factor == "b" else (b64, scaling * rest @ a64)
        projector = torch.from_numpy(q @ q.T).to(trained.device, trained.dtype)
        with torch.no_grad():
            trained.copy_(trained @ projector if factor == "b" else projector @ trained)
        kept[name] = q
    return kept, cut


def adapter_arrays_at_rank(arrays: Mapping[str, np.ndarray], kept: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rank-R adapter arrays rewritten at rank r by each module's R × r mixing Q: A → Qᵀ A, B → B Q (the same product)."""
    out = dict(arrays)
    for module, pair in lora_pairs(arrays).items():
        q = kept[module]
        a, b = np.asarray(arrays[pair.a_key], np.float64), np.asarray(arrays[pair.b_key], np.float64)
        out[pair.a_key] = (q.T @ a).astype(np.float32)
        out[pair.b_key] = (b @ q).astype(np.float32)
    return out


SUBFRAME_BATCHES = 4
"""Training batches whose gradient chooses a low-rank node's sub-frame (``subframe="gradient"``)."""


@dataclass(frozen=True)
class FrameStart:
    """How the round's shared frame is built: the factor that trains, its seed, round, gain, scale and rank."""

    factor: Factor
    run_seed: int
    server_round: int
    gain: float
    scale: FrameScale
    rank: int


def frame_subframes(
    base: LoadedModel,
    view: GlobalView,
    frame: FrameStart,
    rank: int,
    batches: Sequence[Mapping[str, torch.Tensor]],
    permitted: Iterable[str] | None,
    device: torch.device | str,
) -> dict[str, np.ndarray]:
    """Module → the R × r mixing of the frame that carries most of this node's gradient (``client.frames.gradient_subframe``).

    The gradient is read off a rank-R adapter in the full frame on the global
    model, consent-masked as the node's own adapter is, over ``batches``: the
    trained factor's gradient is the loss gradient projected into the frame.
    """
    model = materialise_global(base, view)
    probe = attach_lora(model, rank=frame.rank, alpha=LORA_ALPHA_PER_RANK * frame.rank, seed=0).to(device)
    frozen = _start_in_frame(probe, view, frame.factor, frame.run_seed, frame.server_round, frame.gain, frame.scale)
    mask = restrict_lora_to_heads(probe, permitted) if permitted is not None else None
    for param in frozen:
        param.requires_grad_(False)
    gates = apply_head_mask(probe, view.head_mask) if view.head_mask is not None else None
    probe.eval()  # the gradient of the model the node trains on, without dropout's noise
    for batch in batches:
        probe(**_to(batch, torch.device(device))).loss.backward()
    for hooks in (mask, gates):
        if hooks is not None:
            hooks.remove()
    adapter = probe.active_adapter
    mixing: dict[str, np.ndarray] = {}
    for name, module in lora_layers(probe):
        trained = module.lora_B[adapter].weight if frame.factor == "b" else module.lora_A[adapter].weight
        grad = trained.grad.detach().cpu().numpy() if trained.grad is not None else np.zeros(tuple(trained.shape))
        mixing[name] = gradient_subframe(grad, rank, frame.factor)
    return mixing


def _start_in_frame(
    peft_model: PeftModel,
    view: GlobalView,
    factor: Factor,
    run_seed: int,
    server_round: int,
    gain: float = 1.0,
    scale: FrameScale = "balanced",
    frame_rank: int | None = None,
    mixing: Mapping[str, np.ndarray] | None = None,
) -> list[torch.nn.Parameter]:
    """Set every LoRA module to start in the shared frame; return the factors to freeze.

    ``b``: A = the global adapter's top rows (``client.frames.frame_rows``), B = 0 (B trains).
    ``a``: B = the global adapter's top columns, A = 0 (A trains).
    Either way the adapter's product starts at zero on top of the merged global
    ΔW, so the model computes the global model and the product is the update.
    ``gain`` scales the frozen factor and ``scale`` normalises it (``client.frames``): the step the trained factor makes in ΔW.
    With ``mixing`` (module → R × r, :func:`frame_subframes`) the frozen factor is
    that combination of the rank-``frame_rank`` frame, ``Qᵀ F`` or ``C Q``; without, the frame's leading r directions.
    """
    frozen: list[torch.nn.Parameter] = []
    adapter = peft_model.active_adapter
    for name, module in lora_layers(peft_model):
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        rank, (out, inp) = a.shape[0], (b.shape[0], a.shape[1])
        q = (mixing or {}).get(name)
        frame_rank_here = rank if q is None else int(frame_rank or rank)
        view_a, view_b = view.factors.get(name, (np.zeros((0, inp)), np.zeros((out, 0))))
        with torch.no_grad():
            if factor == "b":
                rows = frame_rows(view_a, frame_rank_here, LORA_ALPHA_PER_RANK, run_seed, server_round, name, gain=gain, scale=scale)
                a.copy_(torch.from_numpy(rows if q is None else (q.T @ rows.astype(np.float64)).astype(np.float32)))
                b.zero_()
                frozen.append(a)
            else:
                columns = frame_columns(view_b, frame_rank_here, LORA_ALPHA_PER_RANK, gain=gain, scale=scale)
                b.copy_(torch.from_numpy(columns if q is None else (columns.astype(np.float64) @ q).astype(np.float32)))
                a.zero_()
                frozen.append(b)
    return frozen


def _start_continued(peft_model: PeftModel, view: GlobalView) -> None:
    """Set every LoRA module to the start the view's factors give (``models.continued.start_factors``).

    A₀'s sent rows and all of B₀ are copied; rows of A for directions not sent
    keep PEFT's random start. The adapter then computes exactly the view's
    top-r part on the base weights: the model the node was sent.
    """
    adapter = peft_model.active_adapter
    for name, module in lora_layers(peft_model):
        a, b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        if name not in view.factors:
            raise KeyError(f"the view has no factors for adapted module `{name}`")
        a_sent, b_sent = view.factors[name]
        a0, b0, live = start_factors(a_sent, b_sent, LORA_ALPHA_PER_RANK, a.shape[0])
        with torch.no_grad():
            b.copy_(torch.from_numpy(b0))
            rows = torch.from_numpy(live)
            a[rows] = torch.from_numpy(a0[live]).to(a.dtype)
