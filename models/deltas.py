"""LoRA factors to dense weight updates, and applying those updates to a base model.

ΔW = scaling · B @ A in ``nn.Linear`` orientation (out × in). These are the
exact per-module updates the coordinator averages (the mean of products, not
the product of means), and what a node merges into its base weights before
attaching a fresh adapter.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from sentinel.models.components import base_layer_of, unwrap_model
from sentinel.models.exceptions import AdapterError, UnsupportedModelError
from sentinel.models.lora import lora_pairs


def lora_weight_deltas(arrays: Mapping[str, np.ndarray], scaling: float) -> dict[str, np.ndarray]:
    """Per base-module path, the dense update ``scaling * B @ A`` (out × in, float32)."""
    deltas: dict[str, np.ndarray] = {}
    for path, pair in lora_pairs(arrays).items():
        a = np.asarray(arrays[pair.a_key], dtype=np.float32)
        b = np.asarray(arrays[pair.b_key], dtype=np.float32)
        if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise AdapterError(
                f"adapter module {path!r}: lora_B {b.shape} and lora_A {a.shape} do not multiply"
            )
        deltas[path] = (np.float32(scaling) * (b @ a)).astype(np.float32)
    return deltas


def add_weight_deltas(model: torch.nn.Module, deltas: Mapping[str, np.ndarray]) -> None:
    """Add dense updates (out × in) to the named base modules' weights, in place.

    Paths are relative to the base model (as `lora_weight_deltas` gives them);
    a PeftModel is accepted and its base weights are changed. GPT-2 ``Conv1D``
    weights are stored (in, out), so the update is transposed for them. Every
    path and shape is checked before any weight changes.
    """
    updates = oriented_weight_deltas(model, deltas)
    with torch.no_grad():
        for weight, oriented in updates:
            weight.add_(oriented)


def oriented_weight_deltas(
    model: torch.nn.Module, deltas: Mapping[str, np.ndarray]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(base weight, update in that weight's orientation and dtype) per path of ``deltas``, every one checked first.

    What :func:`add_weight_deltas` adds; for callers that write ``weight + update``
    elsewhere (a validator swapping candidates into one model copy).
    """
    modules = dict(unwrap_model(model).named_modules())
    updates: list[tuple[torch.Tensor, torch.Tensor]] = []
    for path, delta in deltas.items():
        if path not in modules:
            raise AdapterError(f"weight delta for unknown module {path!r}")
        try:
            base, _ = base_layer_of(modules[path])
        except UnsupportedModelError as e:
            raise AdapterError(f"weight delta for module {path!r}: {e}") from e
        update = torch.from_numpy(np.asarray(delta, dtype=np.float32))
        weight = base.weight
        oriented = update if isinstance(base, torch.nn.Linear) else update.T
        if tuple(oriented.shape) != tuple(weight.shape):
            expected = tuple(weight.shape) if isinstance(base, torch.nn.Linear) else tuple(weight.T.shape)
            raise AdapterError(f"weight delta for {path!r}: shape {tuple(update.shape)}, expected {expected}")
        updates.append((weight, oriented.to(weight.dtype)))
    return updates
