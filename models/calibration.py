"""Calibration and divergence of a classifier's predictive distribution, as pure numpy.

Central evaluation (coordinator or central node) and edge evaluation
(onnxruntime, no torch) report the same numbers, so the math lives here once
and imports neither torch nor transformers:

- `expected_calibration_error`: the standard ECE (Guo et al. 2017, "On
  Calibration of Modern Neural Networks"): confidences (top probabilities) fall
  into ``bins`` equal-width bins ``(m-1)/M < conf ≤ m/M`` (a confidence of 0
  goes in the first bin), and ``ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|``.
- `predictive_metrics`: accuracy, cross-entropy, per-domain accuracy, ECE and
  (optionally) KL from a reference model, all from one matrix of logits.
- `mean_kl`: mean ``KL(P ‖ Q)`` per example between two predictive
  distributions given as logits (the "KL-divergence monitoring" of the global
  model against the base model).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ECE_BINS", "PredictiveMetrics", "expected_calibration_error", "log_softmax", "mean_kl", "predictive_metrics"]

ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (the usual choice since Guo et al.)."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float64, stable for large logits."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """``Σ_m (|B_m| / n) · |accuracy(B_m) − confidence(B_m)|`` over `bins` equal-width bins of the top probability.

    `probabilities` is ``[n, classes]`` (rows sum to 1), `labels` ``[n]`` class
    ids. Bin ``m`` (1-based) holds confidences in ``((m-1)/M, m/M]``; empty bins
    add nothing. NaN when there are no examples. Why: a model that says 90 %
    should be right 90 % of the time; ECE is how far it is from that, in
    accuracy points weighted by how many predictions sit at each confidence.
    """
    if bins < 1:
        raise ValueError(f"`bins` must be at least 1, got {bins}")
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"`probabilities` must be [n, classes] and `labels` [n], got {probs.shape} and {labels.shape}")
    if len(labels) == 0:
        return math.nan
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    # ceil(conf·M) − 1 puts conf in ((m-1)/M, m/M] as bin m-1 (0-based); conf = 0 joins bin 0.
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += chosen.mean() * abs(correct[chosen].mean() - confidence[chosen].mean())
    return float(total)


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean over rows of ``KL(softmax(p) ‖ softmax(q))`` in nats; NaN for no rows.

    Why: how far one model's predictions (P, e.g. the global model) have moved
    from another's (Q, e.g. the base model, or a student from its teacher) on
    the same inputs, without needing labels.
    """
    p = np.asarray(p_logits, dtype=np.float64)
    q = np.asarray(q_logits, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"`p_logits` and `q_logits` must both be [n, classes], got {p.shape} and {q.shape}")
    if p.shape[0] == 0:
        return math.nan
    log_p, log_q = log_softmax(p), log_softmax(q)
    return float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())


@dataclass(frozen=True)
class PredictiveMetrics:
    """How a classifier does on labelled examples, from its logits.

    `loss` is mean cross-entropy (nats); `per_domain` maps each domain to its
    accuracy; `kl_from_reference` is mean ``KL(model ‖ reference)`` per example
    (None without reference logits). Accuracy, loss and ECE are NaN for no examples.
    """

    num_examples: int
    accuracy: float
    loss: float
    ece: float
    per_domain: dict[str, float] = field(default_factory=dict)
    kl_from_reference: float | None = None


def predictive_metrics(
    logits: np.ndarray,
    labels: np.ndarray,
    domains: Sequence[str] | None = None,
    reference_logits: np.ndarray | None = None,
    bins: int = ECE_BINS,
) -> PredictiveMetrics:
    """Accuracy, cross-entropy, ECE, per-domain accuracy and KL from a reference, from ``[n, classes]`` logits.

    Why one function: the coordinator, a central node and an edge node (from
    onnxruntime logits) then report the same quantities computed the same way.
    """
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"`logits` must be [n, classes] and `labels` [n], got {x.shape} and {y.shape}")
    if domains is not None and len(domains) != len(y):
        raise ValueError(f"`domains` has {len(domains)} entries for {len(y)} examples")
    n = len(y)
    if n and (int(y.min()) < 0 or int(y.max()) >= x.shape[1]):
        raise ValueError(f"`labels` must be in [0, {x.shape[1] - 1}]")
    kl = mean_kl(x, reference_logits) if reference_logits is not None and n else None
    if n == 0:
        return PredictiveMetrics(0, math.nan, math.nan, math.nan, {}, kl)
    log_p = log_softmax(x)
    correct = log_p.argmax(axis=1) == y
    by_domain: dict[str, list[bool]] = defaultdict(list)
    for domain, hit in zip(domains if domains is not None else ["default"] * n, correct, strict=True):
        by_domain[str(domain)].append(bool(hit))
    return PredictiveMetrics(
        num_examples=n,
        accuracy=float(correct.mean()),
        loss=float(-log_p[np.arange(n), y].mean()),
        ece=expected_calibration_error(np.exp(log_p), y, bins),
        per_domain={d: float(np.mean(hits)) for d, hits in sorted(by_domain.items())},
        kl_from_reference=kl,
    )
