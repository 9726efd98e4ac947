"""Run configuration of a federation: what the coordinator reads and sends to nodes.

One pydantic model validated at the boundary (CLI options, Flower's run config);
after that the rest of the coordinator trusts it. Role profiles give each kind of
node its LoRA rank and amount of local work: an edge device a small rank and few
steps, a GPU server a larger rank and more steps.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sentinel.protos.messages import MAX_FRAME_GAIN, MAX_LORA_RANK
from sentinel.protos.vocabulary import ROLES, PartitionMethod, Role

Aggregation = Literal["exact", "naive"]
ContributionMethodOption = Literal["loo", "shapley", "none"]
FrameGainSchedule = Literal["constant", "inverse-sqrt"]
"""How a shared-frame design's gain changes over rounds (``server.views.TrainingDesign.gain_of_round``)."""
TrainingDesignName = Literal[
    "legacy",
    "frame",
    "frame-b",
    "frame-unit",
    "frame-unit-gradient",
    "frame-unit-reach",
    "frame-unit-gradient-reach",
    "frame-unit-trained",
    "frame-unit-trained-reach",
    "frame-unit-trained-reach-ef",
    "flora",
    "continued",
    "continued-exact",
]
"""Names of the training designs (``server.views.DESIGNS``): how nodes start each round and what view they get."""


