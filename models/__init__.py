"""The network itself, with no Flower in it.

Loading base models (`loading`, `presets`), addressable components and the
weights each head owns (`components`), LoRA through PEFT (`lora`), consent
masks on LoRA (`consent`), dense LoRA updates (`deltas`), plus head masks,
importance, pruning, gating, distillation and ONNX export.

The most used names are importable from here; they load lazily so that
`import models` (and the CLI) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "BaseModel": "models.loading",
    "Family": "models.loading",
    "Task": "models.loading",
    "family_of": "models.loading",
    "load_base_model": "models.loading",
    "PRESETS": "models.presets",
    "preset_names": "models.presets",
    "ModelLayout": "models.components",
    "ParamSlice": "models.components",
    "attention_modules": "models.components",
    "ffn_id": "models.components",
    "head_id": "models.components",
    "head_parameter_slices": "models.components",
    "list_components": "models.components",
    "model_layout": "models.components",
    "parse_component": "models.components",
    "DEFAULT_TARGETS": "models.lora",
    "adapter_arrays": "models.lora",
    "attach_lora": "models.lora",
    "load_adapter": "models.lora",
    "load_adapter_arrays": "models.lora",
    "lora_pairs": "models.lora",
    "lora_scaling": "models.lora",
    "save_adapter": "models.lora",
    "ConsentMask": "models.consent",
    "restrict_lora_to_heads": "models.consent",
    "touched_components": "models.consent",
    "touched_heads": "models.consent",
    "add_weight_deltas": "models.deltas",
    "lora_weight_deltas": "models.deltas",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
