"""Distillation in the round loop: central nodes distil the pruned student; the coordinator exports the edge bundle.

The distillation phase runs after the plasticity decision (``server.rounds``,
phase 6c), on the state the round puts in force. It is **due** when

* a pruning cycle was accepted this round (the student of the new mask), or
* the student is smaller than its teacher (heads pruned, or FFN layers that
  may be narrowed) and the round is divisible by ``distill_every`` (when > 0)
  or is the run's last (``rounds``): the student follows the adapter as it
  keeps training, and the run ends with a student of its final model (a run
  stopped early by patience ends without that last one),

and the run has ``central`` nodes. They get ``train.distill`` through the
round's Grid (``server.distillation.distill_on_central_nodes``); every reply is
checked against what was sent; the student closest to its teacher is exported
as the edge bundle into ``<out>/edge-bundle/round-N/`` (one directory per
distillation, written atomically; a round redone after a crash replaces its
own directory) and ``<out>/edge-bundle/latest.json`` names the newest
committed one. The decision goes on the ledger in the round's batch
(``student_distilled`` with its evidence, or ``student_rejected`` with why),
so it is committed exactly once, with the round.

FFN narrowing (``distill_ffn_keep < 1``) applies only to layers whose
``layer.{i}.ffn`` contract lets every central node ``prune`` (the default
policy allows it nowhere: heads only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from sentinel.models.components import list_components
from sentinel.models.edge_bundle import BundleRunner, load_bundle
from sentinel.models.fileio import write_text_atomically
from sentinel.models.head_mask import pruned_of_mask
from sentinel.models.loading import LoadedModel
from sentinel.protos.vocabulary import EMBEDDINGS, EntryKind, ffn_id, head_id
from sentinel.server.config import FederationConfig
from sentinel.server.distillation import DistillationRound, DistillSettings, distill_on_central_nodes
from sentinel.server.edge_deployment import BundleRef
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.state import GlobalState

__all__ = ["BUNDLE_DIR", "LATEST_FILE", "DistillationPhase", "bundle_dir_of"]

BUNDLE_DIR = "edge-bundle"
LATEST_FILE = "latest.json"
META_KEY = "students"

RecordFn = Callable[[EntryKind, dict[str, Any]], None]
"""(entry kind, payload) → queue a coordinator entry in the round's ledger batch."""
NodeConfigFn = Callable[[NodeInfo, int], ConfigRecord]
MayFn = Callable[[str, str, str], bool]
"""(node key id, operation, component id) → whether consent allows it."""


def bundle_dir_of(out_dir: Path, server_round: int) -> Path:
    """Where the edge bundle distilled in ``server_round`` is written: ``<out>/edge-bundle/round-N``."""
    return Path(out_dir) / BUNDLE_DIR / f"round-{server_round}"


def settings_of(config: FederationConfig) -> DistillSettings:
    """The distillation settings a run's config gives."""
    return DistillSettings(
        steps=config.distill_steps,
        learning_rate=config.distill_learning_rate,
        temperature=config.distill_temperature,
        ffn_keep=config.distill_ffn_keep,
    )


