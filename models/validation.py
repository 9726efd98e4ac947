"""What a validator measures of a candidate update: loss, accuracy, attention entropy, output drift.

A validator applies a candidate update to the current global model and compares
the two on its own labelled data, in one forward pass per model:

- the change of validation loss and accuracy, with the standard error of the
  loss change paired over the same examples (the *loss gate* reads both: a
  candidate fails when it makes loss worse by more than the tolerance plus
  :data:`LOSS_GATE_SIGMAS` standard errors, i.e. significantly worse);
- the per-head shift of normalised attention entropy, ``[layers, heads]`` (the
  *entropy gate* reads it: heads collapsing onto one token or going uniform are
  a sign of poisoning or drift);
- the mean KL divergence ``KL(p_global ‖ p_candidate)`` of the output distributions.

No Flower here; the ClientApp's ``evaluate.validate`` handler calls these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sentinel.models.components import model_layout
from sentinel.models.head_mask import attention_sites
from sentinel.models.importance import entropy_sums

Batch = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ModelReading:
    """One model's behaviour on the validation batches."""

    loss: float
    accuracy: float
    entropy: np.ndarray
    """Mean normalised attention entropy per head, ``[layers, heads]`` (1.0 = uniform)."""
    log_probs: tuple[torch.Tensor, ...]
    """Per batch, the log-probabilities of the outputs (for the KL divergence)."""
    losses: np.ndarray
    """Per example, the cross-entropy (for a paired comparison of two models)."""


@dataclass(frozen=True)
class CandidateMeasurement:
    """How a candidate update changes the global model on a validator's data."""

    loss_before: float
    loss_after: float
    accuracy_before: float
    accuracy_after: float
    entropy_shift: np.ndarray
    """Per head: entropy(candidate) − entropy(global), ``[layers, heads]``."""
    kl: float
    """Mean over examples of KL(p_global ‖ p_candidate), nats."""
    loss_change_se: float = 0.0
    """Standard error of the mean per-example loss change (paired over the same examples)."""

    @property
    def loss_change(self) -> float:
        """Validation loss after − before (positive: the candidate makes things worse)."""
        return self.loss_after - self.loss_before

    @property
    def accuracy_change(self) -> float:
        """Validation accuracy after − before."""
        return self.accuracy_after - self.accuracy_before

    @property
    def entropy_shift_norm(self) -> float:
        """‖entropy shift‖₂ over heads: the summary the entropy gate calibrates."""
        finite = self.entropy_shift[np.isfinite(self.entropy_shift)]
        return float(np.sqrt(np.sum(finite**2)))


@torch.no_grad()
def read_model(model: torch.nn.Module, batches: Sequence[Batch]) -> ModelReading:
    """Loss, accuracy, per-head normalised entropy and output log-probabilities over labelled ``batches``."""
    layout = model_layout(model)
    causal = layout.family in ("gpt2", "llama")
    sites = attention_sites(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums = torch.zeros(layout.num_layers, layout.num_heads, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    correct, total = 0, 0
    log_probs: list[torch.Tensor] = []
    losses: list[np.ndarray] = []
    for batch in batches:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(device)
        out = model(**inputs, output_attentions=True)
        logp = torch.log_softmax(out.logits.double(), dim=-1)
        losses.append(torch.nn.functional.nll_loss(logp, labels, reduction="none").cpu().numpy())
        correct += int((logp.argmax(-1) == labels).sum())
        total += int(labels.numel())
        log_probs.append(logp.cpu())
        for site, probs in zip(sites, out.attentions, strict=True):
            s, c = entropy_sums(probs, inputs.get("attention_mask"), normalised=True, causal=causal)
            heads = list(site.heads)
            sums[site.layer, heads] += s.cpu()
            counts[site.layer, heads] += c.cpu()
    model.train(was_training)
    if total == 0:
        raise ValueError("`batches` hold no examples: a validator needs labelled validation data")
    with np.errstate(invalid="ignore", divide="ignore"):
        entropy = np.where(counts.numpy() > 0, sums.numpy() / counts.numpy(), np.nan)
    per_example = np.concatenate(losses)
    return ModelReading(float(per_example.mean()), correct / total, entropy, tuple(log_probs), per_example)


def compare(reference: ModelReading, candidate: ModelReading) -> CandidateMeasurement:
    """The candidate's measurement against the global model's reading on the same batches."""
    kl_sum, n = 0.0, 0
    for p_log, q_log in zip(reference.log_probs, candidate.log_probs, strict=True):
        kl_sum += float((p_log.exp() * (p_log - q_log)).sum())
        n += p_log.shape[0]
    diff = candidate.losses - reference.losses
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else 0.0
    return CandidateMeasurement(
        loss_before=reference.loss,
        loss_after=candidate.loss,
        accuracy_before=reference.accuracy,
        accuracy_after=candidate.accuracy,
        entropy_shift=(candidate.entropy - reference.entropy).astype(np.float32),
        kl=kl_sum / max(1, n),
        loss_change_se=se,
    )


LOSS_GATE_SIGMAS = 2.0
"""How many standard errors of the paired loss change count as 'significantly worse' (one-sided, ~2.3%)."""


def loss_gate_fails(m: CandidateMeasurement, tolerance: float) -> bool:
    """True when the candidate makes validation loss worse beyond ``tolerance`` nats and beyond noise."""
    return m.loss_change > tolerance + LOSS_GATE_SIGMAS * m.loss_change_se


MIN_CALIBRATION_SAMPLES = 4
"""Fewest non-zero shifts from which an entropy gate calibrates itself; below that it does not judge."""
MIN_LOG_SCALE = float(np.log(2.0)) / 3.5
"""Floor of the log-shift scale: at z = 3.5 a shift must be at least twice the median to count as an outlier."""


def entropy_shift_z(shifts: Sequence[float]) -> np.ndarray:
    """Robust z-scores of entropy-shift norms, on a log scale, against the median and MAD of the non-zero ones.

    Shifts of honest updates differ by how much each node trained (rank, steps,
    data), which is a *factor*, so they are compared as ratios: z is the robust
    z-score of ``log(shift)``. A zero shift (an update that leaves attention alone,
    e.g. one that only adapts the classifier) gets ``-inf``: it cannot distort the
    heads. With fewer than :data:`MIN_CALIBRATION_SAMPLES` non-zero shifts there
    is no distribution to calibrate against, and every z is 0.
    """
    v = np.asarray(shifts, dtype=np.float64)
    z = np.where(v > 0, 0.0, -np.inf)
    positive = v > 0
    if positive.sum() < MIN_CALIBRATION_SAMPLES:
        return z
    logs = np.log(v[positive])
    median = float(np.median(logs))
    scale = max(1.4826 * float(np.median(np.abs(logs - median))), MIN_LOG_SCALE)
    z[positive] = (logs - median) / scale
    return z
