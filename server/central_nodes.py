"""Central evaluation on central nodes: the evaluate message, the reply check, the pooled metrics.

When the run has nodes with role ``central``, central evaluation can run on
them: each gets the exact global model (``server.distillation.exact_view_record``)
in an ``evaluate`` message and scores it on its *own* held-out data (in
deployment the coordinator's test set never leaves the coordinator). Nothing a
node reports is trusted: metrics are parsed by a strict pydantic model (finite,
in range, integer counts, per-domain counts that add up, an overall accuracy
that is the example-weighted mean of the per-domain ones, a count no larger
than the node's validation split can be). The accepted replies are pooled,
weighted by example count. Without a valid reply the coordinator's own
evaluator answers (``fallback``).

`CentralNodeEvaluator` is both the run's ``evaluate`` (it has ``evaluation``,
which ``server.rounds`` prefers, and the ``(accuracy, loss)`` call) and a round
observer (it learns the nodes from ``on_nodes``), so a run uses it by passing it
as the evaluator and among the observers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import pydantic
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from sentinel.protos import messages as P
from sentinel.server.central import CentralMetrics
from sentinel.server.distillation import exact_view_record
from sentinel.server.observer import RoundObserver
from sentinel.server.outcome import Evaluation, NodeInfo, RoundOutcome
from sentinel.server.replies import MalformedReplyError
from sentinel.server.state import GlobalState

__all__ = [
    "CentralNodeEvaluator",
    "NodeEvaluation",
    "evaluate_messages",
    "parse_evaluation_reply",
    "pool_evaluations",
]

NodeConfigFn = Callable[[NodeInfo, int], ConfigRecord]
"""(node, round) → the node's round config (``SentinelStrategy.node_config``): where its data is, batch size, length."""
MaxExamplesFn = Callable[[NodeInfo], int]
"""node → the most held-out examples it can have (the coordinator knows the partition sizes)."""
Share = Annotated[float, pydantic.Field(ge=0.0, le=1.0, allow_inf_nan=False)]
CONSISTENCY = 1e-6


class NodeEvaluation(pydantic.BaseModel):
    """One central node's evaluation of the global model on its held-out data, as checked."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    metrics: CentralMetrics
    domain_examples: dict[str, pydantic.PositiveInt]
    """Domain → how many of the node's examples are of it (the weights of its per-domain accuracies)."""
    runtime: str = P.RUNTIME_TORCH
    bundle_sha256: str = ""
    """The manifest hash of the edge bundle that answered (``runtime`` onnxruntime); empty for torch."""

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> NodeEvaluation:
        m = self.metrics
        if set(self.domain_examples) != set(m.per_domain):
            raise ValueError("per-domain accuracies and per-domain counts name different domains")
        if sum(self.domain_examples.values()) != m.num_examples:
            raise ValueError(f"per-domain counts add up to {sum(self.domain_examples.values())}, not {m.num_examples}")
        for domain, n in self.domain_examples.items():
            hits = m.per_domain[domain] * n
            if abs(hits - round(hits)) > 1e-6 * max(1, n):
                raise ValueError(f"domain {domain!r}: accuracy {m.per_domain[domain]} is not a share of {n} examples")
        pooled = sum(m.per_domain[d] * n for d, n in self.domain_examples.items()) / m.num_examples
        if abs(pooled - m.accuracy) > CONSISTENCY:
            raise ValueError(f"accuracy {m.accuracy} is not the example-weighted mean of the per-domain accuracies ({pooled})")
        return self


def evaluate_messages(state: GlobalState, nodes: Sequence[NodeInfo], config_of: NodeConfigFn) -> list[Message]:
    """One ``evaluate`` message per central node: the exact global model and the node's round config."""
    central = [n for n in sorted(nodes, key=lambda n: n.partition_id) if n.role == "central"]
    if not central:
        return []
    view = exact_view_record(state)
    server_round = max(1, int(state.round))
    return [
        Message(
            content=RecordDict({P.REC_ARRAYS: view, P.REC_CONFIG: config_of(node, server_round)}),
            message_type=P.MSG_EVALUATE,
            dst_node_id=node.node_id,
        )
        for node in central
    ]


