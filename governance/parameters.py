"""Federation parameters that only governance may change (``set_parameter`` proposals).

Stored versioned in the governance database; the coordinator reads the current
version each round. Every field has a lower and an upper bound (and must be
finite), so no passed proposal can set a value the federation cannot use: a
voting period of 1e300 seconds would make every later deadline unrepresentable.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.limits import MAX_VOTING_PERIOD
from sentinel.models.entropy_calibration import DEFAULT_MIN_RATIO
from sentinel.models.loss_calibration import DEFAULT_ALLOWANCE_SHARE, DEFAULT_LOSS_Z

MAX_TOKEN_BUDGET = 1e12
"""The most tokens one round may distribute."""
MAX_COOLDOWN_ROUNDS = 1000
"""The longest cool-down: the bound of ``rejection_cooldown_rounds`` and of its escalation for repeat offenders."""


class FederationParameters(BaseModel):
    """Validator, gate, token and voting parameters of the federation, with their version."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    version: int = Field(default=1, ge=1, le=2**53, description="Incremented on every change.")
    validator_quorum: float = Field(
        default=2 / 3, gt=0.0, le=1.0, description="Fraction of an update's validators that must accept it."
    )
    validators_per_update: int = Field(
        default=3, ge=1, le=64, description="How many validators (never the author) judge each update."
    )
    entropy_gate_z: float = Field(
        default=3.5,
        gt=0.0,
        le=100.0,
        description="Entropy gate: reject an update whose attention-entropy shift has a robust z-score (against the "
        "round's median and MAD of shifts) above this.",
    )
    loss_gate_tolerance: float = Field(
        default=0.0,
        ge=0.0,
        le=10.0,
        description="Loss gate: reject an update that raises a validator's validation loss by more than this (nats) "
        "plus two standard errors of the paired per-example change.",
    )
    entropy_min_ratio: float = Field(
        default=DEFAULT_MIN_RATIO,
        ge=1.0,
        le=1000.0,
        description="Entropy gate's floor: an outlying shift is also at least this many times the round's median "
        "shift, so a round of near-identical honest shifts (tiny MAD) does not flag the largest of them.",
    )
    loss_allowance_share: float = Field(
        default=DEFAULT_ALLOWANCE_SHARE,
        ge=0.0,
        le=10.0,
        description="Loss gate's allowance for a direction-confirmed update: it may cost a validator this share of "
        "that validator's median gain this round (0: the absolute gate alone).",
    )
    loss_gate_z: float = Field(
        default=DEFAULT_LOSS_Z,
        ge=0.0,
        le=100.0,
        description="Loss gate's round calibration: in a round whose typical update costs the validators, an update "
        "whose cost is no outlier among the round's authors (robust z-score at most this) is not rejected for it (0: off).",
    )
    coordination_z: float = Field(
        default=5.0,
        ge=0.0,
        le=100.0,
        description="Coordinated-minority check: reject accepted updates far more similar to each other than the "
        "round's updates are (robust z-score of pairwise cosines above this; 0: off).",
    )
    coordination_memory: float = Field(
        default=0.6,
        ge=0.0,
        le=0.99,
        description="Coordinated-minority check's memory: a pair of nodes is judged on the exponentially weighted mean "
        "of its z-scores over the rounds both were judged, with this weight on the past (0: the round alone).",
    )
    reputation_learning_rate: float = Field(
        default=0.2, gt=0.0, le=1.0, description="How fast a validator's reputation follows its agreement with consensus."
    )
    rejection_cooldown_rounds: float = Field(
        default=2.0, ge=0.0, le=MAX_COOLDOWN_ROUNDS, description="Rounds a node sits out after repeated rejected updates."
    )
    max_examples_per_node: float = Field(
        default=1e6,
        ge=1.0,
        le=2**53,
        description="The most training examples any node may claim in a round (its aggregation weight's cap); a "
        "claim above it, above the node's declared size or above what the coordinator knows is rejected.",
    )
    token_budget: float = Field(default=1000.0, ge=0.0, le=MAX_TOKEN_BUDGET, description="Tokens distributed per round.")
    governance_quorum: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Fraction of active voting nodes that must vote for a decision."
    )
    governance_majority: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="A proposal passes when yes / (yes + no) is above this."
    )
    proposal_ttl_s: float = Field(
        default=7 * 24 * 3600.0,
        ge=1.0,
        le=MAX_VOTING_PERIOD.total_seconds(),
        description="Default voting period of a proposal (seconds, at most 366 days).",
    )

    @classmethod
    def settable(cls) -> list[str]:
        """Names a ``set_parameter`` proposal may change."""
        return [name for name in cls.model_fields if name != "version"]

    def with_value(self, name: str, value: float) -> FederationParameters:
        """A copy with ``name`` set to ``value`` and the version incremented; invalid values raise."""
        if name not in self.settable():
            raise InvalidRequestError(f"`name` {name!r} is not a federation parameter; one of {', '.join(self.settable())}")
        data = self.model_dump()
        data[name] = value
        data["version"] = self.version + 1
        try:
            return FederationParameters.model_validate(data)
        except ValidationError as e:
            msg = "; ".join(err["msg"] for err in e.errors())
            raise InvalidRequestError(f"parameter `{name}` = {value!r} is invalid: {msg}") from e
