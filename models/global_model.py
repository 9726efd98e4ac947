"""The global model as a torch module, and how well it classifies.

Both sides need these: the coordinator materialises the exact global model
(dense ΔW merged into the base weights, the global head loaded) to evaluate it
centrally, and a node materialises its view of it before training or validating.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from sentinel.models.deltas import add_weight_deltas
from sentinel.models.loading import LoadedModel


def materialise(base: LoadedModel, deltas: Mapping[str, np.ndarray], head: Mapping[str, np.ndarray]) -> torch.nn.Module:
    """A copy of the base model with dense ΔW per module added and head parameters loaded.

    The base model itself is never changed, so one loaded base serves every round.
    """
    model = copy.deepcopy(base.model)
    add_weight_deltas(model, {m: np.asarray(d, dtype=np.float32) for m, d in deltas.items()})
    if head:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in head.items():
                if name not in params:
                    raise KeyError(f"global head parameter `{name}` does not exist in model {base.name}")
                params[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    return model


def materialise_factors(
    base: LoadedModel, factors: Mapping[str, tuple[np.ndarray, np.ndarray]], head: Mapping[str, np.ndarray]
) -> torch.nn.Module:
    """Like :func:`materialise`, from per-module factors (A, B) with ΔW = B @ A (scaling 1)."""
    deltas = {m: b.astype(np.float32) @ a.astype(np.float32) for m, (a, b) in factors.items()}
    return materialise(base, deltas, head)


class ClassifierTally:
    """Running accuracy and cross-entropy of a classifier's logits against their labels.

    The one counting rule behind :func:`evaluate_classifier`; a node's importance
    probe adds its own forward passes' logits to it (``models.importance.head_importance``),
    so the examples it probes are not run through the model a second time.
    """

    def __init__(self) -> None:
        self.correct, self.loss_sum, self.count = 0, 0.0, 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count one batch: ``logits`` (batch × labels) against ``labels`` (batch)."""
        logits, labels = logits.detach(), labels.to(logits.device)
        self.loss_sum += float(torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
        self.correct += int((logits.argmax(-1) == labels).sum())
        self.count += int(labels.numel())

    def result(self) -> tuple[float, float]:
        """(accuracy, mean cross-entropy); ``(nan, nan)`` when nothing was counted."""
        if self.count == 0:
            return float("nan"), float("nan")
        return self.correct / self.count, self.loss_sum / self.count


def evaluate_classifier(
    model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], tally: ClassifierTally | None = None
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of a classifier over labelled ``batches`` (on the model's device).

    Each batch holds the model's inputs and ``labels``. ``(nan, nan)`` when there
    are no examples. The model's train/eval mode is restored afterwards. With
    ``tally`` the batches are added to it (and the result is over all it holds).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tally = tally if tally is not None else ClassifierTally()
    with torch.no_grad():
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            tally.add(model(**batch).logits, batch["labels"])
    model.train(was_training)
    return tally.result()
