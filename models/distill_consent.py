"""Consent in distillation: which of a student's weights a central node may change (the ``distill`` operation).

A component whose consent contract does not let a central node ``distill`` it
keeps the teacher's weights in the student: the node trains with those
parameters frozen and leaves them out of its reply, and the coordinator
refuses a reply that carries any of them. The map from a student's parameter
to the components it belongs to:

- an attention projection of layer *i* (query, key, value, output; GPT-2's
  fused ``c_attn``/``c_proj``; their biases) belongs to every head of layer
  *i* it still has: a projection is shared by its heads, so it is frozen when
  any of them may not be distilled (the conservative reading);
- every other weight inside layer *i* (FFN, layer norms) belongs to
  ``layer.{i}.ffn``;
- embeddings belong to ``embeddings`` (the student's input embeddings are
  always frozen: they are the teacher's);
- everything outside the layers (pooler, classifier, final norm) belongs to
  ``classifier``.

Works on parameter names (``state_dict`` keys), so the node and the coordinator
compute the same set from the same student.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from sentinel.models.components import Family, ModelLayout, layer_of_path, projection_role
from sentinel.protos.vocabulary import CLASSIFIER, EMBEDDINGS, ffn_id, head_id

__all__ = ["components_of_parameter", "frozen_parameter_names", "kept_heads"]


def _module_path(name: str) -> str:
    """The module a parameter belongs to (``...query.weight`` → ``...query``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def components_of_parameter(family: Family, name: str, kept_heads: Mapping[int, Sequence[int]]) -> list[str]:
    """The component ids a student parameter ``name`` belongs to (module docstring); ``kept_heads``: layer → heads it has."""
    path = _module_path(name)
    projection = projection_role(family, path)
    if projection is not None:
        layer = projection[0]
        return [head_id(layer, h) for h in kept_heads.get(layer, ())]
    layer = layer_of_path(family, path)
    if layer is not None:
        return [ffn_id(layer)]
    if "embed" in path or path.endswith(("wte", "wpe")) or ".wte" in name or ".wpe" in name:
        return [EMBEDDINGS]
    return [CLASSIFIER]


def frozen_parameter_names(
    family: Family, names: Iterable[str], forbidden: Iterable[str], kept_heads: Mapping[int, Sequence[int]]
) -> list[str]:
    """The student parameters that must keep the teacher's weights: those of any component in ``forbidden``."""
    denied = set(forbidden)
    if not denied:
        return []
    return sorted(n for n in names if denied.intersection(components_of_parameter(family, n, kept_heads)))


def kept_heads(head_mask: np.ndarray | None, layout: ModelLayout) -> dict[int, list[int]]:
    """Layer → the heads (teacher numbering) a student of ``head_mask`` keeps; all of them without a mask."""
    if head_mask is None:
        return {layer: list(range(layout.num_heads)) for layer in range(layout.num_layers)}
    mask = np.asarray(head_mask)
    return {layer: [int(h) for h in np.flatnonzero(mask[layer] > 0)] for layer in range(mask.shape[0])}
