"""A classifier's logits over batches, as numpy: the input of `models.calibration.predictive_metrics`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

__all__ = ["classifier_logits"]


@torch.no_grad()
def classifier_logits(model: torch.nn.Module, batches: Iterable[Mapping[str, torch.Tensor]]) -> tuple[np.ndarray, np.ndarray]:
    """(logits ``[n, classes]`` float32, labels ``[n]``) of ``model`` over labelled ``batches``, in order.

    Runs in eval mode on the model's device and restores its mode. Why: every
    evaluation metric (accuracy, loss, ECE, KL between two models) is a
    function of these two arrays, so a model runs once per evaluation.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    try:
        for batch in batches:
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            logits.append(model(**inputs).logits.detach().to("cpu", torch.float32).numpy())
            labels.append(batch["labels"].detach().cpu().numpy().astype(np.int64))
    finally:
        model.train(was_training)
    if not logits:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.concatenate(logits), np.concatenate(labels)
