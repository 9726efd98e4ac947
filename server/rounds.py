"""The round loop: the only code that sends messages to nodes and receives their replies.

``run_federation`` performs the profile handshake, then for each round asks the
strategy to configure training, sends, lets the strategy check and aggregate,
evaluates the new global model centrally, applies early stopping and writes
checkpoints (atomically) so a stopped run can resume with the same result.
Observers (progress display, ledger, report) are told what happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from sentinel.client import protocol as P
from sentinel.server.config import FederationConfig
from sentinel.server.global_state import GlobalState, load_state, save_state
from sentinel.server.strategy import NodeInfo, RoundOutcome, SentinelStrategy, record_to_state, state_to_record

LAST = "last"
BEST = "best"  # the best round's adapter, in PEFT format
BEST_STATE = "best_state"  # the best round's exact (dense) global state


class NodesUnavailableError(RuntimeError):
    """Fewer nodes answered the profile handshake than the run needs."""


class RoundObserver(Protocol):
    """Something that wants to know what the round loop did (progress, ledger, report)."""

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """The nodes of the run are known (after the profile handshake)."""

    def on_round_start(self, server_round: int) -> None:
        """A round is about to be configured."""

    def on_round(self, outcome: RoundOutcome, row: dict[str, Any], state: GlobalState, previous: GlobalState) -> None:
        """A round finished: ``previous`` was the global state before it, ``state`` after.

        Observers may add JSON-ready fields to ``row`` (it goes into the history).
        """


@dataclass
class RunResult:
    """What a finished (or early-stopped) run produced."""

    state: GlobalState
    history: list[dict[str, Any]]
    best_round: int
    best_accuracy: float
    stopped_early: bool
    nodes: list[NodeInfo] = field(default_factory=list)


def discover_nodes(grid: Grid, config: FederationConfig, timeout: float) -> list[NodeInfo]:
    """Wait for the run's nodes, ask each for its profile, and assign roles.

    A node's own configured role (deployment ``--node-config role=...``) wins;
    otherwise the run's configuration maps its partition id to a role.
    """
    deadline = time.monotonic() + timeout
    while len(ids := sorted(grid.get_node_ids())) < config.nodes:
        if time.monotonic() > deadline:
            raise NodesUnavailableError(f"only {len(ids)} of {config.nodes} nodes connected within {timeout:.0f} s")
        time.sleep(0.2)
    query = ConfigRecord({P.C_RUN_SEED: config.seed})
    msgs = [Message(RecordDict({P.REC_CONFIG: query}), dst_node_id=n, message_type=P.MSG_PROFILE) for n in ids]
    nodes: list[NodeInfo] = []
    for reply in grid.send_and_receive(msgs, timeout=max(1.0, deadline - time.monotonic())):
        if reply.has_error():
            log(INFO, "profile of node %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
            continue
        prof = reply.content[P.REC_PROFILE]
        pid = int(prof[P.P_PARTITION_ID])
        role = str(prof[P.P_ROLE]) or config.role_of_partition(pid)
        nodes.append(NodeInfo(reply.metadata.src_node_id, pid, role, str(prof[P.P_PUBLIC_KEY])))  # type: ignore[arg-type]
    if len(nodes) < config.nodes:
        raise NodesUnavailableError(f"{len(nodes)} of {config.nodes} nodes answered the profile handshake")
    return sorted(nodes, key=lambda n: n.partition_id)


def _row(outcome: RoundOutcome, accuracy: float, loss: float, duration: float) -> dict[str, Any]:
    rejected = [r for r in outcome.results if not r.accepted]
    residuals = outcome.svd_residual
    return {
        "round": outcome.round,
        "accuracy": accuracy,
        "loss": loss,
        "nodes": len(outcome.results),
        "accepted": len(outcome.accepted),
        "rejected": len(rejected),
        "consent_violations": sum(1 for r in rejected if r.offending),
        "failures": len(outcome.failures),
        "train_loss": (
            sum(r.train_loss * r.num_examples for r in outcome.accepted) / max(1, sum(r.num_examples for r in outcome.accepted))
        ),
        "bytes_up": outcome.bytes_up,
        "bytes_down": outcome.bytes_down,
        "duration_s": round(duration, 3),
        # The largest relative norm dropped when factorising the global ΔW for any rank sent.
        "svd_residual": max(residuals.values()) if residuals else 0.0,
        "svd_residual_by_rank": {str(k): v for k, v in sorted(residuals.items())},
        "per_node": [
            {
                "node_id": str(r.node.node_id),
                "partition_id": r.node.partition_id,
                "role": r.node.role,
                "rank": r.rank,
                "accepted": r.accepted,
                "reason": r.reason,
                "offending": r.offending,
                "examples": r.num_examples,
                "contract_version": r.contract_version,
                "train_loss": r.train_loss,
                "val_accuracy": r.val_accuracy,
                "bytes_up": r.bytes_up,
            }
            for r in outcome.results
        ],
    }


def _save_best(state: GlobalState, checkpoint_dir: Path, export_best: Callable[[GlobalState, Path], None] | None) -> None:
    save_state(state, checkpoint_dir / BEST_STATE)
    if export_best is not None:
        export_best(state, checkpoint_dir / BEST)


def run_federation(
    grid: Grid,
    config: FederationConfig,
    strategy: SentinelStrategy,
    evaluate: Callable[[GlobalState], tuple[float, float]],
    initial: GlobalState,
    checkpoint_dir: Path,
    observers: Sequence[RoundObserver] = (),
    export_best: Callable[[GlobalState, Path], None] | None = None,
) -> RunResult:
    """Run rounds from ``initial`` (round 0 or a resumed checkpoint) up to ``config.rounds``."""
    nodes = discover_nodes(grid, config, config.timeout_s)
    strategy.set_nodes(nodes)
    for obs in observers:
        obs.on_nodes(nodes)
    state = initial
    meta = state.meta
    history: list[dict[str, Any]] = list(meta.get("history", []))
    if state.round == 0 and not history:
        acc, loss = evaluate(state)
        history.append({"round": 0, "accuracy": acc, "loss": loss})
        meta.update(best_round=0, best_accuracy=acc, stale=0, history=history)
        _save_best(state, checkpoint_dir, export_best)
    stopped_early = bool(meta.get("stopped_early", False))
    for rnd in range(state.round + 1, config.rounds + 1):
        if stopped_early:
            break
        t0 = time.monotonic()
        for obs in observers:
            obs.on_round_start(rnd)
        previous = state
        msgs = strategy.configure_train(rnd, state_to_record(state.deltas, state.head), ConfigRecord(), grid)
        replies = list(grid.send_and_receive(msgs, timeout=config.timeout_s))
        new_record, _ = strategy.aggregate_train(rnd, replies)
        assert strategy.outcome is not None
        if new_record is not None:
            deltas, head = record_to_state(new_record)
            state = GlobalState(deltas=deltas, head=head, head_mask=state.head_mask, round=rnd, meta=meta)
        else:
            state = GlobalState(state.deltas, state.head, state.head_mask, rnd, meta)
        acc, loss = evaluate(state)
        row = _row(strategy.outcome, acc, loss, time.monotonic() - t0)
        for obs in observers:
            obs.on_round(strategy.outcome, row, state, previous)
        history.append(row)
        improved = acc > float(meta["best_accuracy"]) + config.min_delta
        if improved:
            meta.update(best_round=rnd, best_accuracy=acc, stale=0)
        else:
            meta["stale"] = int(meta["stale"]) + 1
        stopped_early = int(meta["stale"]) >= config.patience
        meta.update(history=history, stopped_early=stopped_early)
        if improved:
            _save_best(state, checkpoint_dir, export_best)
        save_state(state, checkpoint_dir / LAST)
        log(INFO, "round %s: accuracy %.4f loss %.4f (%s accepted)", rnd, acc, loss, row["accepted"])
    if stopped_early:
        log(INFO, "early stopping: no improvement for %s rounds", config.patience)
    return RunResult(
        state=state,
        history=history,
        best_round=int(meta["best_round"]),
        best_accuracy=float(meta["best_accuracy"]),
        stopped_early=stopped_early,
        nodes=list(nodes),
    )


def resume_state(checkpoint_dir: Path) -> GlobalState:
    """The last checkpoint of a stopped run (what ``--resume`` continues from)."""
    return load_state(checkpoint_dir / LAST)
