"""The round loop: the only code that sends messages to nodes and receives their replies.

``run_federation`` performs the profile handshake, then runs rounds. A round is
the list of its phases (:func:`run_round`), each a strategy step or a plain
function that takes and returns values:

1. configure — each node's view of the global model, its permitted set and its work;
2. train — the messages go out and the replies come back (the loop's own I/O);
3. check — what the coordinator can know itself: signature, keys, shapes, dtypes,
   finiteness, size, rank, scaling, example count, contract version, consent;
4. validate — k validators per candidate judge it on their own data; consensus decides;
5. aggregate — exact LoRA aggregation of the accepted updates into a new global state;
6. evaluate — central evaluation on the coordinator's held-out set;
   (6b. plasticity, when on — heads pruned by consensus, reverted or regrown: ``server.plasticity``;)
   (6c. distillation, when on and due — central nodes distil the pruned student, exported as the edge
   bundle: ``server.distill_phase``;)
   (6d. edge, when a bundle exists and there are edge nodes — they evaluate it through onnxruntime, the
   files delivered to any that lack it: ``server.edge_deployment``;)
7. record — observers (ledger, governance, progress) return their fields; early
   stopping is decided; the round's checkpoint is staged, its records committed
   (one ledger transaction), and the checkpoint put in force.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flwr.serverapp import Grid
from flwr.supercore import log
from sentinel.server.checkpoints import BEST, BEST_STATE, promote_state, save_state, stage_state
from sentinel.server.config import FederationConfig
from sentinel.server.distill_phase import DistillationPhase
from sentinel.server.edge_deployment import EdgeDeployment
from sentinel.server.handshake import discover_nodes
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import Evaluation, NodeInfo, RoundOutcome
from sentinel.server.plasticity import PlasticityPhase
from sentinel.server.state import GlobalState
from sentinel.server.strategy import SentinelStrategy
from sentinel.server.validation import ValidationPhase

Evaluate = Callable[[GlobalState], tuple[float, float]]
ExportBest = Callable[[GlobalState, Path], None]


@dataclass
class RunResult:
    """What a finished (or early-stopped) run produced."""

    state: GlobalState
    history: list[dict[str, Any]]
    best_round: int
    best_accuracy: float
    stopped_early: bool
    nodes: list[NodeInfo] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)
    """Nodes refused at the handshake, with the reason."""


@dataclass(frozen=True)
class RunProgress:
    """The run's bookkeeping between rounds: history, best round, early-stopping counter.

    Saved in every checkpoint's metadata, so a resumed run continues exactly.
    """

    history: tuple[dict[str, Any], ...] = ()
    best_round: int = 0
    best_accuracy: float = float("-inf")
    stale: int = 0
    stopped_early: bool = False

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> RunProgress:
        """The progress saved in a checkpoint's metadata (empty for a fresh run)."""
        if not meta.get("history"):
            return cls()
        return cls(
            history=tuple(meta["history"]),
            best_round=int(meta["best_round"]),
            best_accuracy=float(meta["best_accuracy"]),
            stale=int(meta["stale"]),
            stopped_early=bool(meta.get("stopped_early", False)),
        )

    def to_meta(self) -> dict[str, Any]:
        """The JSON-ready form saved in a checkpoint."""
        return {
            "history": list(self.history),
            "best_round": self.best_round,
            "best_accuracy": self.best_accuracy,
            "stale": self.stale,
            "stopped_early": self.stopped_early,
        }

    def after(self, row: dict[str, Any], config: FederationConfig) -> tuple[RunProgress, bool]:
        """The progress after a round whose row is ``row``, and whether that round is the new best."""
        improved = row["accuracy"] > self.best_accuracy + config.min_delta
        stale = 0 if improved else self.stale + 1
        return (
            RunProgress(
                history=(*self.history, row),
                best_round=row["round"] if improved else self.best_round,
                best_accuracy=row["accuracy"] if improved else self.best_accuracy,
                stale=stale,
                stopped_early=stale >= config.patience,
            ),
            improved,
        )


@dataclass(frozen=True)
class RoundContext:
    """What every round of a run shares: the grid, the strategy, the evaluator, the observers."""

    grid: Grid
    config: FederationConfig
    strategy: SentinelStrategy
    evaluate: Evaluate
    nodes: Sequence[NodeInfo]
    observers: Sequence[RoundObserver]
    validation: ValidationPhase | None = None
    plasticity: PlasticityPhase | None = None
    distillation: DistillationPhase | None = None
    edge: EdgeDeployment | None = None


