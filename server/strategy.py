"""SentinelStrategy: consent-aware, heterogeneous-rank federated LoRA, as steps of a round.

Each step is one method that takes and returns plain values; the round loop
(``server.rounds``) owns every send and receive and calls the steps in order:

- :meth:`SentinelStrategy.configure_train` → a :class:`TrainPlan` (the messages to send and what each node was sent);
- :meth:`SentinelStrategy.check_replies` → a :class:`RoundOutcome` (a verdict per reply: the *check* phase);
- :meth:`SentinelStrategy.aggregate_train` → the new :class:`GlobalState` from the accepted updates.

The math lives in ``server.aggregation``; the wire format in ``protos.messages``
and ``protos.records``. This is not a subclass of Flower's ``Strategy``: the
coordinator's loop, not ``Strategy.start()``, drives the rounds (it adds
phases Flower's loop does not have), so inheriting ``start()`` and the
federated-evaluation steps would only leave methods that are never called.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore import log
from sentinel.governance.enforcement import check_update_consent
from sentinel.ledger.recorder import content_hash_of_arrays, update_submitted_payload
from sentinel.ledger.signing import payload_signature_valid
from sentinel.models.lora import split_adapter_arrays
from sentinel.protos import messages as P
from sentinel.protos.records import from_array_record, global_view_record
from sentinel.server.aggregation import LoraUpdate, exact_aggregate, factorise_all, naive_aggregate, weighted_mean
from sentinel.server.config import FederationConfig
from sentinel.server.outcome import NodeInfo, NodeResult, RoundOutcome
from sentinel.server.state import GlobalState

PermittedFn = Callable[[NodeInfo, int], frozenset[str] | None]
"""(node, round) → the node's permitted set for adapt, or None for 'everything'."""
TouchedFn = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], set[str]]
"""(update arrays, global head) → the components an update changes."""


@dataclass(frozen=True)
class SentView:
    """What the coordinator sent one node this round (what its reply is checked against)."""

    node: NodeInfo
    rank: int
    permitted: frozenset[str] | None
    head: dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainPlan:
    """The configure step's product: one message per node, and what each node was sent."""

    server_round: int
    messages: list[Message]
    sent: dict[int, SentView] = field(default_factory=dict)
    bytes_down: int = 0
    svd_residual: dict[int, float] = field(default_factory=dict)


