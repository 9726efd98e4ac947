"""Per-role round figures: traffic, view error, leave-one-out contribution and token share by role."""

from __future__ import annotations

import json

import numpy as np
from sentinel.server.config import FederationConfig, RoleProfile
from sentinel.server.outcome import NodeInfo, NodeResult, RoundOutcome
from sentinel.server.role_figures import RoleFigures
from sentinel.server.state import GlobalState
from sentinel.server.views import LEGACY_DESIGN, TrainingDesign, round_views

PROFILES = {"edge": RoleProfile(lora_rank=2, local_steps=1), "gpu": RoleProfile(lora_rank=6, local_steps=1)}


def _setup(design: TrainingDesign) -> tuple[RoleFigures, list[NodeInfo], GlobalState]:
    config = FederationConfig(nodes=3, roles=["edge", "gpu", "gpu"], profiles=PROFILES)
    nodes = [NodeInfo(10 + i, i, role, public_key=None) for i, role in enumerate(config.roles or [])]
    rng = np.random.default_rng(0)
    state = GlobalState(deltas={"m": rng.normal(size=(12, 4)) @ rng.normal(size=(4, 10))}, head={"h": np.zeros(3)}, round=1)
    figures = RoleFigures(config, design)
    figures.on_nodes(nodes)
    return figures, nodes, state


def test_figures_by_role_come_from_the_views_sent_and_the_row() -> None:
    figures, nodes, state = _setup(TrainingDesign())
    results = [NodeResult(node=n, accepted=n.partition_id != 2, bytes_up=100 * (n.partition_id + 1), rank=2) for n in nodes]
    outcome = RoundOutcome(round=2, results=results)
    row = {"contributions": {nodes[0].key_id: -0.5, nodes[1].key_id: 1.0}, "tokens": {nodes[0].key_id: 25, nodes[1].key_id: 75}}
    got = figures.on_round(outcome, row, state, state)["by_role"]
    one_view = round_views(state, TrainingDesign(), [2, 6]).bytes_of(None)
    assert got["edge"] == {"nodes": 1, "view_error": got["edge"]["view_error"], "bytes_down": one_view, "bytes_up": 100,
                           "accepted": 1, "loo_mean": -0.5, "tokens": 25.0, "token_share": 0.25}
    assert got["gpu"]["bytes_down"] == 2 * one_view and got["gpu"]["bytes_up"] == 500 and got["gpu"]["accepted"] == 1
    assert got["gpu"]["loo_mean"] == 1.0 and got["gpu"]["token_share"] == 0.75
    assert got["edge"]["view_error"] <= 1e-6  # exact view: the same small error for everyone
    report = figures.report()["by_role"]
    assert report["edge"]["token_share"] == 0.25 and report["gpu"]["loo_mean"] == 1.0


def test_truncated_views_cost_and_lose_by_rank() -> None:
    figures, nodes, state = _setup(LEGACY_DESIGN)
    got = figures.on_round(RoundOutcome(round=2), {}, state, state)["by_role"]
    assert got["gpu"]["view_error"] <= 1e-6 < 0.1 < got["edge"]["view_error"]  # ΔW has rank 4: rank 6 holds it, rank 2 does not
    assert got["edge"]["bytes_down"] < got["gpu"]["bytes_down"] / 2
    assert got["edge"]["loo_mean"] is None and got["edge"]["token_share"] is None


def test_a_resumed_run_reports_the_rounds_before_the_restart() -> None:
    figures, nodes, state = _setup(TrainingDesign())
    row = {"tokens": {nodes[0].key_id: 10, nodes[1].key_id: 30}}
    figures.on_round(RoundOutcome(round=1), row, state, state)
    meta = json.loads(json.dumps(figures.checkpoint_meta()))  # what a checkpoint keeps
    resumed, _, _ = _setup(TrainingDesign())
    resumed.restore(meta)
    resumed.on_round(RoundOutcome(round=2), {"tokens": {nodes[0].key_id: 30, nodes[2].key_id: 30}}, state, state)
    assert resumed.report()["by_role"]["edge"]["token_share"] == 0.4  # (10 + 30) of 100 tokens over both rounds
