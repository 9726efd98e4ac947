"""The federation's vocabulary: one home for the words every package speaks.

Roles of nodes, component ids and their grammar, data partition methods, the
coordinator's actor name and the kinds of ledger entries. No torch and no
Flower here: ``models``, ``governance``, ``ledger``, ``client`` and ``server``
all import these names from this module, so a word is defined once.

A component id is one of ``layer.{i}.head.{j}`` (one attention head),
``layer.{i}.ffn``, ``embeddings``, ``classifier`` or ``lm_head``; layer and
head indices are zero-based decimal integers without leading zeros.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Literal

# ---------------------------------------------------------------- node roles

Role = Literal["edge", "gpu", "central"]
"""What a node is: an edge device, a GPU server, or a central (distilling, evaluating) GPU node."""
ROLES: Final[tuple[Role, ...]] = ("edge", "gpu", "central")

# ---------------------------------------------------------------- data partitions

PartitionMethod = Literal["iid", "by-domain", "dirichlet"]
"""How a dataset's examples are split among the nodes of a simulated federation."""
PARTITION_METHODS: Final[tuple[PartitionMethod, ...]] = ("iid", "by-domain", "dirichlet")

# ---------------------------------------------------------------- actors

COORDINATOR: Final = "coordinator"
"""The actor name of everything the coordinator does itself (ledger entries, governance acts)."""

# ---------------------------------------------------------------- node identity

NODE_ID_PREFIX: Final = "node-"


def node_id_of_key(public_key: str) -> str:
    """A node's id in the ledger, governance, tokens and reports: derived from its registered public key.

    A node *is* its key: Flower's node id is a transport detail that changes
    between runs (every simulated node gets a new one on ``--resume``), so
    nothing that must last is keyed on it. ``public_key`` is the base64 raw
    Ed25519 key; the id is ``node-`` and the first 16 hex digits of its SHA-256.
    """
    return NODE_ID_PREFIX + hashlib.sha256(public_key.encode("ascii")).hexdigest()[:16]


# ---------------------------------------------------------------- component ids

EMBEDDINGS: Final = "embeddings"
CLASSIFIER: Final = "classifier"
LM_HEAD: Final = "lm_head"

ComponentKind = Literal["head", "ffn", "embeddings", "classifier", "lm_head"]
COMPONENT_KINDS: Final[tuple[ComponentKind, ...]] = ("head", "ffn", "embeddings", "classifier", "lm_head")

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


class ComponentIdError(ValueError):
    """A string that is not a well-formed component id."""


def parse_component(component: str) -> ComponentRef:
    """Parse a component id; :class:`ComponentIdError` (a ``ValueError``) names the id and the accepted forms."""
    match = _COMPONENT_RE.match(component) if isinstance(component, str) else None
    if match is None:
        raise ComponentIdError(
            f"`component` {component!r} is not a component id; expected `layer.<i>.head.<j>`, "
            "`layer.<i>.ffn`, `embeddings`, `classifier` or `lm_head` (plain non-negative integers)"
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
    """The component id of attention head ``head`` in layer ``layer``: ``layer.{layer}.head.{head}``."""
    return f"layer.{layer}.head.{head}"


def ffn_id(layer: int) -> str:
    """The component id of the feed-forward block of layer ``layer``: ``layer.{layer}.ffn``."""
    return f"layer.{layer}.ffn"


def standard_components(
    num_layers: int,
    num_heads: int,
    *,
    ffn: bool = True,
    embeddings: bool = True,
    output: Literal["classifier", "lm_head"] | None = "classifier",
) -> list[str]:
    """All component ids of a transformer with ``num_layers`` layers of ``num_heads`` heads.

    Used where no model is at hand (CLI, tests); ``models.components`` lists the
    components of a loaded model itself.
    """
    if num_layers < 0 or num_heads < 0:
        raise ValueError(f"`num_layers` and `num_heads` must be >= 0, got {num_layers} and {num_heads}")
    ids: list[str] = [EMBEDDINGS] if embeddings else []
    for layer in range(num_layers):
        ids.extend(head_id(layer, head) for head in range(num_heads))
        if ffn:
            ids.append(ffn_id(layer))
    if output is not None:
        ids.append(output)
    return ids


# ---------------------------------------------------------------- ledger entry kinds


class EntryKind(StrEnum):
    """What a ledger entry records; the value is what is stored and hashed."""

    NODE_REGISTERED = "node_registered"
    NODE_REMOVED = "node_removed"
    ROUND_STARTED = "round_started"
    UPDATE_SUBMITTED = "update_submitted"
    VALIDATION_VERDICT = "validation_verdict"
    UPDATE_ACCEPTED = "update_accepted"
    UPDATE_REJECTED = "update_rejected"
    CONSENT_VIOLATION = "consent_violation"
    CONTRIBUTION = "contribution"
    TOKENS = "tokens"
    CHECKPOINT = "checkpoint"
    PROPOSAL = "proposal"
    VOTE = "vote"
    EXECUTION = "execution"
    CONTRACT_CHANGED = "contract_changed"
    HEADS_PRUNED = "heads_pruned"
    PRUNE_REVERTED = "prune_reverted"
    HEADS_REGROWN = "heads_regrown"
    STUDENT_DISTILLED = "student_distilled"
    STUDENT_REJECTED = "student_rejected"


__all__ = [
    "CLASSIFIER",
    "COMPONENT_KINDS",
    "COORDINATOR",
    "EMBEDDINGS",
    "LM_HEAD",
    "PARTITION_METHODS",
    "ROLES",
    "ComponentIdError",
    "ComponentKind",
    "ComponentRef",
    "EntryKind",
    "PartitionMethod",
    "Role",
    "ffn_id",
    "head_id",
    "is_component_id",
    "node_id_of_key",
    "parse_component",
    "standard_components",
]
