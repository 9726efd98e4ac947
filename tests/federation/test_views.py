"""Every node works from the exact global model: what a node materialises is what the coordinator holds.

Tiny models, mixed ranks, several rounds; a node that misses a round, one that
joins late, a resumed run; and the best adapter, reloaded with PEFT, giving the
coordinator's logits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, Message, RecordDict
from peft import PeftModel
from sentinel.client.app import app as client_app
from sentinel.client.app import resolve_round
from sentinel.client.node import SIMULATED_KEYS, ensure_simulated_keys
from sentinel.client.training import materialise_global, train_local
from sentinel.models.global_model import materialise
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.lora import split_adapter_arrays
from sentinel.protos import messages as P
from sentinel.server.central import initial_state
from sentinel.server.checkpoints import load_state
from sentinel.server.coordinator import Coordinator
from sentinel.server.frame_aggregation import frame_problem
from sentinel.server.local_grid import LocalGrid
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, NodeResult, RoundOutcome
from sentinel.server.state import GlobalState
from sentinel.server.strategy import SentinelStrategy, aggregate_updates

ATOL = 1e-5


def _max_weight_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa if sa[k].is_floating_point())


def _node_model(msg: Message, context: Context) -> tuple[LoadedModel, torch.nn.Module, Any]:
    """What the node's own code materialises from a train message (``client.app.resolve_round``)."""
    inputs = resolve_round(msg, context)
    return inputs.base, materialise_global(inputs.base, inputs.view), inputs


def _context(node: NodeInfo, nodes: int, keys: Path) -> Context:
    config = {"partition-id": node.partition_id, "num-partitions": nodes, SIMULATED_KEYS: str(keys)}
    return Context(run_id=1, node_id=node.node_id, node_config=config, state=RecordDict(), run_config={})


@pytest.mark.parametrize("design", ["frame", "frame-unit-gradient-reach", "frame-unit-trained-reach-ef"])
def test_views_are_exact_for_mixed_ranks_a_missed_round_and_a_late_joiner(tmp_path: Path, tiny_config, design: str) -> None:
    """Under the gradient or trained sub-frame (with error feedback) and the reach-weighted mean too: each keeps every
    update in the frame."""
    config = tiny_config(nodes=4, roles=["edge", "gpu", "gpu", "edge"], training_design=design)
    keys = ensure_simulated_keys(tmp_path / "keys", config.nodes)
    LocalGrid({})  # sets Flower's task identity, which building Messages outside a run needs
    base = load_base_model(config.model, num_labels=2, seed=config.seed)
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    nodes = [NodeInfo(100 + i, i, role) for i, role in enumerate(config.roles or [])]
    # Node 1 misses round 2; node 3 joins in round 3; round 4 has only some of them.
    taking_part = {1: [0, 1, 2], 2: [0, 2], 3: [0, 1, 2, 3], 4: [1, 3]}
    state = initial_state(base)
    residuals: dict[int, dict] = {}  # each node's error-feedback remainder, as its Context.state keeps it
    for rnd, members in taking_part.items():
        plan = strategy.configure_train(rnd, state, [nodes[i] for i in members])
        truth = materialise(base, state.deltas, state.head)
        results = []
        for msg in plan.messages:
            node = plan.sent[msg.metadata.dst_node_id].node
            node_base, model, inputs = _node_model(msg, _context(node, config.nodes, keys))
            assert _max_weight_gap(model, truth) <= ATOL, f"round {rnd}, node {node.partition_id}"
            ins = inputs.instruction
            update = train_local(
                node_base, inputs.view, inputs.train_set, inputs.val_set, rank=ins.lora_rank, steps=2,
                batch_size=8, learning_rate=5e-3, max_length=config.max_length, seed=rnd * 10 + node.partition_id,
                frame=inputs.train_factor, frame_seed=config.seed, server_round=rnd, frame_gain=ins.frame_gain,
                frame_scale=ins.frame_scale, frame_rank=ins.frame_rank or None, subframe=ins.subframe,
                residual=residuals.get(node.partition_id, {}) if ins.error_feedback else None,
            )
            if update.residual is not None:
                residuals[node.partition_id] = update.residual
            results.append(NodeResult(node=node, accepted=True, num_examples=update.num_examples, rank=update.rank, arrays=update.arrays))
        assert plan.frames is not None
        for r in results:  # every honest update lies in the round's frame (the coordinator's check)
            assert frame_problem(split_adapter_arrays(r.arrays)[0], plan.frames) == ""
        frames = plan.frames if strategy.design.reach_weighted else None
        deltas, head = aggregate_updates(results, "exact", state.deltas, state.head, frames)
        state = GlobalState(deltas=deltas, head=head, round=rnd)
        # The frame keeps ΔW at the largest rank, so the exact view is as small as a rank-8 one.
        view_ranks = strategy.configure_train(rnd + 1, state, nodes[:1]).messages[0].content[P.REC_ARRAYS]
        a_shapes = [v.shape[0] for k, v in view_ranks.items() if k.startswith(P.KEY_LORA_A)]
        assert max(a_shapes) <= max(p.lora_rank for p in config.profiles.values())
    assert bool(residuals) == strategy.design.error_feedback  # the edge nodes kept a remainder