def _prefixed(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in values.items() if k.startswith(prefix)}


def parse_evaluation_reply(reply: Message, max_examples: int | None = None, runtime: str = P.RUNTIME_TORCH) -> NodeEvaluation:
    """The checked evaluation in ``reply``, or :class:`MalformedReplyError` naming what is wrong.

    ``runtime`` is what must have answered: ``torch`` for central evaluation
    (the global model itself), ``onnxruntime`` for an edge node's bundle.
    """
    expected_runtime = runtime
    if reply.has_error():
        raise MalformedReplyError(f"node {reply.metadata.src_node_id} answered with an error: {reply.error.reason}")
    record = reply.content[P.REC_METRICS] if P.REC_METRICS in reply.content else None
    if not isinstance(record, MetricRecord):
        raise MalformedReplyError(f"evaluate reply has no `{P.REC_METRICS}` MetricRecord")
    values = dict(record)
    known = {P.M_EXAMPLES, P.M_ACCURACY, P.M_LOSS, P.M_ECE, P.M_KL_BASE}
    unknown = [k for k in values if k not in known and not k.startswith((P.M_DOMAIN_ACCURACY, P.M_DOMAIN_EXAMPLES))]
    if unknown:
        raise MalformedReplyError(f"evaluate reply: unknown metrics {unknown[:3]}")
    count = values.get(P.M_EXAMPLES)
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    runtime, bundle = "", ""
    if P.REC_EVALUATOR in reply.content and isinstance(reply.content[P.REC_EVALUATOR], ConfigRecord):
        runtime = str(reply.content[P.REC_EVALUATOR].get(P.E_RUNTIME, ""))
        bundle = str(reply.content[P.REC_EVALUATOR].get(P.E_BUNDLE_SHA256, ""))
    try:
        metrics = CentralMetrics(
            num_examples=count,
            accuracy=values.get(P.M_ACCURACY),
            loss=values.get(P.M_LOSS),
            ece=values.get(P.M_ECE),
            per_domain=_prefixed(values, P.M_DOMAIN_ACCURACY),
            kl_from_base=values.get(P.M_KL_BASE),
        )
        counts = {
            d: int(n) if isinstance(n, float) and n.is_integer() else n for d, n in _prefixed(values, P.M_DOMAIN_EXAMPLES).items()
        }
        parsed = NodeEvaluation(metrics=metrics, domain_examples=counts, runtime=runtime or P.RUNTIME_TORCH, bundle_sha256=bundle)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        raise MalformedReplyError(f"evaluate reply: {first['loc']}: {first['msg']}") from e
    if expected_runtime == P.RUNTIME_TORCH and runtime and runtime != P.RUNTIME_TORCH:
        raise MalformedReplyError(f"evaluate reply from runtime {runtime!r}: central evaluation scores the global model itself")
    if expected_runtime != P.RUNTIME_TORCH and runtime != expected_runtime:
        raise MalformedReplyError(f"evaluate reply from runtime {runtime or 'unnamed'!r}, expected {expected_runtime!r}")
    if max_examples is not None and metrics.num_examples > max_examples:
        raise MalformedReplyError(
            f"evaluate reply claims {metrics.num_examples} examples; the node's held-out split has at most {max_examples}"
        )
    return parsed


