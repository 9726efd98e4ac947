"""What an edge node does with the edge bundle: predict texts and evaluate on labelled examples.

Edge nodes answer inference and evaluation from the distilled student through
onnxruntime (`sentinel.models.edge_bundle.BundleRunner`); torch stays for
their local LoRA training only. Neither this module nor the runtime imports
torch, so a node that only serves the bundle can be installed without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sentinel.client.data.examples import Example
from sentinel.models.calibration import ECE_BINS, expected_calibration_error, predictive_metrics
from sentinel.models.edge_bundle import BundleRunner, Prediction

__all__ = ["EdgeEvaluation", "evaluate_bundle", "expected_calibration_error", "predict_texts"]


@dataclass(frozen=True)
class EdgeEvaluation:
    """How the bundle does on labelled examples.

    `accuracy` and `loss` (mean cross-entropy, nats) over all examples;
    `per_domain` maps each domain to its accuracy; `ece` is the expected
    calibration error over `bins` equal-width confidence bins
    (`sentinel.models.calibration`, 15 by default). NaN when there
    are no examples.
    """

    num_examples: int
    accuracy: float
    loss: float
    ece: float
    per_domain: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat metrics for a Flower MetricRecord (per-domain accuracy as ``accuracy/<domain>``)."""
        flat = {"num_examples": float(self.num_examples), "accuracy": self.accuracy, "loss": self.loss, "ece": self.ece}
        flat.update({f"accuracy/{d}": a for d, a in self.per_domain.items()})
        return flat


def evaluate_bundle(runner: BundleRunner, examples: Sequence[Example], batch_size: int = 32, bins: int = ECE_BINS) -> EdgeEvaluation:
    """Accuracy, cross-entropy, calibration and per-domain accuracy of the bundle on `examples`."""
    if not examples:
        return EdgeEvaluation(0, math.nan, math.nan, math.nan, {})
    labels = np.array([e.label for e in examples], dtype=np.int64)
    num_labels = len(runner.labels)
    if int(labels.max()) >= num_labels:
        raise ValueError(f"`examples` have label {int(labels.max())}, the bundle knows {num_labels} labels")
    logits = runner.logits([e.text for e in examples], batch_size=batch_size)
    m = predictive_metrics(logits, labels, [e.domain for e in examples], bins=bins)  # the coordinator's math
    return EdgeEvaluation(num_examples=m.num_examples, accuracy=m.accuracy, loss=m.loss, ece=m.ece, per_domain=m.per_domain)


def predict_texts(runner: BundleRunner, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
    """The bundle's label and probability for each text."""
    return runner.predict(texts, batch_size=batch_size)
