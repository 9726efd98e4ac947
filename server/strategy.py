"""SentinelStrategy: consent-aware, heterogeneous-rank federated LoRA as a Flower Strategy.

Each step is one method, records in and records out; the math lives in
``server.aggregation`` and only the round loop (``server.rounds``) sends or
receives. The global state travels between steps as an ArrayRecord of dense
ΔW (``delta/<module>``) and head parameters (``head/<param>``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from sentinel.client import protocol as P
from sentinel.client.protocol import Role
from sentinel.client.records import from_array_record, global_view_record, to_array_record
from sentinel.client.training import split_adapter_arrays
from sentinel.ledger.recorder import content_hash_of_arrays, update_submitted_payload
from sentinel.ledger.signing import payload_signature_valid
from sentinel.server.aggregation import LoraUpdate, exact_aggregate, factorise_all, naive_aggregate, weighted_mean
from sentinel.server.config import FederationConfig
from sentinel.server.global_state import flatten_state, unflatten_state


@dataclass(frozen=True)
class NodeInfo:
    """A node taking part in the run: Flower node id, data partition, role and key."""

    node_id: int
    partition_id: int
    role: Role
    public_key: str | None = None


@dataclass
class NodeResult:
    """What happened to one node's update in a round."""

    node: NodeInfo
    accepted: bool
    reason: str = ""
    num_examples: int = 0
    train_loss: float = float("nan")
    val_accuracy: float = float("nan")
    rank: int = 0
    scaling: float = 1.0
    bytes_up: int = 0
    content_hash: str = ""
    signature: str | None = None
    claimed_hash: str | None = None
    """The content hash the node signed (compared with ``content_hash``)."""
    authentic: bool = False
    """The update is signed by the node's registered key over what was received."""
    contract_version: int = 0
    offending: list[str] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    entropy: np.ndarray | None = None
    gradient_importance: np.ndarray | None = None
    normalised_entropy: np.ndarray | None = None


@dataclass
class RoundOutcome:
    """Everything the round loop reports about one round of training."""

    round: int
    bytes_down: int = 0
    bytes_up: int = 0
    svd_residual: dict[int, float] = field(default_factory=dict)
    results: list[NodeResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[NodeResult]:
        """Updates that went into the aggregate."""
        return [r for r in self.results if r.accepted]


PermittedFn = Callable[[NodeInfo, int], frozenset[str] | None]
"""(node, round) → the node's permitted set for adapt, or None for 'everything'."""
TouchedFn = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], set[str]]
"""(update arrays, global head) → the components an update changes."""


def state_to_record(deltas: dict[str, np.ndarray], head: dict[str, np.ndarray]) -> ArrayRecord:
    """The dense global state as an ArrayRecord."""
    return to_array_record(flatten_state(deltas, head))


