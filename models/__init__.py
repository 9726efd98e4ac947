"""The network itself, with no Flower in it.

Loading base models (`loading`, `presets`), addressable components and the
weights each head owns (`components`), LoRA through PEFT (`lora`), consent
masks on LoRA (`consent`), dense LoRA updates (`deltas`), plus head masks,
importance, pruning, gating, distillation and ONNX export; the pruned student
(`student`, `ffn`, `head_selection`), its distillation (`distill_train`),
regrowth helpers (`regrowth`) and the edge bundle (`edge_export` builds it with
torch, `edge_bundle` runs it without).

The most used names are importable from here; they load lazily so that
`import models` (and the CLI) stays fast. Component ids themselves (`head_id`,
`ffn_id`, `parse_component`) live in `sentinel.protos.vocabulary`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "LoadedModel": "sentinel.models.loading",
    "Family": "sentinel.models.loading",
    "Task": "sentinel.models.loading",
    "family_of": "sentinel.models.loading",
    "load_base_model": "sentinel.models.loading",
    "PRESETS": "sentinel.models.presets",
    "preset_names": "sentinel.models.presets",
    "ModelLayout": "sentinel.models.components",
    "ParamSlice": "sentinel.models.components",
    "attention_modules": "sentinel.models.components",
    "head_parameter_slices": "sentinel.models.components",
    "list_components": "sentinel.models.components",
    "check_component": "sentinel.models.components",
    "model_layout": "sentinel.models.components",
    "DEFAULT_TARGETS": "sentinel.models.lora",
    "adapter_arrays": "sentinel.models.lora",
    "attach_lora": "sentinel.models.lora",
    "load_adapter": "sentinel.models.lora",
    "load_adapter_arrays": "sentinel.models.lora",
    "lora_pairs": "sentinel.models.lora",
    "lora_scaling": "sentinel.models.lora",
    "save_adapter": "sentinel.models.lora",
    "ConsentMask": "sentinel.models.consent",
    "restrict_lora_to_heads": "sentinel.models.consent",
    "touched_components": "sentinel.models.consent",
    "touched_heads": "sentinel.models.consent",
    "add_weight_deltas": "sentinel.models.deltas",
    "lora_weight_deltas": "sentinel.models.deltas",
    "Student": "sentinel.models.student",
    "StudentSpec": "sentinel.models.student",
    "build_student": "sentinel.models.student",
    "load_student": "sentinel.models.student",
    "DistillResult": "sentinel.models.distill_train",
    "distill": "sentinel.models.distill_train",
    "HeadLRBoost": "sentinel.models.regrowth",
    "BundleRunner": "sentinel.models.edge_bundle",
    "load_bundle": "sentinel.models.edge_bundle",
    "export_bundle": "sentinel.models.edge_export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
