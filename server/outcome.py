"""What a round produces, as plain values: the nodes, each node's verdict, the round's outcome.

The strategy's steps return these and the round loop hands them to observers;
nothing is read back from a side channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from sentinel.protos.vocabulary import Role, node_id_of_key

if TYPE_CHECKING:
    from sentinel.server.frame_aggregation import FrameBasis


@dataclass(frozen=True)
class NodeInfo:
    """A node taking part in the run: Flower node id, data partition, role and key."""

    node_id: int
    """Flower's node id: where messages go (a transport detail that changes between runs)."""
    partition_id: int
    role: Role
    public_key: str | None = None
    declared_examples: int | None = None
    """The training examples the node declared at the handshake (None: not declared): a bound on its claims."""
    lora_rank: int | None = None
    """The LoRA rank the node's operator set (None: its role's rank); checked at the handshake."""
    own_data: bool = False
    """The node trains on its own dataset, not on a partition of the run's (its declared size bounds its claims)."""

    @property
    def key_id(self) -> str:
        """The node's lasting id, derived from its registered key (what the ledger, governance and reports use)."""
        return node_id_of_key(self.public_key) if self.public_key else f"flower-{self.node_id}"


@dataclass(frozen=True)
class Verdict:
    """One validator's signed verdict on one candidate update, with its measurements."""

    validator: str
    """The validator's key id."""
    author: str
    """The candidate's author, by key id."""
    accept: bool
    reason: str
    signature: str
    """The validator's signature over the ledger's ``validation_verdict`` payload."""
    loss_change: float
    accuracy_change: float
    kl: float
    entropy_shift: float
    """‖per-head entropy shift‖₂ on the validator's data."""
    effective: bool | None = None
    """The vote consensus counted: the verdict, unless the round-wide entropy gate overruled it."""
    effective_reason: str = ""


@dataclass
class NodeResult:
    """What happened to one node's update in a round."""

    node: NodeInfo
    accepted: bool
    reason: str = ""
    num_examples: int = 0
    train_loss: float = float("nan")
    val_accuracy: float = float("nan")
    rank: int = 0
    scaling: float = 1.0
    bytes_up: int = 0
    content_hash: str = ""
    signature: str | None = None
    claimed_hash: str | None = None
    """The content hash the node signed (compared with ``content_hash``)."""
    authentic: bool = False
    """The update is signed by the node's registered key over what was received."""
    contract_version: int = 0
    offending: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    supports: dict[str, np.ndarray] = field(default_factory=dict)
    """Module → where consent let the node change ΔW (``models.consent.adapt_support``); absent: everywhere."""
    head_permitted: bool = True
    """Consent let the node adapt the classification head (else its head is not averaged in)."""
    entropy: np.ndarray | None = None
    gradient_importance: np.ndarray | None = None
    normalised_entropy: np.ndarray | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    """The validators' verdicts on this update (empty when it was not validated)."""
    direction_cosine: float | None = None
    """Cosine of the update to the median of the round's other updates (None when the direction check did not run)."""
    direction_record: float | None = None
    """The node's direction record with this round in (``server.direction_memory``; None when the check did not run)."""
    coordination_z: float | None = None
    """The largest z-score of the update's pairwise cosines this round (``server.coordination``; None when not judged)."""
    coordination_record: float | None = None
    """The largest coordination record among the update's pairs, this round in (``server.coordination_memory``)."""


@dataclass
class RoundOutcome:
    """Everything the round's check phase decided, and what crossed the wire."""

    round: int
    bytes_down: int = 0
    bytes_up: int = 0
    svd_residual: dict[int, float] = field(default_factory=dict)
    results: list[NodeResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    """Nodes of the run (key id) whose update never arrived this round, and why (an error reply, silence)."""
    excluded: list[str] = field(default_factory=list)
    """Nodes (key ids) sitting out a cool-down after repeated rejections."""
    validator_agreement: float | None = None
    """Share of validator verdicts that agreed with consensus (None when nothing was validated)."""
    reputation: dict[str, float] = field(default_factory=dict)
    """Validators' reputation after this round."""
    frames: Mapping[str, FrameBasis] | None = None
    """Module → the round's shared frame (``server.frame_aggregation.FrameBasis``) under a reach-weighted design:
    aggregation, and every re-aggregation of a subset (contribution scores), averages over it."""

    @property
    def accepted(self) -> list[NodeResult]:
        """Updates that go into the aggregate."""
        return [r for r in self.results if r.accepted]


@dataclass(frozen=True)
class Evaluation:
    """Central evaluation of a global state (on the coordinator's held-out set, or on central nodes)."""

    accuracy: float
    loss: float
    ece: float | None = None
    """Expected calibration error (15 equal-width bins); None when the evaluator does not measure it."""
    kl_from_base: float | None = None
    """Mean KL(global ‖ base model) per test example (the KL-divergence monitoring)."""
    per_domain: dict[str, float] = field(default_factory=dict)
    """Domain → accuracy."""
    source: str = "coordinator"
    """Where it was measured: ``coordinator``, or ``central-nodes`` (their own held-out data)."""

    def row_fields(self) -> dict[str, object]:
        """The fields beyond accuracy and loss that a round's row carries (empty when none were measured)."""
        if self.ece is None and self.kl_from_base is None and not self.per_domain:
            return {}
        return {
            "ece": self.ece,
            "kl_from_base": self.kl_from_base,
            "per_domain_accuracy": dict(self.per_domain),
            "evaluated_on": self.source,
        }


__all__ = ["Evaluation", "NodeInfo", "NodeResult", "RoundOutcome", "Verdict"]
