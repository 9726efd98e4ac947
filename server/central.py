"""The coordinator's own model work: the initial global state, central evaluation, PEFT export.

The coordinator loads the base model once; central evaluation materialises the
exact global model (dense ΔW merged) and scores it on the held-out test set the
coordinator owns, which no node trains on: accuracy, loss, per-domain accuracy,
expected calibration error and KL(global ‖ base) (`CentralMetrics`). When the run
has central nodes, the same metrics can come from them instead
(``server.central_nodes``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pydantic
import torch
from sentinel.client.data import Example
from sentinel.client.data.batching import classifier_logits_by_length
from sentinel.models.calibration import PredictiveMetrics, predictive_metrics
from sentinel.models.global_model import materialise
from sentinel.models.loading import LoadedModel
from sentinel.models.lora import (
    adapter_arrays,
    attach_lora,
    head_module_keys,
    load_adapter_arrays,
    lora_pairs,
    module_path,
    save_adapter,
    split_adapter_arrays,
)
from sentinel.server.aggregation import exact_factorise
from sentinel.server.outcome import Evaluation
from sentinel.server.state import GlobalState


def initial_state(base: LoadedModel) -> GlobalState:
    """A zero global ΔW for every module LoRA adapts, and the base model's own head."""
    probe = attach_lora(copy.deepcopy(base.model), rank=1)
    pairs, head = split_adapter_arrays(adapter_arrays(probe))
    deltas = {m: np.zeros((b.shape[0], a.shape[1]), dtype=np.float32) for m, (a, b) in pairs.items()}
    return GlobalState(deltas=deltas, head={k: v.astype(np.float32) for k, v in head.items()})


Share = Annotated[float, pydantic.Field(ge=0.0, le=1.0, allow_inf_nan=False)]
NonNegative = Annotated[float, pydantic.Field(ge=0.0, allow_inf_nan=False)]


class CentralMetrics(pydantic.BaseModel):
    """Central evaluation of one global state: every number the round's row and the report carry.

    A pydantic model because it also parses what central nodes send back
    (``server.central_nodes``): every value is range-checked and finite.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    num_examples: pydantic.PositiveInt
    accuracy: Share
    loss: NonNegative
    """Mean cross-entropy in nats."""
    ece: Share
    """Expected calibration error, 15 equal-width bins (``models.calibration``)."""
    per_domain: dict[str, Share] = pydantic.Field(default_factory=dict)
    """Domain → accuracy."""
    kl_from_base: NonNegative | None = None
    """Mean KL(global ‖ base model) per example; None when not measured."""

    @classmethod
    def of(cls, metrics: PredictiveMetrics) -> CentralMetrics:
        """From ``models.calibration.predictive_metrics`` (raises on NaN: no examples)."""
        return cls(
            num_examples=metrics.num_examples,
            accuracy=metrics.accuracy,
            loss=metrics.loss,
            ece=metrics.ece,
            per_domain=metrics.per_domain,
            kl_from_base=metrics.kl_from_reference,
        )

    def evaluation(self, source: str = "coordinator") -> Evaluation:
        """The round loop's :class:`Evaluation` of these metrics."""
        return Evaluation(self.accuracy, self.loss, self.ece, self.kl_from_base, dict(self.per_domain), source)