def node_seed(run_seed: int, server_round: int, partition_id: int) -> int:
    """A node's training seed for a round: stable across processes and resumes."""
    digest = hashlib.sha256(f"{run_seed}:{server_round}:{partition_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SentinelStrategy:
    """Federated LoRA with exact heterogeneous-rank aggregation and consent enforcement.

    Parameters
    ----------
    config : FederationConfig
        The run's configuration (roles' ranks and steps, aggregation mode, data).
    touched_fn : TouchedFn
        Which components an update changes (for the consent check).
    permitted_fn : PermittedFn, optional
        The permitted set of a node in a round; None means no consent restrictions.
    require_signatures : bool
        Reject updates that are not signed by the node's key from the handshake.
    contract_version_fn : Callable[[], int], optional
        Version of the consent contract set in force, sent to nodes with their permitted set.
    """

    def __init__(
        self,
        config: FederationConfig,
        touched_fn: TouchedFn,
        permitted_fn: PermittedFn | None = None,
        require_signatures: bool = True,
        contract_version_fn: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.require_signatures = require_signatures
        self.contract_version_fn = contract_version_fn
        self.touched_fn = touched_fn
        self.permitted_fn = permitted_fn

    # ------------------------------------------------------------ configure

    def _node_config(self, node: NodeInfo, server_round: int, permitted: frozenset[str] | None) -> ConfigRecord:
        profile = self.config.profiles[node.role]
        return ConfigRecord(
            {
                P.C_ROUND: server_round,
                P.C_ROLE: node.role,
                P.C_RANK: profile.lora_rank,
                P.C_STEPS: profile.local_steps,
                P.C_EPOCHS: profile.local_epochs or 0.0,
                P.C_BATCH: profile.batch_size,
                P.C_LR: profile.learning_rate,
                P.C_SEED: node_seed(self.config.seed, server_round, node.partition_id),
                P.C_RUN_SEED: self.config.seed,
                P.C_MODEL: self.config.model,
                P.C_DATASET: self.config.dataset,
                P.C_PARTITION: self.config.partition,
                P.C_NUM_PARTITIONS: self.config.nodes,
                P.C_ALPHA: self.config.dirichlet_alpha,
                P.C_TEST_FRACTION: self.config.test_fraction,
                P.C_VAL_FRACTION: self.config.val_fraction,
                P.C_MAX_LENGTH: self.config.max_length,
                P.C_RESTRICTED: permitted is not None,
                P.C_PERMITTED: sorted(permitted) if permitted else [],
                P.C_CONTRACT_VERSION: self.contract_version_fn() if self.contract_version_fn else 0,
            }
        )

    def configure_train(self, server_round: int, state: GlobalState, nodes: Sequence[NodeInfo]) -> TrainPlan:
        """One message per node: the global ΔW factorised at the node's rank, its permitted set and its config."""
        by_rank: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        residuals: dict[int, float] = {}
        messages: list[Message] = []
        sent: dict[int, SentView] = {}
        bytes_down = 0
        for node in sorted(nodes, key=lambda n: n.partition_id):
            rank = self.config.profiles[node.role].lora_rank
            if rank not in by_rank:
                parts, residuals[rank] = factorise_all(state.deltas, rank)
                by_rank[rank] = {m: (f.a, f.b) for m, f in parts.items()}
            permitted = self.permitted_fn(node, server_round) if self.permitted_fn else None
            sent[node.node_id] = SentView(node, rank, permitted, dict(state.head))
            record = global_view_record(by_rank[rank], state.head, state.head_mask)
            bytes_down += record.count_bytes()
            content = RecordDict({P.REC_ARRAYS: record, P.REC_CONFIG: self._node_config(node, server_round, permitted)})
            messages.append(Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=node.node_id))
        log(INFO, "configure_train: round %s, %s nodes, ranks %s", server_round, len(messages), sorted(by_rank))
        return TrainPlan(server_round, messages, sent, bytes_down, residuals)

    # ------------------------------------------------------------ check

    def check_replies(self, plan: TrainPlan, replies: Iterable[Message]) -> RoundOutcome:
        """A verdict for every reply: authentic, well-formed, within consent. Failed replies are listed, not raised."""
        outcome = RoundOutcome(round=plan.server_round, bytes_down=plan.bytes_down, svd_residual=dict(plan.svd_residual))
        for msg in replies:
            result = self._check_reply(plan, msg, outcome.failures)
            if result is not None:
                outcome.results.append(result)
        outcome.results.sort(key=lambda r: r.node.partition_id)  # fixed order: sums are reproducible
        outcome.bytes_up = sum(r.bytes_up for r in outcome.results)
        return outcome

    def _check_reply(self, plan: TrainPlan, msg: Message, failures: list[str]) -> NodeResult | None:
        """Parse one reply and decide whether it may be aggregated; None for failed or malformed replies."""
        src = msg.metadata.src_node_id
        view = plan.sent.get(src)
        if view is None or msg.has_error():
            reason = msg.error.reason if msg.has_error() else "reply from a node outside the run"
            failures.append(f"{src}: {reason}")
            log(WARNING, "train reply from node %s failed: %s", src, reason)
            return None
        try:
            result = _parse_reply(msg, view.node)
        except (KeyError, TypeError, ValueError) as e:  # a buggy or hostile node must not stop the round
            reason = f"malformed reply: {type(e).__name__}: {e}"
            failures.append(f"{src}: {reason}")
            log(WARNING, "train reply from node %s failed: %s", src, reason)
            return None
        problem = self._authenticity_problem(result, plan.server_round)
        result.authentic = not problem and result.signature is not None
        problem = problem or _shape_problem(result, view.rank)
        if problem:
            result.accepted = False
            result.reason = problem
            return result
        if view.permitted is not None:
            check = check_update_consent(self.touched_fn(result.arrays, view.head), view.permitted)
            if not check.ok:
                result.accepted = False
                result.offending = check.offending
                result.reason = f"consent violation: update changes {len(check.offending)} component(s) outside the permitted set"
        return result

    def _authenticity_problem(self, result: NodeResult, server_round: int) -> str:
        """Why an update cannot be attributed to its node ('' when it can).

        The node signs the ledger's submission payload (node, round, content hash,
        examples); the coordinator recomputes the content hash of what it received.
        """
        if result.signature is None or not result.node.public_key:
            return "unsigned update" if self.require_signatures else ""
        if result.claimed_hash != result.content_hash:
            return "content hash mismatch: the arrays received are not the ones the node signed"
        payload = update_submitted_payload(result.node.node_id, server_round, result.content_hash, result.num_examples)
        if not payload_signature_valid(result.node.public_key, result.signature, payload):
            return "bad signature: the update is not signed by the node's registered key"
        return ""

    # ------------------------------------------------------------ aggregate

    def aggregate_train(self, state: GlobalState, outcome: RoundOutcome) -> GlobalState:
        """The new global state: the accepted updates aggregated onto ``state`` (unchanged when none was accepted)."""
        accepted = outcome.accepted
        if not accepted:
            log(WARNING, "round %s: no update accepted; global model unchanged", outcome.round)
            return GlobalState(state.deltas, state.head, state.head_mask, outcome.round)
        deltas, head = aggregate_updates(accepted, self.config.aggregation, state.deltas, state.head)
        return GlobalState(deltas=deltas, head=head, head_mask=state.head_mask, round=outcome.round)

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├── Aggregation: %s LoRA", self.config.aggregation)
        for role, prof in self.config.profiles.items():
            log(INFO, "\t├── %s: rank %s, %s local steps", role, prof.lora_rank, prof.local_steps)
        log(INFO, "\t└── Consent enforcement: %s", "on" if self.permitted_fn else "off")


def _shape_problem(result: NodeResult, expected: int) -> str:
    """Why the update's rank or scaling is not the one this node was configured with ('' if it is)."""
    if result.rank != expected:
        return f"wrong rank: the node was configured with rank {expected}, reported {result.rank}"
    pairs, _ = split_adapter_arrays(result.arrays)
    for module, (a, b) in pairs.items():
        if a.shape[0] != expected or b.shape[1] != expected:
            return f"wrong rank: module `{module}` has factors of rank {a.shape[0]}/{b.shape[1]}, expected {expected}"
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return f"non-finite values in module `{module}`"
    if not np.isclose(result.scaling, P.LORA_ALPHA_PER_RANK):
        return f"wrong LoRA scaling: reported {result.scaling}, the protocol fixes {P.LORA_ALPHA_PER_RANK}"
    return ""


def _parse_reply(msg: Message, node: NodeInfo) -> NodeResult:
    """The reply's content as a NodeResult (raises KeyError/ValueError/TypeError when malformed)."""
    arrays = from_array_record(msg.content[P.REC_ARRAYS])
    metrics = msg.content[P.REC_METRICS]
    importance = from_array_record(msg.content[P.REC_IMPORTANCE]) if P.REC_IMPORTANCE in msg.content else {}
    result = NodeResult(
        node=node,
        accepted=True,
        num_examples=int(metrics[P.M_EXAMPLES]),
        train_loss=float(metrics[P.M_TRAIN_LOSS]),
        val_accuracy=float(metrics[P.M_VAL_ACC]),
        rank=int(metrics[P.M_RANK]),
        scaling=float(metrics[P.M_SCALING]),
        contract_version=int(metrics.get(P.M_CONTRACT_VERSION, 0)),
        bytes_up=msg.content[P.REC_ARRAYS].count_bytes(),
        arrays=arrays,
        entropy=importance.get(P.KEY_ENTROPY),
        gradient_importance=importance.get(P.KEY_GRAD_IMPORTANCE),
        normalised_entropy=importance.get(P.KEY_ENTROPY_NORMALISED),
    )
    signed = msg.content[P.REC_SIGNATURE] if P.REC_SIGNATURE in msg.content else None
    result.content_hash = content_hash_of_arrays(arrays)
    if signed is not None:
        result.signature = str(signed[P.S_SIGNATURE])
        result.claimed_hash = str(signed[P.S_CONTENT_HASH])
    return result


def aggregate_updates(
    accepted: Sequence[NodeResult],
    mode: str,
    deltas: dict[str, np.ndarray],
    head: dict[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """New dense global state from accepted updates: ΔW += aggregate, head = weighted mean."""
    updates, heads = [], []
    for r in accepted:
        pairs, node_head = split_adapter_arrays(r.arrays)
        updates.append(
            LoraUpdate(
                a={m: p[0] for m, p in pairs.items()},
                b={m: p[1] for m, p in pairs.items()},
                scaling=P.LORA_ALPHA_PER_RANK,  # fixed by the protocol; never the node's own claim
                weight=float(r.num_examples),
            )
        )
        heads.append(node_head)
    agg = exact_aggregate(updates) if mode == "exact" else naive_aggregate(updates)
    missing = set(agg) - set(deltas)
    if missing:
        raise ValueError(f"updates adapt modules the global state does not have: {sorted(missing)[:3]}")
    new_deltas = {m: (d.astype(np.float64) + agg[m]).astype(np.float32) if m in agg else d for m, d in deltas.items()}
    if heads and heads[0]:
        mean = weighted_mean(heads, [u.weight for u in updates])
        new_head = {k: v.astype(np.float32) for k, v in mean.items()}
    else:
        new_head = dict(head)
    return new_deltas, new_head
