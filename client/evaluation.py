"""A node's evaluation reply: the global model's metrics on the node's own held-out data.

Central nodes answer central evaluation this way (they have no access to the
coordinator's test set in deployment): accuracy, loss, per-domain accuracy,
expected calibration error and KL(global ‖ base), computed exactly as the
coordinator computes them (``models.calibration.predictive_metrics``). An edge
node that holds an edge bundle answers from onnxruntime instead
(``client.edge.evaluate_bundle``). No Flower here: ``client.app`` packs the values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from sentinel.client.data import Example
from sentinel.client.data.batching import classifier_logits_by_length
from sentinel.client.edge import EdgeEvaluation
from sentinel.client.training import GlobalView, materialise_global
from sentinel.models.calibration import PredictiveMetrics, predictive_metrics
from sentinel.models.head_mask import apply_head_mask
from sentinel.models.loading import LoadedModel
from sentinel.protos import messages as P

__all__ = ["edge_metric_values", "global_model_metrics", "metric_values"]


def global_model_metrics(
    base: LoadedModel, view: GlobalView, examples: Sequence[Example], batch_size: int, max_length: int, device: torch.device
) -> PredictiveMetrics:
    """The global model's metrics on ``examples``, with KL(global ‖ base) against the base model on the same inputs.

    The view's head mask is honoured (masked heads gated to zero), as the
    coordinator's ``server.plasticity.MaskedEvaluator`` scores a pruned state.
    """
    model = materialise_global(base, view).to(device)
    mask = view.head_mask
    if mask is not None and not bool(np.all(np.asarray(mask) == 1)):
        with apply_head_mask(model, mask):  # pruned heads contribute nothing, as nodes train and serve the model
            logits, labels = classifier_logits_by_length(model, base.tokenizer, examples, batch_size, max_length)
    else:
        logits, labels = classifier_logits_by_length(model, base.tokenizer, examples, batch_size, max_length)
    del model
    reference = base.model
    moved = next(reference.parameters()).device != device
    if moved:  # the cached base stays where it is; a copy goes to the device
        import copy

        reference = copy.deepcopy(reference).to(device)
    base_logits, _ = classifier_logits_by_length(reference, base.tokenizer, examples, batch_size, max_length)
    return predictive_metrics(logits, labels, [e.domain for e in examples], base_logits if len(examples) else None)


def _domain_counts(examples: Sequence[Example]) -> dict[str, int]:
    return dict(sorted(Counter(e.domain for e in examples).items()))


def metric_values(metrics: PredictiveMetrics, examples: Sequence[Example]) -> dict[str, int | float]:
    """The evaluate reply's MetricRecord values (``protos.messages`` keys) for ``metrics`` on ``examples``."""
    values: dict[str, int | float] = {
        P.M_EXAMPLES: metrics.num_examples,
        P.M_ACCURACY: metrics.accuracy,
        P.M_LOSS: metrics.loss,
        P.M_ECE: metrics.ece,
    }
    if metrics.kl_from_reference is not None:
        values[P.M_KL_BASE] = metrics.kl_from_reference
    values.update({P.M_DOMAIN_ACCURACY + d: a for d, a in metrics.per_domain.items()})
    values.update({P.M_DOMAIN_EXAMPLES + d: n for d, n in _domain_counts(examples).items()})
    return values


def edge_metric_values(evaluation: EdgeEvaluation, examples: Sequence[Example]) -> dict[str, int | float]:
    """The same reply values from the edge bundle's evaluation (no KL: the bundle has no base model)."""
    as_metrics = PredictiveMetrics(
        evaluation.num_examples, evaluation.accuracy, evaluation.loss, evaluation.ece, dict(evaluation.per_domain), None
    )
    return metric_values(as_metrics, examples)
