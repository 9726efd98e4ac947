"""The coordinator's own model work: the initial global state, central evaluation, PEFT export.

The coordinator loads the base model once; central evaluation materialises the
exact global model (dense ΔW merged) and scores it on the held-out test set the
coordinator owns, which no node trains on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sentinel.client.data import Example
from sentinel.client.data.batching import iter_batches
from sentinel.models.global_model import evaluate_classifier, materialise
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
from sentinel.server.aggregation import factorise_all
from sentinel.server.state import GlobalState


def initial_state(base: LoadedModel) -> GlobalState:
    """A zero global ΔW for every module LoRA adapts, and the base model's own head."""
    probe = attach_lora(copy.deepcopy(base.model), rank=1)
    pairs, head = split_adapter_arrays(adapter_arrays(probe))
    deltas = {m: np.zeros((b.shape[0], a.shape[1]), dtype=np.float32) for m, (a, b) in pairs.items()}
    return GlobalState(deltas=deltas, head={k: v.astype(np.float32) for k, v in head.items()})


class CentralEvaluator:
    """Scores global states on the coordinator's held-out test set."""

    def __init__(self, base: LoadedModel, test: Sequence[Example], max_length: int, batch_size: int = 64) -> None:
        if not test:
            raise ValueError("the coordinator's held-out test set is empty")
        self.base = base
        self.test = list(test)
        self.max_length = max_length
        self.batch_size = batch_size

    def __call__(self, state: GlobalState) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of the exact global model."""
        model = materialise(self.base, state.deltas, state.head)
        return evaluate_classifier(model, iter_batches(self.base.tokenizer, self.test, self.batch_size, self.max_length))


def export_peft_adapter(base: LoadedModel, state: GlobalState, directory: str | Path, rank: int) -> tuple[Path, float]:
    """Write the global state as a PEFT LoRA adapter of ``rank`` (loads with ``PeftModel.from_pretrained``).

    The dense ΔW is factorised by truncated SVD at ``rank`` with alpha = rank
    (scaling 1); returns the path and the relative norm the truncation dropped.
    The head travels in the adapter as PEFT ``modules_to_save``.
    """
    peft_model = attach_lora(copy.deepcopy(base.model), rank=rank, alpha=float(rank))
    arrays = adapter_arrays(peft_model)
    parts, residual = factorise_all(state.deltas, rank)
    for module, pair in lora_pairs(arrays).items():
        arrays[pair.a_key] = parts[module].a
        arrays[pair.b_key] = parts[module].b
    for key in head_module_keys(arrays):
        arrays[key] = state.head[module_path(key)]
    load_adapter_arrays(peft_model, arrays)
    return save_adapter(peft_model, directory), residual
