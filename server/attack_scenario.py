"""An attack scenario for a simulated federation, and how well the defences detected it.

Simulation only: the scenario names which partitions attack and how
(``client.attacks``), and an observer marks each round's nodes as malicious or
not and counts the detections — true positives are rejected attackers, false
positives rejected honest nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.clientapp import ClientApp
from pydantic import BaseModel, ConfigDict, Field
from sentinel.client.attacks import AttackKind, ValidatorAttackKind, attack_app
from sentinel.server.config import FederationConfig
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.state import GlobalState


class AttackScenario(BaseModel):
    """Which nodes attack, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: AttackKind | None = Field(default=None, description="The update attack, or None.")
    fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of nodes that send poisoned updates.")
    validator_kind: ValidatorAttackKind | None = Field(default=None, description="The validator attack, or None.")
    validator_fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of validators that lie.")
    seed: int = Field(default=0, description="Seed of the choice of attackers.")

    def _choose(self, candidates: Sequence[int], fraction: float, salt: str) -> list[int]:
        count = int(np.floor(fraction * len(candidates) + 0.5))
        if fraction > 0 and count == 0:
            count = 1
        digest = hashlib.sha256(f"{salt}:{self.seed}".encode()).digest()
        order = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(sorted(candidates))
        return sorted(int(p) for p in order[:count])

    def malicious_partitions(self, config: FederationConfig) -> list[int]:
        """Partitions whose updates are poisoned."""
        if self.kind is None:
            return []
        return self._choose(range(config.nodes), self.fraction, "attackers")

    def lying_validator_partitions(self, config: FederationConfig) -> list[int]:
        """Partitions of validators that lie (chosen among the validator roles)."""
        if self.validator_kind is None:
            return []
        validators = [p for p in range(config.nodes) if config.role_of_partition(p) in config.validator_roles]
        return self._choose(validators, self.validator_fraction, "validators")

    def client_app(self, config: FederationConfig) -> ClientApp:
        """The nodes' app under this scenario."""
        return attack_app(self.kind, self.malicious_partitions(config), self.validator_kind, self.lying_validator_partitions(config))


def detection_counts(outcome: RoundOutcome, malicious: set[int]) -> dict[str, int]:
    """tp/fp/tn/fn of the round's verdicts: positive = rejected, truth = the node attacks."""
    counts = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for r in outcome.results:
        bad = r.node.partition_id in malicious
        key = ("tp" if bad else "fp") if not r.accepted else ("fn" if bad else "tn")
        counts[key] += 1
    return counts


class AttackObserver(RoundObserver):
    """Adds to each round which nodes attacked and how many the defences caught."""

    def __init__(self, scenario: AttackScenario, config: FederationConfig) -> None:
        self.scenario = scenario
        self.malicious = set(scenario.malicious_partitions(config))
        self.lying = set(scenario.lying_validator_partitions(config))
        self.nodes: list[NodeInfo] = []

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """Keep the nodes to name the attackers by node id."""
        self.nodes = list(nodes)

    def on_round(self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState) -> dict[str, Any]:
        """The round's ``malicious`` node ids and ``detection`` counts."""
        return {
            "malicious": [n.key_id for n in self.nodes if n.partition_id in self.malicious],
            "lying_validators": [n.key_id for n in self.nodes if n.partition_id in self.lying],
            "detection": detection_counts(outcome, self.malicious),
        }

    def report(self) -> dict[str, Any]:
        """The scenario, for the run report."""
        return {
            "attack": {
                **self.scenario.model_dump(),
                "malicious_partitions": sorted(self.malicious),
                "lying_validator_partitions": sorted(self.lying),
            }
        }