def record_to_state(record: ArrayRecord) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inverse of :func:`state_to_record`."""
    return unflatten_state(from_array_record(record))


def node_seed(run_seed: int, server_round: int, partition_id: int) -> int:
    """A node's training seed for a round: stable across processes and resumes."""
    digest = hashlib.sha256(f"{run_seed}:{server_round}:{partition_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class SentinelStrategy(Strategy):
    """Federated LoRA with exact heterogeneous-rank aggregation and consent enforcement.

    Parameters
    ----------
    config : FederationConfig
        The run's configuration (roles' ranks and steps, aggregation mode, data).
    touched_fn : TouchedFn
        Which components an update changes (for the consent check).
    permitted_fn : PermittedFn, optional
        The permitted set of a node in a round; None means no consent restrictions.
    head_mask : np.ndarray, optional
        Global layers × heads mask sent to every node.
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
        head_mask: np.ndarray | None = None,
        require_signatures: bool = True,
        contract_version_fn: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.require_signatures = require_signatures
        self.contract_version_fn = contract_version_fn
        self.touched_fn = touched_fn
        self.permitted_fn = permitted_fn
        self.head_mask = head_mask
        self.nodes: dict[int, NodeInfo] = {}
        self._sent: dict[int, tuple[frozenset[str] | None, dict[str, np.ndarray]]] = {}
        self._state: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        self.outcome: RoundOutcome | None = None

    def set_nodes(self, nodes: Sequence[NodeInfo]) -> None:
        """The nodes of this run (from the profile handshake)."""
        self.nodes = {n.node_id: n for n in nodes}

    def _node_config(self, base: ConfigRecord, node: NodeInfo, server_round: int, permitted: frozenset[str] | None) -> ConfigRecord:
        profile = self.config.profiles[node.role]
        cfg = ConfigRecord(dict(base))  # never mutate the caller's record
        cfg.update(
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
        return cfg

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """One message per node: the global ΔW factorised at the node's rank, and its config."""
        deltas, head = record_to_state(arrays)
        self._state = (deltas, head)
        self.outcome = RoundOutcome(round=server_round)
        by_rank: dict[int, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        messages = []
        for node in sorted(self.nodes.values(), key=lambda n: n.partition_id):
            rank = self.config.profiles[node.role].lora_rank
            if rank not in by_rank:
                parts, residual = factorise_all(deltas, rank)
                by_rank[rank] = {m: (f.a, f.b) for m, f in parts.items()}
                self.outcome.svd_residual[rank] = residual
            permitted = self.permitted_fn(node, server_round) if self.permitted_fn else None
            self._sent[node.node_id] = (permitted, head)
            record = global_view_record(by_rank[rank], head, self.head_mask)
            self.outcome.bytes_down += record.count_bytes()
            content = RecordDict({P.REC_ARRAYS: record, P.REC_CONFIG: self._node_config(config, node, server_round, permitted)})
            messages.append(Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=node.node_id))
        log(INFO, "configure_train: round %s, %s nodes, ranks %s", server_round, len(messages), sorted(by_rank))
        return messages

    def _fail(self, node_id: int, reason: str) -> None:
        assert self.outcome is not None
        self.outcome.failures.append(f"{node_id}: {reason}")
        log(WARNING, "train reply from node %s failed: %s", node_id, reason)

    def _check_reply(self, msg: Message) -> NodeResult | None:
        """Parse one reply and decide whether it may be aggregated; None for failed or malformed replies."""
        node = self.nodes.get(msg.metadata.src_node_id)
        if node is None or msg.has_error():
            self._fail(msg.metadata.src_node_id, msg.error.reason if msg.has_error() else "reply from a node outside the run")
            return None
        try:
            result = self._parse_reply(msg, node)
        except (KeyError, TypeError, ValueError) as e:  # a buggy or hostile node must not stop the round
            self._fail(node.node_id, f"malformed reply: {type(e).__name__}: {e}")
            return None
        problem = self._authenticity_problem(result)
        result.authentic = not problem and result.signature is not None
        problem = problem or self._shape_problem(result)
        if problem:
            result.accepted = False
            result.reason = problem
            return result
        permitted, head_sent = self._sent.get(node.node_id, (None, {}))
        if permitted is not None:
            offending = sorted(self.touched_fn(result.arrays, head_sent) - permitted)
            if offending:
                result.accepted = False
                result.offending = offending
                result.reason = f"consent violation: update changes {len(offending)} component(s) outside the permitted set"
        return result

    def _shape_problem(self, result: NodeResult) -> str:
        """Why the update's rank or scaling is not the one this node was configured with ('' if it is)."""
        expected = self.config.profiles[result.node.role].lora_rank
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

    def _parse_reply(self, msg: Message, node: NodeInfo) -> NodeResult:
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

    def _authenticity_problem(self, result: NodeResult) -> str:
        """Why an update cannot be attributed to its node ('' when it can).

        The node signs the ledger's submission payload (node, round, content hash,
        examples); the coordinator recomputes the content hash of what it received.
        """
        if result.signature is None or not result.node.public_key:
            return "unsigned update" if self.require_signatures else ""
        if result.claimed_hash != result.content_hash:
            return "content hash mismatch: the arrays received are not the ones the node signed"
        assert self.outcome is not None
        payload = update_submitted_payload(result.node.node_id, self.outcome.round, result.content_hash, result.num_examples)
        if not payload_signature_valid(result.node.public_key, result.signature, payload):
            return "bad signature: the update is not signed by the node's registered key"
        return ""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each update's consent, then aggregate the accepted ones into a new global state."""
        assert self.outcome is not None and self._state is not None
        results = [r for r in (self._check_reply(m) for m in replies) if r is not None]
        results.sort(key=lambda r: r.node.partition_id)  # fixed order: sums are reproducible
        self.outcome.results = results
        self.outcome.bytes_up = sum(r.bytes_up for r in results)
        accepted = self.outcome.accepted
        if not accepted:
            log(WARNING, "round %s: no update accepted; global model unchanged", server_round)
            return None, None
        deltas, head = self._state
        new_deltas, new_head = aggregate_updates(accepted, self.config.aggregation, deltas, head)
        metrics = MetricRecord(
            {
                P.M_TRAIN_LOSS: float(np.average([r.train_loss for r in accepted], weights=[r.num_examples for r in accepted])),
                P.M_VAL_ACC: float(np.average([r.val_accuracy for r in accepted], weights=[r.num_examples for r in accepted])),
                P.M_EXAMPLES: sum(r.num_examples for r in accepted),
            }
        )
        return state_to_record(new_deltas, new_head), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """No federated evaluation: the coordinator evaluates centrally on its held-out set."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of nodes' evaluation metrics (when nodes evaluate)."""
        contents = [m.content[P.REC_METRICS] for m in replies if not m.has_error()]
        if not contents:
            return None
        weights = [float(c[P.M_EXAMPLES]) for c in contents]
        return MetricRecord(
            {k: float(np.average([float(c[k]) for c in contents], weights=weights)) for k in (P.M_ACCURACY, P.M_LOSS)}
        )

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├── Aggregation: %s LoRA", self.config.aggregation)
        for role, prof in self.config.profiles.items():
            log(INFO, "\t├── %s: rank %s, %s local steps", role, prof.lora_rank, prof.local_steps)
        log(INFO, "\t└── Consent enforcement: %s", "on" if self.permitted_fn else "off")


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
