"""Component ids: the addressable parts of a model that consent contracts speak about.

An id is one of ``layer.{i}.head.{j}`` (one attention head), ``layer.{i}.ffn``,
``embeddings``, ``classifier`` or ``lm_head``; layer and head indices are
zero-based decimal integers without leading zeros.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ComponentKind = Literal["head", "ffn", "embeddings", "classifier", "lm_head"]

COMPONENT_KINDS: tuple[ComponentKind, ...] = ("head", "ffn", "embeddings", "classifier", "lm_head")

_INDEX = r"(0|[1-9][0-9]*)"
_COMPONENT_RE = re.compile(
    rf"^(?:layer\.(?P<layer>{_INDEX})\.(?:head\.(?P<head>{_INDEX})|(?P<ffn>ffn))"
    r"|(?P<named>embeddings|classifier|lm_head))$"
)


@dataclass(frozen=True, slots=True)
class ComponentRef:
    """A parsed component id: its kind and, for heads and FFNs, its layer (and head) index."""

    component: str
    kind: ComponentKind
    layer: int | None = None
    head: int | None = None


def parse_component(component: str) -> ComponentRef:
    """Parse a component id; ``ValueError`` names the id and the accepted forms."""
    match = _COMPONENT_RE.match(component) if isinstance(component, str) else None
    if match is None:
        raise ValueError(
            f"`component` {component!r} is not a component id; expected `layer.<i>.head.<j>`, "
            "`layer.<i>.ffn`, `embeddings`, `classifier` or `lm_head`"
        )
    if match["named"]:
        return ComponentRef(component, match["named"])  # type: ignore[arg-type]
    layer = int(match["layer"])
    if match["ffn"]:
        return ComponentRef(component, "ffn", layer)
    return ComponentRef(component, "head", layer, int(match["head"]))


def is_component_id(component: str) -> bool:
    """True iff ``component`` is a well-formed component id."""
    return isinstance(component, str) and _COMPONENT_RE.match(component) is not None


def head_id(layer: int, head: int) -> str:
    """The component id of attention head ``head`` in layer ``layer``."""
    return f"layer.{layer}.head.{head}"


def standard_components(
    num_layers: int,
    num_heads: int,
    *,
    ffn: bool = True,
    embeddings: bool = True,
    output: Literal["classifier", "lm_head"] | None = "classifier",
) -> list[str]:
    """All component ids of a transformer with ``num_layers`` layers of ``num_heads`` heads.

    Used where no model is at hand (CLI, tests); the models package lists the
    components of a loaded model itself.
    """
    if num_layers < 0 or num_heads < 0:
        raise ValueError(f"`num_layers` and `num_heads` must be >= 0, got {num_layers} and {num_heads}")
    ids: list[str] = ["embeddings"] if embeddings else []
    for layer in range(num_layers):
        ids.extend(head_id(layer, head) for head in range(num_heads))
        if ffn:
            ids.append(f"layer.{layer}.ffn")
    if output is not None:
        ids.append(output)
    return ids