class DistillationPhase(RoundObserver):
    """The distillation phase of a run and its observer (row field ``distilled``, checkpoint metadata, report section)."""

    def __init__(
        self,
        config: FederationConfig,
        base: LoadedModel,
        out_dir: Path,
        config_of: NodeConfigFn,
        num_layers: int,
        *,
        may: MayFn | None = None,
        contracts: Callable[[], str] | None = None,
        record: RecordFn | None = None,
        require_signature: bool = True,
    ) -> None:
        self.config = config
        self.base = base
        self.out_dir = Path(out_dir)
        self.config_of = config_of
        self.num_layers = num_layers
        self.may = may
        self.contracts = contracts
        self.record = record
        self.require_signature = require_signature
        self.settings = settings_of(config)
        self._components: list[str] | None = None
        self.nodes: list[NodeInfo] = []
        self.students: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    # ------------------------------------------------------------ observer

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """The run's nodes (the central ones distil)."""
        self.nodes = list(nodes)

    def on_round_start(self, server_round: int) -> None:
        """A round starts with no distillation of its own yet."""
        self.last = {}

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's list of students (``--resume``); a fresh run starts empty."""
        self.students = [dict(s) for s in (meta.get(META_KEY) or [])]
        self.last = {}

    def checkpoint_meta(self) -> dict[str, Any]:
        """The students distilled so far (committed with the round, like the ledger entries)."""
        return {META_KEY: self.students}

    def on_round(
        self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState
    ) -> dict[str, Any]:
        """The row's ``distilled`` field when this round distilled (the student's figures, bundle, or why none)."""
        return {"distilled": dict(self.last)} if self.last else {}

    def commit_round(self, server_round: int) -> None:
        """After the round committed: ``edge-bundle/latest.json`` names the newest student's bundle."""
        if self.last.get("bundle") and self.last.get("round") == server_round:
            keys = ("round", "bundle", "manifest_sha256", "node", "student_accuracy", "kl_after")
            write_text_atomically(self.out_dir / BUNDLE_DIR / LATEST_FILE, json.dumps({k: self.last[k] for k in keys}, indent=2))

    def report(self) -> dict[str, Any]:
        """The report's ``students`` section: settings, every distilled student, the latest one."""
        exported = [s for s in self.students if s.get("bundle")]
        return {
            META_KEY: {
                "settings": {
                    **self.settings.model_dump(),
                    "distill_every": self.config.distill_every,
                    "precision": self.config.distill_precision,
                },
                "distilled": self.students,
                "latest": exported[-1] if exported else None,
            }
        }

    def current_bundle(self) -> BundleRef | None:
        """The newest exported edge bundle (this round's when it distilled one), or None before the first."""
        exported = [s for s in self.students if s.get("bundle")]
        if not exported:
            return None
        latest = exported[-1]
        directory = Path(latest["bundle"])
        directory = directory if directory.is_absolute() else self.out_dir / directory
        return BundleRef(round=int(latest["round"]), directory=directory, manifest_sha256=str(latest["manifest_sha256"]))

    # ------------------------------------------------------------ decide

    def due(self, server_round: int, state: GlobalState, pruned_this_round: bool) -> bool:
        """Whether this round distils (module docstring): a pruning cycle now, or a periodic or last round of a smaller student."""
        if not any(n.role == "central" for n in self.nodes):
            return False
        heads_pruned = state.head_mask is not None and bool((np.asarray(state.head_mask) == 0).any())
        periodic = self.config.distill_every > 0 and server_round % self.config.distill_every == 0
        periodic = periodic or server_round == self.config.rounds
        return pruned_this_round or (periodic and (heads_pruned or bool(self.ffn_layers())))

    def ffn_layers(self) -> list[int]:
        """Layers whose FFN the student may narrow: every central node may ``prune`` ``layer.{i}.ffn`` (all without consent)."""
        if self.settings.ffn_keep >= 1.0:
            return []
        central = [n.key_id for n in self.nodes if n.role == "central"]
        layers = range(self.num_layers)
        if self.may is None:
            return list(layers)
        return [i for i in layers if central and all(self.may(node, "prune", ffn_id(i)) for node in central)]

    @property
    def components(self) -> list[str]:
        """The model's consent components (listed once, when first asked)."""
        if self._components is None:
            self._components = list_components(self.base.model)
        return self._components

    def frozen_of(self, node: NodeInfo) -> list[str]:
        """The components ``node`` may not ``distill``: the student keeps the teacher's weights there (``models.distill_consent``)."""
        if self.may is None:
            return []
        return [c for c in self.components if not self.may(node.key_id, "distill", c)]

    def distillers(self) -> list[NodeInfo]:
        """The nodes asked to distil: central nodes that may ``distill`` at least one component a student trains."""
        if self.may is None:
            return [n for n in self.nodes if n.role == "central"]
        trainable = set(self.components) - {EMBEDDINGS}  # the student's input embeddings are always the teacher's
        return [n for n in self.nodes if n.role == "central" and not trainable <= set(self.frozen_of(n))]

    def run(self, grid: Grid, server_round: int, state: GlobalState) -> DistillationRound:
        """Distil on the central nodes now, export the chosen student, and queue the ledger entry."""
        result = distill_on_central_nodes(
            grid,
            server_round,
            state,
            self.distillers(),
            lambda node: self.config_of(node, server_round),
            self.base,
            bundle_dir_of(self.out_dir, server_round),
            self.settings,
            ffn_layers=self.ffn_layers(),
            timeout=self.config.timeout_s,
            contracts=self.contracts() if self.contracts is not None else None,
            max_length=self.config.max_length,
            require_signature=self.require_signature,
            precision=self.config.distill_precision,
            frozen_of=self.frozen_of,
        )
        distillers = {n.node_id for n in self.distillers()}
        for node in self.nodes:
            if node.role == "central" and node.node_id not in distillers:
                result.rejected[node.key_id] = "its consent contracts let it distill no component a student trains"
        mask = None if state.head_mask is None else np.asarray(state.head_mask)
        pruned = (
            [] if mask is None else [head_id(layer, h) for layer, heads in sorted(pruned_of_mask(mask).items()) for h in heads]
        )
        if result.chosen is None or result.exported is None:
            payload: dict[str, Any] = {
                "round": server_round,
                "rejected": dict(sorted(result.rejected.items())),
                "pruned_heads": pruned,
            }
            self.last = dict(payload)
            self.students.append({**payload, "bundle": None})
            if self.record is not None:
                self.record(EntryKind.STUDENT_REJECTED, payload)
            return result
        m, spec, exported = result.chosen.metrics, result.chosen.spec, result.exported
        manifest = load_bundle(exported.path).manifest
        payload = {
            "round": server_round,
            "node": exported.node,
            "kl_before": float(m.kl_before),
            "kl_after": float(m.kl_after),
            "student_accuracy": float(m.student_accuracy),
            "teacher_accuracy": float(m.teacher_accuracy),
            "student_loss": float(m.student_loss),
            "steps": int(m.steps),
            "reverted": bool(m.reverted),
            "manifest_sha256": exported.manifest_sha256,
            "bundle": exported.path.relative_to(self.out_dir).as_posix()
            if exported.path.is_relative_to(self.out_dir)
            else str(exported.path),
            "precision": self.config.distill_precision,
            "pruned_heads": pruned,
            "ffn_widths": {str(layer): int(width) for layer, width in sorted(spec.ffn_widths.items())},
            "student_parameters": int(exported.student_parameters),
            "teacher_parameters": int(exported.teacher_parameters),
            "model_bytes": int(manifest.model_bytes),
            "total_bytes": int(manifest.total_bytes),
            "rejected": dict(sorted(result.rejected.items())),
        }
        if self.record is not None:
            self.record(EntryKind.STUDENT_DISTILLED, payload)
        measured = {**payload, "latency_ms": self._latency_ms(exported.path)}  # a measurement, not ledger evidence
        self.last = dict(measured)
        self.students.append(dict(measured))
        return result

    def _latency_ms(self, bundle: Path) -> float:
        """Median onnxruntime latency of the bundle on the coordinator: batch 1 × ``max_length`` tokens, one thread."""
        from sentinel.models.cli_edge import measure_latency

        runner = BundleRunner(bundle, intra_op_threads=1)
        return round(float(measure_latency(runner, 1, self.config.max_length, runs=10, warmup=2).p50_ms), 4)