def pool_evaluations(evaluations: Sequence[NodeEvaluation]) -> CentralMetrics:
    """The example-weighted pool of the nodes' evaluations (per-domain accuracy weighted by each domain's count).

    Accuracy, loss and KL pool exactly (they are means over examples); ECE is
    the example-weighted mean of the nodes' ECEs, which bounds the ECE of the
    pooled examples from above (the triangle inequality in each bin); a node
    sends no per-bin counts, so the exact pooled value is not available.
    """
    if not evaluations:
        raise ValueError("no evaluations to pool")
    total = sum(e.metrics.num_examples for e in evaluations)

    def mean(get: Callable[[CentralMetrics], float]) -> float:
        return sum(get(e.metrics) * e.metrics.num_examples for e in evaluations) / total

    domains: dict[str, tuple[float, int]] = {}
    for e in evaluations:
        for d, n in e.domain_examples.items():
            hits, count = domains.get(d, (0.0, 0))
            domains[d] = (hits + e.metrics.per_domain[d] * n, count + n)
    kls = [e.metrics.kl_from_base for e in evaluations]
    return CentralMetrics(
        num_examples=total,
        accuracy=min(1.0, mean(lambda m: m.accuracy)),
        loss=mean(lambda m: m.loss),
        ece=min(1.0, mean(lambda m: m.ece)),
        per_domain={d: min(1.0, hits / n) for d, (hits, n) in sorted(domains.items())},
        kl_from_base=None if any(k is None for k in kls) else mean(lambda m: m.kl_from_base or 0.0),
    )


Fallback = Callable[[GlobalState], tuple[float, float]]


@dataclass
class CentralNodeEvaluator(RoundObserver):
    """Central evaluation on the run's central nodes, with the coordinator's evaluator as the fallback.

    ``fallback`` answers when the run has no central node or none replied
    validly (a ``CentralEvaluator``; its richer ``evaluation`` is used when it
    has one). ``rejected`` holds, for the last evaluation, each central node
    (key id) whose reply was refused, and why; it goes into the round's row.
    """

    grid: Grid
    config_of: NodeConfigFn
    fallback: Fallback | None = None
    timeout: float | None = None
    max_examples_fn: MaxExamplesFn | None = None
    nodes: list[NodeInfo] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)

    def on_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """Keep the run's nodes (the central ones are asked to evaluate)."""
        self.nodes = list(nodes)

    def _fallback(self, state: GlobalState) -> Evaluation:
        if self.fallback is None:
            raise RuntimeError("no central node gave a valid evaluation and there is no fallback evaluator")
        rich = getattr(self.fallback, "evaluation", None)
        if callable(rich):
            return rich(state)
        accuracy, loss = self.fallback(state)
        return Evaluation(accuracy, loss)

    def evaluation(self, state: GlobalState) -> Evaluation:
        """The pooled evaluation of ``state`` by the central nodes (``source='central-nodes'``), else the fallback's."""
        self.rejected = {}
        messages = evaluate_messages(state, self.nodes, self.config_of)
        if not messages:
            return self._fallback(state)
        by_id = {n.node_id: n for n in self.nodes}
        accepted: list[NodeEvaluation] = []
        answered: set[int] = set()
        for reply in self.grid.send_and_receive(messages, timeout=self.timeout):
            src = reply.metadata.src_node_id
            node = by_id.get(src)
            if node is None or node.role != "central" or src in answered:
                continue  # not asked, or a second answer: ignored
            answered.add(src)
            bound = self.max_examples_fn(node) if self.max_examples_fn else None
            try:
                accepted.append(parse_evaluation_reply(reply, bound))
            except MalformedReplyError as e:
                self.rejected[node.key_id] = str(e)
        for m in messages:
            if m.metadata.dst_node_id not in answered:
                self.rejected[by_id[m.metadata.dst_node_id].key_id] = "no reply within the timeout"
        if not accepted:
            return self._fallback(state)
        return pool_evaluations(accepted).evaluation("central-nodes")

    def __call__(self, state: GlobalState) -> tuple[float, float]:
        """(accuracy, loss): the ``server.rounds`` evaluator contract."""
        e = self.evaluation(state)
        return e.accuracy, e.loss

    def on_round(
        self, outcome: RoundOutcome, row: Mapping[str, Any], state: GlobalState, previous: GlobalState
    ) -> Mapping[str, Any]:
        """The round's row gains the central nodes whose evaluation was refused (when any)."""
        return {"central_evaluation_rejected": dict(self.rejected)} if self.rejected else {}