def round_row(outcome: RoundOutcome, evaluation: Evaluation, duration: float) -> dict[str, Any]:
    """The loop's own fields of a round's row in the history (observers add theirs)."""
    rejected = [r for r in outcome.results if not r.accepted]
    accepted = outcome.accepted
    residuals = outcome.svd_residual
    return {
        "round": outcome.round,
        "accuracy": evaluation.accuracy,
        "loss": evaluation.loss,
        **evaluation.row_fields(),  # ece, kl_from_base, per-domain accuracy, where measured (when the evaluator gives them)
        "nodes": len(outcome.results),
        "accepted": len(accepted),
        "rejected": len(rejected),
        "consent_violations": sum(1 for r in rejected if r.offending),
        "failures": len(outcome.failures),
        "failure_reasons": list(outcome.failures),
        "train_loss": sum(r.train_loss * r.num_examples for r in accepted) / max(1, sum(r.num_examples for r in accepted)),
        "bytes_up": outcome.bytes_up,
        "bytes_down": outcome.bytes_down,
        "duration_s": round(duration, 3),
        # The largest relative norm dropped when factorising the global ΔW for any rank sent.
        "svd_residual": max(residuals.values()) if residuals else 0.0,
        "svd_residual_by_rank": {str(k): v for k, v in sorted(residuals.items())},
        "excluded": list(outcome.excluded),
        "validator_agreement": outcome.validator_agreement,
        "reputation": dict(outcome.reputation),
        "per_node": [
            {
                "node_id": r.node.key_id,
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
                "direction_cosine": r.direction_cosine,
                "coordination_z": r.coordination_z,
                "coordination_record": r.coordination_record,
                "validators": [
                    {
                        "validator": v.validator,
                        "accept": v.accept,
                        "counted": v.effective,
                        "reason": v.effective_reason or v.reason,
                        "loss_change": v.loss_change,
                        "kl": v.kl,
                        "entropy_shift": v.entropy_shift,
                    }
                    for v in r.verdicts
                ],
            }
            for r in outcome.results
        ],
    }


def _evaluate(ctx: RoundContext, state: GlobalState) -> Evaluation:
    rich = getattr(ctx.evaluate, "evaluation", None)  # CentralEvaluator and central nodes: state -> Evaluation
    if callable(rich):
        return rich(state)
    accuracy, loss = ctx.evaluate(state)
    return Evaluation(accuracy, loss)


def _record(
    ctx: RoundContext, outcome: RoundOutcome, evaluation: Evaluation, state: GlobalState, previous: GlobalState, started: float
) -> dict[str, Any]:
    """The round's row: the loop's fields, then each observer's, in order (observers see a read-only row)."""
    row = round_row(outcome, evaluation, time.monotonic() - started)
    for obs in ctx.observers:
        row.update(obs.on_round(outcome, MappingProxyType(row), state, previous) or {})
    return row


def run_round(ctx: RoundContext, server_round: int, state: GlobalState) -> tuple[GlobalState, dict[str, Any]]:
    """One round as its phases; returns the new global state and the round's row."""
    started = time.monotonic()
    for obs in ctx.observers:
        obs.on_round_start(server_round)
    excluded = ctx.validation.excluded(server_round) if ctx.validation else set()
    taking_part = [n for n in ctx.nodes if n.node_id not in excluded]
    plan = ctx.strategy.configure_train(server_round, state, taking_part)  # 1 configure
    if ctx.plasticity is not None:  # regrown heads' learning-rate boost goes with the round's config
        plan = dataclasses.replace(plan, messages=ctx.plasticity.annotate(plan.messages, server_round))
    replies = list(ctx.grid.send_and_receive(plan.messages, timeout=ctx.config.timeout_s))  # 2 train
    outcome = ctx.strategy.check_replies(plan, replies)  # 3 check
    outcome.excluded = [n.key_id for n in ctx.nodes if n.node_id in excluded]
    outcome = _validate(ctx, server_round, state, outcome)  # 4 validate
    new_state = ctx.strategy.aggregate_train(state, outcome)  # 5 aggregate
    evaluation = _evaluate(ctx, new_state)  # 6 evaluate
    if ctx.plasticity is not None:  # 6b prune, revert or regrow heads; the next round's configure sends the new mask
        new_state, evaluation = ctx.plasticity.decide(
            server_round, outcome, state, new_state, evaluation, lambda s: _evaluate(ctx, s)
        )
    cycle = ctx.plasticity is not None and ctx.plasticity.pruned_in(server_round)
    if ctx.distillation is not None and ctx.distillation.due(server_round, new_state, cycle):  # 6c distil the student
        ctx.distillation.run(ctx.grid, server_round, new_state)
    if ctx.edge is not None:  # 6d edge nodes evaluate the bundle in force (delivered to them when they lack it)
        ctx.edge.run(ctx.grid, server_round)
    row = _record(ctx, outcome, evaluation, new_state, state, started)  # 7 record
    return new_state, row


