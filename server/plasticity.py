"""Federated plasticity in the round loop: heads pruned by consensus, reverted or regrown on central evaluation.

The plasticity phase runs after a round's central evaluation (``server.rounds``).
It reads only what the validators accepted (``plasticity_importance``) and
returns the state the next round's configure sends (its head mask travels to
every node in its view) and the evaluation of that state:

1. **Keep pruned heads' weights.** The global ΔW stays dense; while a head is
   masked its slices of ΔW (q/k/v rows, o columns: ``models.regrowth``) are
   put back to their values before the round, so node updates, which cannot
   train a gated head, leave its kept weights exactly as they were when it was
   pruned. Regrowth is then the mask going back to 1.
2. **Importance.** The accepted reports update the global importance (EMA).
3. **Regrowth.** When central accuracy has fallen more than ``prune_tolerance``
   below its reference (the best accuracy since the cycle before the last
   pruning), the most recently pruned heads that consent lets ``grow`` come
   back, and nodes train them at ``regrow_lr_factor`` × their learning rate for
   ``regrow_rounds`` rounds (``boost-heads`` in their config); no pruning meanwhile.
4. **Pruning** (rounds divisible by ``prune_every``, below ``target_sparsity``):
   heads enough nodes vote for, that consent lets them ``prune``, least important
   first, ``prune_step`` of all heads per cycle. The pruned state is evaluated;
   if accuracy falls more than ``prune_tolerance`` the cycle is reverted.

Every decision goes on the ledger with its evidence (votes, importance,
evaluation before and after) through ``record``, which queues it in the
round's ledger batch, so it is committed exactly once, with the round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from sentinel.models.calibration import predictive_metrics
from sentinel.models.components import ModelLayout
from sentinel.models.global_model import materialise
from sentinel.models.head_mask import apply_head_mask, pruned_of_mask
from sentinel.models.regrowth import kept_head_deltas, restore_head_deltas
from sentinel.protos import messages as P
from sentinel.protos.vocabulary import EntryKind, head_id
from sentinel.server.central import CentralEvaluator, CentralMetrics
from sentinel.server.config import FederationConfig
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import Evaluation, NodeInfo, RoundOutcome
from sentinel.server.plasticity_importance import (
    GlobalImportance,
    Head,
    MayFn,
    NodeReport,
    Votes,
    accepted_reports,
    consensus_votes,
    heads_to_prune,
    heads_to_regrow,
    round_importance,
)
from sentinel.server.state import GlobalState

RecordFn = Callable[[EntryKind, dict[str, Any]], None]
"""(entry kind, payload) → queue a coordinator entry in the round's ledger batch."""
EvaluateFn = Callable[[GlobalState], Evaluation]
META_KEY = "plasticity"


def _allow_all(node: str, operation: str, component: str) -> bool:
    return True