class _StateLog(RoundObserver):
    """Keeps the global state each round was configured from (what every node should have seen)."""

    def __init__(self) -> None:
        self.sent: dict[int, GlobalState] = {}

    def on_round(self, outcome: RoundOutcome, row: Any, state: GlobalState, previous: GlobalState) -> dict[str, Any]:
        self.sent[outcome.round] = previous
        return {}


def _capturing(seen: dict[tuple[int, int], torch.nn.Module], fail: set[tuple[int, int]]) -> Callable[[Message, Context], Message]:
    """The real ClientApp, recording the model each node materialises per round (and failing where told)."""

    def app(msg: Message, context: Context) -> Message:
        if msg.metadata.message_type == P.MSG_TRAIN:
            rnd = int(msg.content[P.REC_CONFIG][P.C_ROUND])
            pid = int(context.node_config["partition-id"])
            seen[(rnd, pid)] = _node_model(msg, context)[1]
            if (rnd, pid) in fail:
                raise RuntimeError("node offline this round")
        return client_app(msg, context)

    return app


def _run(config, out_dir: Path, fail: set[tuple[int, int]] = frozenset(), resume: bool = False):  # noqa: ANN202
    seen: dict[tuple[int, int], torch.nn.Module] = {}
    log = _StateLog()
    coordinator = Coordinator.build(config, out_dir)
    ids = [1001 + 7 * i for i in range(config.nodes)]
    grid = LocalGrid(
        {n: _capturing(seen, set(fail)) for n in ids},
        {n: {"partition-id": i, "num-partitions": config.nodes} for i, n in enumerate(ids)},
        node_keys=ensure_simulated_keys(out_dir / "node-keys", config.nodes),  # kept: a resumed run signs with the same keys
    )
    result = coordinator.run(grid, resume=resume, extra_observers=[log])
    return coordinator, result, seen, log


def test_a_node_that_missed_a_round_is_given_the_exact_global_model_next_round(out_dir: Path, tiny_config) -> None:
    config = tiny_config(rounds=3, validation=False, training_design="frame")
    coordinator, result, seen, log = _run(config, out_dir, fail={(2, 2)})
    assert [r["failures"] for r in result.history[1:]] == [0, 1, 0]
    for (rnd, pid), model in seen.items():
        truth = materialise(coordinator.base, log.sent[rnd].deltas, log.sent[rnd].head)
        assert _max_weight_gap(model, truth) <= ATOL, f"round {rnd}, node {pid}"
    for row in result.history[1:]:
        assert row["svd_residual"] <= 1e-5  # the view error every node had
        assert {role: f["view_error"] <= 1e-5 for role, f in row["by_role"].items()} == {"edge": True, "central": True, "gpu": True}
        assert sum(f["bytes_down"] for f in row["by_role"].values()) == row["bytes_down"]
    # The report gives each role's share of the run's tokens and its mean leave-one-out contribution.
    by_role = coordinator.report_extra()["by_role"]
    assert set(by_role) == {"edge", "central", "gpu"}
    assert abs(sum(r["token_share"] for r in by_role.values()) - 1.0) <= 1e-9
    assert all(r["loo_mean"] is not None for r in by_role.values())

    # checkpoint/best, reloaded with PEFT, gives the coordinator's logits.
    best_state = load_state(out_dir / "checkpoint" / "best_state")
    fresh = load_base_model(config.model, num_labels=2, seed=config.seed)
    loaded = PeftModel.from_pretrained(fresh.model, str(out_dir / "checkpoint" / "best")).eval()
    truth = materialise(coordinator.base, best_state.deltas, best_state.head).eval()
    enc = fresh.tokenizer([e.text for e in coordinator.evaluator.test[:16]], padding=True, truncation=True,
                          max_length=config.max_length, return_tensors="pt")
    with torch.no_grad():
        gap = float((loaded(**enc).logits - truth(**enc).logits).abs().max())
    assert gap <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(("design", "rounds", "split"), [("frame", 2, 1), ("frame-unit-trained-reach-ef", 4, 2)])
def test_a_resumed_run_gives_nodes_the_views_of_an_uninterrupted_one(
    tmp_path: Path, tiny_config, design: str, rounds: int, split: int
) -> None:
    """With error feedback too: the edge node's remainders, kept on its disk, carry over the resume (resumed after
    round 2 of 4, so round 4's views depend on round 3's updates, which used remainders from round 2). Consent is
    off there: the default policy keeps edge nodes off layers 0-1, which is all of tiny-bert, so they would keep none."""
    settings = dict(validation=False, training_design=design, consent=design == "frame")
    _, _, full, _ = _run(tiny_config(rounds=rounds, **settings), tmp_path / "full")
    _run(tiny_config(rounds=split, **settings), tmp_path / "split")
    _, _, resumed, _ = _run(tiny_config(rounds=rounds, **settings), tmp_path / "split", resume=True)
    assert {k for k in resumed} == {k for k in full if k[0] > split}
    for key, model in resumed.items():
        assert _max_weight_gap(model, full[key]) <= 1e-6, key