def _validate(ctx: RoundContext, server_round: int, state: GlobalState, outcome: RoundOutcome) -> RoundOutcome:
    """The validate phase: candidates go to their validators within the round; consensus decides."""
    if ctx.validation is None or not outcome.accepted:
        return outcome
    plan = ctx.validation.configure(server_round, state, outcome)
    if not plan.messages:
        return outcome
    replies = list(ctx.grid.send_and_receive(plan.messages, timeout=ctx.config.timeout_s))
    return ctx.validation.decide(plan, replies, outcome)


def _checkpoint_meta(progress: RunProgress, observers: Sequence[RoundObserver]) -> dict[str, Any]:
    meta = progress.to_meta()
    for obs in observers:
        meta.update(obs.checkpoint_meta() or {})
    return meta


def _with_meta(state: GlobalState, meta: dict[str, Any]) -> GlobalState:
    return GlobalState(state.deltas, state.head, state.head_mask, state.round, meta)


def _save_best(state: GlobalState, checkpoint_dir: Path, export_best: ExportBest | None) -> None:
    save_state(state, checkpoint_dir / BEST_STATE)
    if export_best is not None:
        export_best(state, checkpoint_dir / BEST)


def run_federation(
    grid: Grid,
    config: FederationConfig,
    strategy: SentinelStrategy,
    evaluate: Evaluate,
    initial: GlobalState,
    checkpoint_dir: Path,
    observers: Sequence[RoundObserver] = (),
    export_best: ExportBest | None = None,
    validation: ValidationPhase | None = None,
    plasticity: PlasticityPhase | None = None,
    distillation: DistillationPhase | None = None,
    edge: EdgeDeployment | None = None,
) -> RunResult:
    """Run rounds from ``initial`` (round 0 or a resumed checkpoint) up to ``config.rounds``.

    ``validation`` is the validate phase (None: updates are aggregated once they pass the check phase);
    ``plasticity`` the plasticity phase (None: the head mask never changes);
    ``distillation`` the distillation phase (None: no student is distilled);
    ``edge`` the edge phase (None: edge nodes are not sent the bundle).
    """
    handshake = discover_nodes(grid, config, config.timeout_s)
    nodes = handshake.nodes
    if validation is not None:
        observers = [validation, *observers]
    if plasticity is not None:
        observers = [plasticity, *observers]
    if distillation is not None:  # last: it names the newest bundle once the round's ledger entries are committed
        observers = [*observers, distillation]
    if edge is not None:
        observers = [*observers, edge]
    for obs in observers:
        obs.restore(initial.meta)
        obs.on_nodes(nodes)
    ctx = RoundContext(grid, config, strategy, evaluate, nodes, observers, validation, plasticity, distillation, edge)
    state, progress = initial, RunProgress.from_meta(initial.meta)
    if state.round == 0 and not progress.history:
        first = _evaluate(ctx, state)
        progress = RunProgress(
            ({"round": 0, "accuracy": first.accuracy, "loss": first.loss, **first.row_fields()},), 0, first.accuracy
        )
        state = _with_meta(state, progress.to_meta())
        _save_best(state, checkpoint_dir, export_best)
    for rnd in range(state.round + 1, config.rounds + 1):
        if progress.stopped_early:
            break
        new_state, row = run_round(ctx, rnd, state)
        progress, improved = progress.after(row, config)
        state = _with_meta(new_state, _checkpoint_meta(progress, observers))
        # A round is recorded once or not at all: stage its checkpoint, commit its records, then put it in force.
        stage_state(state, checkpoint_dir)
        for obs in observers:
            obs.commit_round(rnd)
        if improved:
            _save_best(state, checkpoint_dir, export_best)
        promote_state(checkpoint_dir)
        log(INFO, "round %s: accuracy %.4f loss %.4f (%s accepted)", rnd, row["accuracy"], row["loss"], row["accepted"])
    if progress.stopped_early:
        log(INFO, "early stopping: no improvement for %s rounds", config.patience)
    return RunResult(
        state=state,
        history=list(progress.history),
        best_round=progress.best_round,
        best_accuracy=progress.best_accuracy,
        stopped_early=progress.stopped_early,
        nodes=list(nodes),
        refused=dict(handshake.refused),
    )


__all__ = ["RoundContext", "RunProgress", "RunResult", "round_row", "run_federation", "run_round"]
