"""Edge deployment in the round loop: deliver the newest edge bundle to edge nodes and have them evaluate it.

Once a distillation has exported an edge bundle (``server.distill_phase``),
every round ends with this phase (``server.rounds``, phase 6d): each edge node
gets an ``evaluate.edge`` message naming the bundle by its manifest hash (the
hash on the ledger's ``student_distilled`` entry). The bundle's files travel
with the message (``protos.records.bundle_record``) when the coordinator does
not know the node to hold it: the first time, after a new distillation, after
a node failed to answer from its copy, and after ``--resume`` (what nodes hold
is not checkpointed, so a resumed run sends each bundle once more). A node
installs the files only after verifying them (``client.edge_install``) and
answers from the bundle through onnxruntime on its own validation data.

Nothing an edge node reports is trusted: the reply is parsed like a central
node's evaluation (``server.central_nodes.parse_evaluation_reply``), must come
from onnxruntime, must name the bundle that was asked about, and may claim no
more examples than the node's validation split holds. A node that fails
without having been sent the files is sent them at once, within the phase.

The round's row gains ``edge``: the bundle (round, hash), each edge node's
accuracy, loss and ECE from the bundle, the pooled figures, the nodes the
bundle was delivered to and the bytes sent, and the nodes whose answer was
refused, with why. The run report gains the same per round under ``edge``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from sentinel.models.edge_bundle import MANIFEST_FILE, load_bundle
from sentinel.protos import messages as P
from sentinel.protos.records import bundle_record
from sentinel.server.central_nodes import NodeEvaluation, parse_evaluation_reply, pool_evaluations
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import NodeInfo, RoundOutcome
from sentinel.server.replies import MalformedReplyError
from sentinel.server.state import GlobalState

__all__ = ["BundleRef", "EdgeDeployment"]

NodeConfigFn = Callable[[NodeInfo, int], ConfigRecord]
MaxExamplesFn = Callable[[NodeInfo], int]


@dataclass(frozen=True)
class BundleRef:
    """The edge bundle in force: the round that distilled it, its directory and its manifest hash."""

    round: int
    directory: Path
    manifest_sha256: str


BundleFn = Callable[[], "BundleRef | None"]
"""() → the newest exported bundle (``DistillationPhase.current_bundle``), or None before the first."""


class EdgeDeployment(RoundObserver):
    """The edge phase of a run and its observer (row field ``edge``, report section ``edge``)."""

    def __init__(
        self,
        bundle_fn: BundleFn,
        config_of: NodeConfigFn,
        *,
        max_examples_fn: MaxExamplesFn | None = None,
        timeout: float | None = None,
    ) -> None:
        self.bundle_fn = bundle_fn
        self.config_of = config_of
        self.max_examples_fn = max_examples_fn
        self.timeout = timeout
        self.nodes: list[NodeInfo] = []
        self.holds: dict[str, str] = {}
        """Edge node key id → manifest hash of the bundle it last answered from (not checkpointed)."""
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------ observer

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """The run's nodes (the edge ones get the bundle)."""
        self.nodes = sorted((n for n in nodes if n.role == "edge"), key=lambda n: n.partition_id)

    def on_round_start(self, server_round: int) -> None:
        """A round starts with no edge evaluation of its own yet."""
        self.last = {}

    def restore(self, meta: Mapping[str, Any]) -> None:
        """Continue the report's edge history from a checkpoint (``--resume``)."""
        self.history = [dict(h) for h in (meta.get("edge") or [])]
        self.holds = {}
        self.last = {}

    def checkpoint_meta(self) -> dict[str, Any]:
        """The edge evaluations so far, committed with the round."""
        return {"edge": self.history + ([self.last] if self.last else [])}

    def on_round(
        self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState
    ) -> dict[str, Any]:
        """The row's ``edge`` field when edge nodes evaluated a bundle this round."""
        return {"edge": dict(self.last)} if self.last else {}

    def commit_round(self, server_round: int) -> None:
        """The round's edge evaluation joins the history once the round is committed."""
        if self.last.get("round") == server_round:
            self.history.append(dict(self.last))

    def report(self) -> dict[str, Any]:
        """The report's ``edge`` section: every round's edge evaluation and the latest."""
        return {"edge": {"rounds": self.history, "latest": self.history[-1] if self.history else None}}

    # ------------------------------------------------------------ run

    def run(self, grid: Grid, server_round: int) -> dict[str, Any]:
        """Deliver the bundle in force where needed and collect the edge nodes' evaluations of it; returns the row field."""
        bundle = self.bundle_fn()
        if bundle is None or not self.nodes:
            return {}
        paths = [MANIFEST_FILE, *(f.path for f in load_bundle(bundle.directory).manifest.files)]  # verified before sending
        by_id = {n.node_id: n for n in self.nodes}
        evaluations: dict[str, NodeEvaluation] = {}
        rejected: dict[str, str] = {}
        delivered: list[str] = []
        sent_bytes = 0
        pending = [n for n in self.nodes]
        for attempt in range(2):  # a node that could not answer from its copy is sent the files once, at once
            messages: list[Message] = []
            for node in pending:
                with_files = attempt > 0 or self.holds.get(node.key_id) != bundle.manifest_sha256
                messages.append(self._message(node, server_round, bundle, paths if with_files else None))
                if with_files:
                    delivered.append(node.key_id)
                    sent_bytes += sum((bundle.directory / p).stat().st_size for p in paths)
            failed: list[NodeInfo] = []
            answered: set[int] = set()
            for reply in grid.send_and_receive(messages, timeout=self.timeout):
                node = by_id.get(reply.metadata.src_node_id)
                if node is None or node.node_id in answered:
                    continue
                answered.add(node.node_id)
                try:
                    evaluations[node.key_id] = self._parse(reply, node, bundle)
                    self.holds[node.key_id] = bundle.manifest_sha256
                    rejected.pop(node.key_id, None)
                except MalformedReplyError as e:
                    rejected[node.key_id] = str(e)
                    self.holds.pop(node.key_id, None)
                    if attempt == 0 and node.key_id not in delivered:
                        failed.append(node)
            for node in pending:
                if node.node_id not in answered:
                    rejected[node.key_id] = "no reply within the timeout"
                    self.holds.pop(node.key_id, None)
            pending = failed
            if not pending:
                break
        self.last = self._row(server_round, bundle, evaluations, rejected, delivered, sent_bytes)
        return dict(self.last)

    def _message(self, node: NodeInfo, server_round: int, bundle: BundleRef, paths: list[str] | None) -> Message:
        config = self.config_of(node, server_round)
        config[P.C_BUNDLE_SHA256] = bundle.manifest_sha256
        content = RecordDict({P.REC_CONFIG: config})
        if paths is not None:
            content[P.REC_BUNDLE] = bundle_record(bundle.directory, paths)
        return Message(content=content, message_type=P.MSG_EDGE_EVALUATE, dst_node_id=node.node_id)

    def _parse(self, reply: Message, node: NodeInfo, bundle: BundleRef) -> NodeEvaluation:
        bound = self.max_examples_fn(node) if self.max_examples_fn is not None else None
        parsed = parse_evaluation_reply(reply, bound, runtime=P.RUNTIME_ONNX)
        if parsed.bundle_sha256 != bundle.manifest_sha256:
            raise MalformedReplyError(
                f"edge reply is from bundle {parsed.bundle_sha256[:12] or 'unnamed'}, the coordinator asked about {bundle.manifest_sha256[:12]}"
            )
        return parsed

    @staticmethod
    def _row(
        server_round: int,
        bundle: BundleRef,
        evaluations: Mapping[str, NodeEvaluation],
        rejected: Mapping[str, str],
        delivered: Sequence[str],
        sent_bytes: int,
    ) -> dict[str, Any]:
        nodes = {
            key: {
                "accuracy": e.metrics.accuracy,
                "loss": e.metrics.loss,
                "ece": e.metrics.ece,
                "examples": e.metrics.num_examples,
            }
            for key, e in sorted(evaluations.items())
        }
        pooled = pool_evaluations(list(evaluations.values())) if evaluations else None
        return {
            "round": server_round,
            "bundle_round": bundle.round,
            "manifest_sha256": bundle.manifest_sha256,
            "nodes": nodes,
            "accuracy": None if pooled is None else pooled.accuracy,
            "loss": None if pooled is None else pooled.loss,
            "ece": None if pooled is None else pooled.ece,
            "delivered": sorted(set(delivered)),
            "bytes_down": int(sent_bytes),
            "rejected": dict(sorted(rejected.items())),
        }