class RoleProfile(BaseModel):
    """How a node of one role trains: LoRA rank and its local work per round."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lora_rank: int = Field(ge=1, le=MAX_LORA_RANK, description="LoRA rank of this role's adapter.")
    local_steps: int = Field(ge=1, description="Optimiser steps per round (unless `local_epochs` is set).")
    local_epochs: float | None = Field(
        default=None, gt=0, description="Passes over the node's training data per round; overrides `local_steps`."
    )
    batch_size: int = Field(default=16, ge=1, description="Examples per step.")
    learning_rate: float = Field(default=1e-3, gt=0, description="AdamW learning rate.")


DEFAULT_PROFILES: dict[Role, RoleProfile] = {
    "edge": RoleProfile(lora_rank=4, local_steps=8),
    "gpu": RoleProfile(lora_rank=16, local_steps=24),
    "central": RoleProfile(lora_rank=16, local_steps=24),
}


class FederationConfig(BaseModel):
    """Everything a federated run needs to be reproduced."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="minilm", description="Base model: preset name, local directory or Hugging Face id.")
    dataset: str = Field(default="builtin:reviews", description="Dataset spec (see client.data.load_examples).")
    partition: PartitionMethod = Field(default="by-domain", description="How examples are split among nodes.")
    dirichlet_alpha: float = Field(default=0.5, gt=0, description="α of the Dirichlet label split.")
    nodes: int = Field(default=6, ge=1, description="Number of nodes (SuperNodes in simulation).")
    edge_fraction: float = Field(default=0.33, ge=0, le=1, description="Fraction of nodes with role edge.")
    roles: list[Role] | None = Field(default=None, description="Explicit role per partition id; overrides edge_fraction.")
    rounds: int = Field(default=10, ge=1, description="Maximum number of rounds.")
    aggregation: Aggregation = Field(default="exact", description="exact (Σ w·B·A) or naive (FedIT: mean A, mean B).")
    seed: int = Field(default=0, description="Seed of every random choice in the run.")
    patience: int = Field(default=3, ge=1, description="Rounds without central improvement before early stopping.")
    min_delta: float = Field(default=1e-4, ge=0, description="Accuracy gain that counts as an improvement.")
    test_fraction: float = Field(default=0.15, gt=0, lt=1, description="Share of the data held out by the coordinator.")
    val_fraction: float = Field(default=0.1, gt=0, lt=1, description="Share of each node's partition kept for validation.")
    max_length: int = Field(default=48, ge=4, description="Tokens per example.")
    checkpoint_rank: int = Field(default=32, ge=1, description="Rank of the PEFT adapter written for checkpoints.")
    profiles: dict[Role, RoleProfile] = Field(default_factory=lambda: dict(DEFAULT_PROFILES))
    timeout_s: float = Field(default=1800.0, gt=0, description="How long to wait for node replies per round.")
    policy: str | None = Field(default=None, description="Consent policy file (YAML/JSON); None: the built-in default.")
    consent: bool = Field(default=True, description="Enforce consent contracts (permitted sets) on every update.")
    contribution: ContributionMethodOption = Field(default="loo", description="loo | shapley | none: how contributions are scored.")
    shapley_permutations: int = Field(default=20, ge=1, description="Monte-Carlo permutations for Shapley scores.")
    contribution_examples: int = Field(default=256, ge=8, description="Held-out examples used to score contributions.")
    token_budget: int = Field(default=1000, ge=0, description="Tokens distributed per round, in proportion to contribution.")
    validation: bool = Field(
        default=True, description="Validators judge every update before it is aggregated (the validate phase)."
    )
    validator_roles: list[Role] = Field(
        default_factory=lambda: ["gpu", "central"], min_length=1, description="Roles whose nodes validate others' updates."
    )
    training_design: TrainingDesignName = Field(
        default="legacy",
        description="How nodes train each round and what view of the global ΔW they get (see server.views.DESIGNS).",
    )
    frame_gain: float = Field(
        default=4.0,
        gt=0.0,
        le=MAX_FRAME_GAIN,
        description=(
            "Under a shared-frame design (`frame`, `frame-b`, `frame-unit`, …): the scale of the factor nodes keep frozen, which sets "
            "the step the trained factor makes in ΔW (with Adam, a gain of g is g times the learning rate of that factor). "
            "4 with the inverse-sqrt schedule: the best of the gains 1, 2 and 4 on MiniLM / UCI sentiment "
            "(tests/benchmarks/heterogeneous.py)."
        ),
    )
    frame_gain_schedule: FrameGainSchedule = Field(
        default="inverse-sqrt",
        description=(
            "How the frame gain changes over rounds: `constant`, or `inverse-sqrt` (round t uses frame_gain / √t, "
            "a large step while the model is far from a good one and a smaller one as it nears it)."
        ),
    )
    update_norm_factor: float = Field(
        default=10.0,
        gt=1.0,
        description="Reject an update whose ‖ΔW‖ exceeds this multiple of the round's median update norm.",
    )
    update_min_cosine: float = Field(
        default=-1.0,
        ge=-1.0,
        le=1.0,
        description=(
            "Reject an update whose cosine to the coordinate-wise median of the round's other updates is at most "
            "this; 0 rejects updates that point against the honest majority (sign or label flips), checked from "
            "5 updates a round. -1 (the default) turns the check off: it needs nodes whose honest updates share "
            "a direction (a pretrained model), and on a randomly initialised tiny model honest cosines are noise."
        ),
    )
    update_direction_memory: float = Field(
        default=0.6,
        ge=0.0,
        lt=1.0,
        description=(
            "Weight of the past in each node's direction record (its cosine over the round's median |cosine|, "
            "averaged over rounds) decides the direction check: an update is rejected when its record, this round "
            "in, is at or below `update-min-cosine` in those units. 0: this round alone (the plain cosine rule)."
        ),
    )
    plasticity: bool = Field(
        default=False, description="Federated plasticity: prune heads by consensus and regrow them (server.plasticity)."
    )
    prune_every: int = Field(default=2, ge=1, description="Rounds between pruning cycles (a cycle runs in rounds divisible by it).")
    prune_rank_share: float = Field(
        default=0.25, gt=0, lt=1, description="A node votes to prune the heads in this lowest share of its own ranking."
    )
    prune_vote_share: float = Field(
        default=0.5, gt=0, le=1, description="Share of the nodes that may prune a head that must vote for it."
    )
    prune_step: float = Field(default=0.1, gt=0, le=1, description="Share of all heads one pruning cycle removes at most.")
    target_sparsity: float = Field(default=0.4, ge=0, lt=1, description="Share of all heads pruning stops at.")
    prune_tolerance: float = Field(
        default=0.01,
        ge=0,
        description="Central accuracy may fall this much after a cycle (else it is reverted); a later larger drop regrows heads.",
    )
    regrow_rounds: int = Field(
        default=2, ge=1, description="Rounds regrown heads train at a boosted learning rate (no pruning meanwhile)."
    )
    regrow_lr_factor: float = Field(default=3.0, ge=1, description="Learning-rate factor of regrown heads' own weights.")
    importance_decay: float = Field(
        default=0.5, ge=0, lt=1, description="EMA decay of the global head importance (0: only the last round counts)."
    )
    distill: bool = Field(
        default=False,
        description=(
            "Central nodes distil the global model into the pruned student after each accepted pruning cycle "
            "(and every `distill_every` rounds and in the last round while heads are pruned); the student is exported as the edge bundle "
            "(server.distill_phase)."
        ),
    )
    distill_every: int = Field(
        default=0, ge=0, description="Also distil in rounds divisible by this while heads are pruned (0: only after a pruning cycle)."
    )
    distill_steps: int = Field(default=50, ge=1, le=100_000, description="Optimiser steps of one distillation on a central node.")
    distill_learning_rate: float = Field(default=5e-5, gt=0, le=1.0, description="AdamW learning rate of distillation.")
    distill_temperature: float = Field(default=2.0, gt=0, le=100.0, description="Softmax temperature of the distillation loss.")
    distill_ffn_keep: float = Field(
        default=1.0, gt=0, le=1.0, description="Share of FFN width the student keeps in layers whose consent allows `prune` (1: full)."
    )
    distill_precision: Literal["fp32", "int8"] = Field(
        default="fp32", description="Precision of the exported edge bundle (int8: onnxruntime dynamic quantization)."
    )
    edge_deploy: bool = Field(
        default=True,
        description=(
            "Once a bundle is exported, edge nodes evaluate it through onnxruntime every round; the coordinator "
            "delivers its files to any edge node that lacks it (server.edge_deployment). Needs `distill`."
        ),
    )
    central_evaluation: Literal["coordinator", "central-nodes"] = Field(
        default="coordinator",
        description="Where central evaluation runs: the coordinator's held-out set, or the central nodes' own data (pooled).",
    )

    @field_validator("profiles")
    @classmethod
    def _all_roles_have_profiles(cls, v: dict[Role, RoleProfile]) -> dict[Role, RoleProfile]:
        merged = dict(DEFAULT_PROFILES)
        merged.update(v)
        return merged

    @model_validator(mode="after")
    def _roles_match_nodes(self) -> FederationConfig:
        if self.roles is not None and len(self.roles) != self.nodes:
            raise ValueError(f"`roles` lists {len(self.roles)} roles but `nodes` is {self.nodes}")
        return self

    def role_of_partition(self, partition_id: int) -> Role:
        """The role a simulated node takes from its partition id.

        Explicit ``roles`` win. Otherwise the first ⌊nodes·edge_fraction⌉
        partitions are edge devices, the next one (when at least three nodes
        remain possible) is the central node, and the rest are GPU servers.
        """
        if self.roles is not None:
            return self.roles[partition_id]
        n_edge = min(self.nodes, int(math.floor(self.nodes * self.edge_fraction + 0.5)))
        if partition_id < n_edge:
            return "edge"
        if partition_id == n_edge and self.nodes >= 3:
            return "central"
        return "gpu"

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> FederationConfig:
        """Build from Flower's flat run config (``[tool.flwr.app.config]`` / ``--run-config``).

        Keys use dashes (``edge-fraction``), per-role profile fields are
        ``<role>-<field>`` (``edge-lora-rank``), lists are comma-separated and
        ``""`` is unset; see :mod:`sentinel.server.run_config`. A bad key or
        value raises ``RunConfigError`` (a ``ValueError``) with one line naming it.
        """
        from sentinel.server.run_config import to_federation_config

        return to_federation_config(run_config)


__all__ = ["Aggregation", "DEFAULT_PROFILES", "FederationConfig", "FrameGainSchedule", "PartitionMethod", "ROLES", "RoleProfile", "TrainingDesignName"]