class CentralEvaluator:
    """Scores global states on the coordinator's held-out test set.

    ``evaluator(state)`` → (accuracy, loss), the contract of ``server.rounds``;
    :meth:`metrics` adds per-domain accuracy, expected calibration error and
    KL(global ‖ base); :meth:`evaluation` is the round loop's form of them.
    The base model's logits on the test set are computed once (neither changes).
    """

    def __init__(self, base: LoadedModel, test: Sequence[Example], max_length: int, batch_size: int = 16) -> None:
        if not test:
            raise ValueError("the coordinator's held-out test set is empty")
        self.base = base
        self.test = list(test)
        self.max_length = max_length
        self.batch_size = batch_size
        self._base_logits: np.ndarray | None = None

    def logits(self, model: torch.nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """(logits, labels) of ``model`` on the test set, in the test set's order (length-sorted batches)."""
        return classifier_logits_by_length(model, self.base.tokenizer, self.test, self.batch_size, self.max_length)

    def base_logits(self) -> np.ndarray:
        """The base model's logits on the test set (its own head, no ΔW), computed once."""
        if self._base_logits is None:
            self._base_logits = self.logits(self.base.model)[0]
        return self._base_logits

    def metrics(self, state: GlobalState) -> CentralMetrics:
        """Accuracy, loss, per-domain accuracy, ECE and KL(global ‖ base) of the exact global model."""
        logits, labels = self.logits(materialise(self.base, state.deltas, state.head))
        domains = [e.domain for e in self.test]
        return CentralMetrics.of(predictive_metrics(logits, labels, domains, self.base_logits()))

    def evaluation(self, state: GlobalState) -> Evaluation:
        """:meth:`metrics` as the round loop's :class:`Evaluation`."""
        return self.metrics(state).evaluation("coordinator")

    def __call__(self, state: GlobalState) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of the exact global model."""
        m = self.metrics(state)
        return m.accuracy, m.loss


EXPORT_TOLERANCE = 1e-5
"""Relative residual each module's ΔW may lose in the exported adapter (well inside the 1e-4 contract)."""


@dataclass(frozen=True)
class ExportedAdapter:
    """What :func:`export_peft_adapter` wrote: where, the rank of each module, and how exact it is."""

    path: Path
    ranks: dict[str, int]
    """Module path → LoRA rank in the adapter (``rank_pattern``)."""
    residual: float
    """‖ΔW − adapter‖_F / ‖ΔW‖_F over all modules (from the discarded singular values)."""
    num_parameters: int
    """LoRA factor entries plus head parameters: the adapter's size in numbers."""


def export_peft_adapter(
    base: LoadedModel,
    state: GlobalState,
    directory: str | Path,
    rank: int | None = None,
    *,
    tolerance: float = EXPORT_TOLERANCE,
    base_model_name: str | None = None,
) -> ExportedAdapter:
    """Write the global state as a PEFT LoRA adapter that reproduces it (loads with ``PeftModel.from_pretrained``).

    Each module gets the smallest rank at which the truncated SVD of its ΔW
    leaves at most ``tolerance`` of its norm (Eckart–Young), through PEFT's
    ``rank_pattern``; alpha equals the rank (scaling 1). So the adapter a user
    loads, and every ONNX export built from it, is the model the coordinator
    evaluated, at the size the global update actually needs (full rank only
    where ΔW is full rank). ``rank``, when given, is a floor: no module gets
    fewer components (capped at min(out, in); extra components are zero).
    The head travels as PEFT ``modules_to_save``; the adapter records its base
    model as ``base_model_name`` (default: the name the base was loaded by, a
    preset name or Hugging Face id, never a local cache path).
    """
    floor = rank or 0
    parts = {
        m: exact_factorise(d, tolerance, min_rank=min(max(floor, 1), *d.shape)) for m, d in state.deltas.items()
    }
    ranks = {m: int(p.a.shape[0]) for m, p in parts.items()}
    top = max(ranks.values(), default=1)
    peft_model = attach_lora(copy.deepcopy(base.model), rank=top, alpha=float(top), rank_pattern=ranks, alpha_pattern=ranks)
    arrays = adapter_arrays(peft_model)
    for module, pair in lora_pairs(arrays).items():
        arrays[pair.a_key] = parts[module].a
        arrays[pair.b_key] = parts[module].b
    for key in head_module_keys(arrays):
        arrays[key] = state.head[module_path(key)]
    load_adapter_arrays(peft_model, arrays)
    path = save_adapter(peft_model, directory, base_model_name=base_model_name or base.name)
    dropped = sum(p.dropped_sq for p in parts.values())
    total = sum(p.total_sq for p in parts.values())
    return ExportedAdapter(
        path=path,
        ranks=ranks,
        residual=float(np.sqrt(dropped / total)) if total > 0 else 0.0,
        num_parameters=int(sum(v.size for v in arrays.values())),
    )