class MaskedEvaluator:
    """Central evaluation that honours the global head mask: masked heads contribute nothing.

    ``CentralEvaluator`` scores the merged ΔW only; a pruned state must be
    scored as nodes compute it, with the mask's gates on. Same metrics and
    forms as the evaluator it wraps (``metrics``, ``evaluation``, ``__call__``);
    a state without masked heads is passed straight through.
    """

    def __init__(self, evaluator: CentralEvaluator) -> None:
        self.evaluator = evaluator

    def metrics(self, state: GlobalState) -> CentralMetrics:
        """The wrapped evaluator's metrics of the global model with ``state.head_mask`` applied."""
        mask = state.head_mask
        ev = self.evaluator
        if mask is None or bool(np.all(mask == 1)):
            return ev.metrics(state)
        model = materialise(ev.base, state.deltas, state.head)
        with apply_head_mask(model, mask):
            logits, labels = ev.logits(model)
        return CentralMetrics.of(predictive_metrics(logits, labels, [e.domain for e in ev.test], ev.base_logits()))

    def evaluation(self, state: GlobalState) -> Evaluation:
        """:meth:`metrics` as the round loop's :class:`Evaluation`."""
        return self.metrics(state).evaluation("coordinator")

    def __call__(self, state: GlobalState) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) with the mask applied."""
        m = self.metrics(state)
        return m.accuracy, m.loss


def mask_aware(evaluator: Any) -> Any:
    """The run's evaluator made to honour the head mask: a ``CentralEvaluator`` is wrapped, others pass through.

    Central nodes get the head mask in their exact view; any other evaluator is
    taken to read ``state.head_mask`` itself.
    """
    return MaskedEvaluator(evaluator) if isinstance(evaluator, CentralEvaluator) else evaluator


def _heads(heads: Sequence[Head]) -> list[str]:
    return [head_id(layer, h) for layer, h in sorted(heads)]


def _evaluation(e: Evaluation) -> dict[str, float]:
    return {"accuracy": float(e.accuracy), "loss": float(e.loss)}


def _with_mask(state: GlobalState, mask: np.ndarray) -> GlobalState:
    kept = None if bool(np.all(mask == 1)) else mask.astype(np.float32)
    return GlobalState(state.deltas, state.head, kept, state.round, state.meta)


class PlasticityPhase(RoundObserver):
    """The plasticity phase of a run and its observer (row fields, checkpoint metadata, report section)."""

    def __init__(
        self, config: FederationConfig, layout: ModelLayout, may: MayFn | None = None, record: RecordFn | None = None
    ) -> None:
        self.config = config
        self.layout = layout
        self.shape = (layout.num_layers, layout.num_heads)
        self.may: MayFn = may or _allow_all
        self.record = record
        self.nodes: list[str] = []
        self._reset()

    def _reset(self) -> None:
        self.importance = GlobalImportance()
        self.cycles: list[dict[str, Any]] = []  # accepted cycles: {"round", "heads": [[layer, head], ...]}
        self.reference: float | None = None
        self.boost: dict[str, Any] = {"heads": [], "until": 0}
        self.events: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    # ------------------------------------------------------------ observer

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """The run's nodes: who may be asked whether a head may grow."""
        self.nodes = [n.key_id for n in nodes]

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's plasticity metadata (``--resume``); a fresh run starts empty."""
        self._reset()
        saved = meta.get(META_KEY) or {}
        self.importance = GlobalImportance.from_meta(saved.get("importance"), self.shape)
        self.cycles = [{"round": int(c["round"]), "heads": [[int(x) for x in h] for h in c["heads"]]} for c in saved.get("cycles", [])]
        self.reference = None if saved.get("reference") is None else float(saved["reference"])
        boost = saved.get("boost") or {}
        self.boost = {"heads": [[int(x) for x in h] for h in boost.get("heads", [])], "until": int(boost.get("until", 0))}
        self.events = list(saved.get("events", []))

    def checkpoint_meta(self) -> dict[str, Any]:
        """Global importance, accepted cycles, reference accuracy, boost window and decisions so far."""
        return {
            META_KEY: {
                "importance": self.importance.to_meta(),
                "cycles": self.cycles,
                "reference": self.reference,
                "boost": self.boost,
                "events": self.events,
            }
        }

    def on_round(self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState) -> dict[str, Any]:
        """The row's ``pruned_heads`` (count), ``sparsity``, ``heads_per_layer`` and this round's ``plasticity`` decision."""
        mask = self._mask(state)
        return {
            "pruned_heads": int((mask == 0).sum()),
            "sparsity": float((mask == 0).mean()),
            "heads_per_layer": [int(x) for x in mask.sum(axis=1)],
            "plasticity": dict(self.last),
        }

    def report(self) -> dict[str, Any]:
        """The report's ``plasticity`` section: settings, decisions, pruned heads and global importance."""
        pruned = sorted({(int(layer), int(h)) for c in self.cycles for layer, h in c["heads"]})
        cfg = self.config
        return {
            META_KEY: {
                "settings": {
                    k: getattr(cfg, k)
                    for k in (
                        "prune_every", "prune_rank_share", "prune_vote_share", "prune_step", "target_sparsity",
                        "prune_tolerance", "regrow_rounds", "regrow_lr_factor", "importance_decay",
                    )
                },
                "pruned": _heads(pruned),
                "sparsity": len(pruned) / float(np.prod(self.shape)),
                "cycles": len(self.cycles),
                "reverted": sum(1 for e in self.events if e["kind"] == EntryKind.PRUNE_REVERTED),
                "regrown": sum(len(e["heads"]) for e in self.events if e["kind"] == EntryKind.HEADS_REGROWN),
                "events": self.events,
                "importance": self.importance.to_meta(),
            }
        }

    def pruned_in(self, server_round: int) -> bool:
        """Whether a pruning cycle was accepted in ``server_round`` (what schedules distillation of the new student)."""
        return bool(self.cycles) and int(self.cycles[-1]["round"]) == server_round

    # ------------------------------------------------------------ configure

    def train_config(self, server_round: int) -> dict[str, Any]:
        """Extra config for this round's train messages: the regrown heads to boost, while their window lasts."""
        if not self.boost["heads"] or server_round > self.boost["until"]:
            return {}
        return {P.C_BOOST_HEADS: _heads([tuple(h) for h in self.boost["heads"]]), P.C_BOOST_FACTOR: float(self.config.regrow_lr_factor)}

    def annotate(self, messages: Sequence[Message], server_round: int) -> list[Message]:
        """The train messages with :meth:`train_config` added to a copy of each config (the originals are unchanged)."""
        extra = self.train_config(server_round)
        if not extra:
            return list(messages)
        out = []
        for msg in messages:
            content = RecordDict(dict(msg.content.items()))
            content[P.REC_CONFIG] = ConfigRecord({**dict(msg.content[P.REC_CONFIG]), **extra})
            out.append(Message(content=content, message_type=msg.metadata.message_type, dst_node_id=msg.metadata.dst_node_id))
        return out

    # ------------------------------------------------------------ decide

    def _mask(self, state: GlobalState) -> np.ndarray:
        return np.ones(self.shape, dtype=np.float32) if state.head_mask is None else np.asarray(state.head_mask, dtype=np.float32)

    def _keep_pruned(self, previous: GlobalState, state: GlobalState, mask: np.ndarray) -> GlobalState:
        """``state`` with the masked heads' ΔW slices as they were in ``previous`` (their kept weights)."""
        pruned = pruned_of_mask(mask)
        if not pruned:
            return state
        deltas = restore_head_deltas(state.deltas, kept_head_deltas(previous.deltas, self.layout, pruned))
        return GlobalState(deltas, state.head, state.head_mask, state.round, state.meta)

    def _emit(self, kind: EntryKind, payload: dict[str, Any]) -> None:
        self.events.append({"kind": str(kind), **payload})
        self.last = {"event": str(kind), "heads": payload["heads"]}
        if self.record is not None:
            self.record(kind, payload)

    def decide(
        self, server_round: int, outcome: RoundOutcome, previous: GlobalState, state: GlobalState, evaluation: Evaluation, evaluate: EvaluateFn
    ) -> tuple[GlobalState, Evaluation]:
        """The plasticity phase of a round (module docstring): the state in force after it, and its evaluation."""
        self.last = {}
        mask = self._mask(state)
        state = self._keep_pruned(previous, state, mask)
        reports = accepted_reports(outcome, self.shape)
        self.importance = self.importance.updated(round_importance(reports), mask, self.config.importance_decay)
        boosting = server_round <= self.boost["until"]
        if not boosting:
            self.boost = {"heads": [], "until": 0}
        if not boosting and self._regrowth_due(mask, evaluation):
            state, evaluation = self._regrow(server_round, state, mask, evaluation, evaluate)
        elif not boosting and server_round % self.config.prune_every == 0 and reports:
            state, evaluation = self._prune_cycle(server_round, state, mask, reports, evaluation, evaluate)
        pruned_now = bool((self._mask(state) == 0).any())
        if pruned_now and self.reference is not None:
            self.reference = max(self.reference, float(evaluation.accuracy))
        elif not pruned_now:
            self.reference = None
        return state, evaluation

    def _regrowth_due(self, mask: np.ndarray, evaluation: Evaluation) -> bool:
        return (
            bool((mask == 0).any())
            and self.reference is not None
            and float(evaluation.accuracy) < self.reference - self.config.prune_tolerance
        )

    def _may_grow(self, head: Head) -> bool:
        return any(self.may(node, "grow", head_id(*head)) for node in self.nodes)

    def _regrow(
        self, server_round: int, state: GlobalState, mask: np.ndarray, before: Evaluation, evaluate: EvaluateFn
    ) -> tuple[GlobalState, Evaluation]:
        """Bring back the most recently pruned heads that may grow (their kept weights are in ΔW)."""
        heads = heads_to_regrow([[tuple(h) for h in c["heads"]] for c in self.cycles], mask, self._may_grow)
        if not heads:
            return state, before
        new_mask = mask.copy()
        for layer, h in heads:
            new_mask[layer, h] = 1.0
        grown = _with_mask(state, new_mask)
        after = evaluate(grown)
        grown_heads = set(heads)
        for cycle in self.cycles:
            cycle["heads"] = [hd for hd in cycle["heads"] if tuple(hd) not in grown_heads]
        self.cycles = [c for c in self.cycles if c["heads"]]
        until = server_round + self.config.regrow_rounds
        self.boost = {"heads": [list(h) for h in heads], "until": until}
        self._emit(
            EntryKind.HEADS_REGROWN,
            {
                "round": server_round,
                "heads": _heads(heads),
                "reason": f"central accuracy {before.accuracy:.4f} fell more than {self.config.prune_tolerance:g} below {self.reference:.4f}",
                "reference_accuracy": float(self.reference or 0.0),
                "evaluation_before": _evaluation(before),
                "evaluation_after": _evaluation(after),
                "lr_factor": float(self.config.regrow_lr_factor),
                "boost_until_round": until,
                "sparsity": float((new_mask == 0).mean()),
            },
        )
        return grown, after

    def _prune_cycle(
        self,
        server_round: int,
        state: GlobalState,
        mask: np.ndarray,
        reports: Sequence[NodeReport],
        before: Evaluation,
        evaluate: EvaluateFn,
    ) -> tuple[GlobalState, Evaluation]:
        """One pruning cycle: consensus candidates, least important first; kept only if evaluation holds."""
        cfg = self.config
        if (mask == 0).sum() >= int(np.floor(cfg.target_sparsity * mask.size + 1e-9)):
            self.last = {"event": "target_reached"}
            return state, before
        votes = consensus_votes(reports, mask, cfg.prune_rank_share, self.may)
        importance = self.importance.values if self.importance.values is not None else np.ones(self.shape)
        heads = heads_to_prune(importance, votes, mask, cfg.prune_vote_share, cfg.prune_step, cfg.target_sparsity)
        if not heads:
            self.last = {"event": "no_candidates"}
            return state, before
        new_mask = mask.copy()
        for layer, h in heads:
            new_mask[layer, h] = 0.0
        pruned = _with_mask(state, new_mask)
        after = evaluate(pruned)
        kept = float(after.accuracy) >= float(before.accuracy) - cfg.prune_tolerance
        payload = {
            "round": server_round,
            "heads": _heads(heads),
            "evidence": self._evidence(heads, votes, importance),
            "voters": sorted(r.node for r in reports),
            "vote_share": float(cfg.prune_vote_share),
            "evaluation_before": _evaluation(before),
            "evaluation_after": _evaluation(after),
            "tolerance": float(cfg.prune_tolerance),
            "sparsity": float((new_mask == 0).mean() if kept else (mask == 0).mean()),
        }
        if not kept:
            self._emit(EntryKind.PRUNE_REVERTED, payload)
            return state, before
        self.cycles.append({"round": server_round, "heads": [list(h) for h in sorted(heads)]})
        self.reference = max(self.reference if self.reference is not None else float("-inf"), float(before.accuracy))
        self._emit(EntryKind.HEADS_PRUNED, payload)
        return pruned, after

    @staticmethod
    def _evidence(heads: Sequence[Head], votes: Votes, importance: np.ndarray) -> dict[str, dict[str, float | int]]:
        return {
            head_id(layer, h): {
                "votes": int(votes.votes[layer, h]),
                "electorate": int(votes.electorate[layer, h]),
                "importance": float(importance[layer, h]),
            }
            for layer, h in sorted(heads)
        }


__all__ = ["MaskedEvaluator", "PlasticityPhase", "RecordFn", "mask_aware"]
