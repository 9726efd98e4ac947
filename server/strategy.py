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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.supercore import log
from sentinel.governance.enforcement import check_update_consent
from sentinel.ledger.recorder import update_submitted_payload
from sentinel.ledger.signing import payload_signature_valid
from sentinel.models.continued import change_arrays, split_view_at_rank
from sentinel.models.lora import PEFT_PREFIX, split_adapter_arrays
from sentinel.protos import messages as P
from sentinel.protos.vocabulary import CLASSIFIER
from sentinel.server.aggregation import LoraUpdate, exact_aggregate, naive_aggregate, weighted_mean
from sentinel.server.config import FederationConfig
from sentinel.server.direction_memory import DirectionMemory
from sentinel.server.frame_aggregation import FrameBasis, frame_bases, frame_problem, reach_weighted_aggregate
from sentinel.server.outcome import NodeInfo, NodeResult, RoundOutcome
from sentinel.server.replies import MalformedReplyError, parse_train_reply
from sentinel.server.state import GlobalState
from sentinel.server.update_checks import (
    ExpectedUpdate,
    claims_problem,
    direction_cosines,
    direction_outliers,
    importance_problem,
    norm_outliers,
    structure_problem,
    update_direction,
    update_norm,
)
from sentinel.server.views import DEFAULT_DESIGN, TrainingDesign, config_design, round_views

SupportFn = Callable[[Mapping[str, np.ndarray], frozenset[str]], dict[str, np.ndarray]]
"""(a reply's adapter arrays, the node's permitted set) → module → where it may change ΔW (``models.consent.adapt_supports``)."""
PermittedFn = Callable[[NodeInfo, int], frozenset[str] | None]
"""(node, round) → the node's permitted set for adapt, or None for 'everything'."""
TouchedFn = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], set[str]]
"""(update arrays, global head in the same PEFT key scheme) → the components an update changes."""
MaxExamplesFn = Callable[[NodeInfo], int]
"""node → the most training examples it can have (the coordinator's own knowledge of its partition)."""
UNBOUNDED_EXAMPLES = 2**31 - 1


@dataclass(frozen=True)
class SentView:
    """What the coordinator sent one node this round (what its reply is checked against)."""

    node: NodeInfo
    rank: int
    permitted: frozenset[str] | None
    head: dict[str, np.ndarray]
    expected: ExpectedUpdate
    start: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None
    """A continued adapter's view factors (A, B) per module, from which the coordinator rebuilds its change."""


@dataclass(frozen=True)
class TrainPlan:
    """The configure step's product: one message per node, and what each node was sent."""

    server_round: int
    messages: list[Message]
    sent: dict[int, SentView] = field(default_factory=dict)
    bytes_down: int = 0
    svd_residual: dict[int, float] = field(default_factory=dict)
    frames: dict[str, FrameBasis] | None = None
    """Module → the round's shared frame under a frame design (``server.frame_aggregation``): every update's frozen
    factor is checked against it, and a reach-weighted design averages over it."""


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
    max_examples_fn : MaxExamplesFn, optional
        The most training examples a node can claim (its aggregation weight is bounded by it).
    importance_shape : tuple[int, int], optional
        (layers, heads) of the model, the shape every importance report must have.
    norm_factor : float
        An update whose ‖ΔW‖ exceeds this multiple of the round's median norm is rejected.
    min_cosine : float, optional
        An update whose cosine to the coordinate-wise median of the round's updates is
        below this is rejected (``server.update_checks.direction_outliers``); None or -1: no direction check.
    num_labels : int, optional
        Classes of the run's classifier, sent to nodes (a node with its own dataset builds its base model with them).
    support_fn : SupportFn, optional
        Where a node's permitted set lets it change each module (``models.consent.adapt_supports``): aggregation
        averages each slice over the nodes that may change it. None: every accepted update counts everywhere.
    """

    design: TrainingDesign = DEFAULT_DESIGN
    """How nodes train and what view they get (``server.views``): the config's ``training_design``."""

    def __init__(
        self,
        config: FederationConfig,
        touched_fn: TouchedFn,
        permitted_fn: PermittedFn | None = None,
        require_signatures: bool = True,
        contract_version_fn: Callable[[], int] | None = None,
        max_examples_fn: MaxExamplesFn | None = None,
        importance_shape: tuple[int, int] | None = None,
        norm_factor: float = 10.0,
        min_cosine: float | None = None,
        num_labels: int | None = None,
        support_fn: SupportFn | None = None,
    ) -> None:
        if norm_factor <= 1.0:
            raise ValueError(f"`norm_factor` must be > 1 (a multiple of the median norm), got {norm_factor}")
        self.config = config
        self.max_examples_fn = max_examples_fn
        self.importance_shape = importance_shape
        self.norm_factor = norm_factor
        self.min_cosine = min_cosine
        self.direction = DirectionMemory(config.update_direction_memory)
        """Each node's direction record and who is in good standing (checkpointed: the round loop observes it)."""
        self.num_labels = num_labels
        self.require_signatures = require_signatures
        self.contract_version_fn = contract_version_fn
        self.touched_fn = touched_fn
        self.support_fn = support_fn
        self.permitted_fn = permitted_fn
        self.design = config_design(config)

    # ------------------------------------------------------------ configure

    def node_config(self, node: NodeInfo, server_round: int, permitted: frozenset[str] | None = None, version: int = 0) -> ConfigRecord:
        """A node's config for a round: its role's local work, where its data is, its permitted set."""
        profile = self.config.profiles[node.role]
        record = ConfigRecord(
            {
                P.C_ROUND: server_round,
                P.C_ROLE: node.role,
                P.C_RANK: self.rank_of(node),
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
                P.C_CONTRACT_VERSION: version,
                P.C_MEASURE_GRADIENT: self.config.plasticity,
            }
        )
        if self.num_labels is not None:
            record[P.C_NUM_LABELS] = self.num_labels
        return record

    def rank_of(self, node: NodeInfo) -> int:
        """The LoRA rank ``node`` trains at: the one its operator set (checked at the handshake), else its role's."""
        return node.lora_rank or self.config.profiles[node.role].lora_rank

    def configure_train(self, server_round: int, state: GlobalState, nodes: Sequence[NodeInfo]) -> TrainPlan:
        """One message per node: its view of the global model (``self.design``), its permitted set and its config.

        Under the default design every node gets the same exact view (ΔW at its
        own rank) and the factor to train in the shared frame (``server.views``).
        """
        messages: list[Message] = []
        sent: dict[int, SentView] = {}
        version = self.contract_version_fn() if self.contract_version_fn else 0
        modules = {m: (int(d.shape[0]), int(d.shape[1])) for m, d in state.deltas.items()}
        head_shapes = {k: tuple(int(x) for x in v.shape) for k, v in state.head.items()}
        ranks = {n.node_id: self.rank_of(n) for n in nodes}
        views = round_views(state, self.design, ranks.values())
        factor = self.design.train_factor(server_round)
        bytes_down = 0
        for node in sorted(nodes, key=lambda n: n.partition_id):
            rank = ranks[node.node_id]
            permitted = self.permitted_fn(node, server_round) if self.permitted_fn else None
            max_examples = self.max_examples_fn(node) if self.max_examples_fn else UNBOUNDED_EXAMPLES
            expected = ExpectedUpdate(rank, modules, head_shapes, self.importance_shape, max_examples, version)
            key = self.design.view_key(rank)
            start = split_view_at_rank(views.factors[key], rank)[0] if self.design.adapter == "continue" else None
            sent[node.node_id] = SentView(node, rank, permitted, dict(state.head), expected, start)
            bytes_down += views.bytes_of(key)
            config = self.node_config(node, server_round, permitted, version)
            if factor is not None:
                config[P.C_TRAIN_FACTOR] = factor
                config[P.C_FRAME_GAIN] = self.design.gain_of_round(server_round)
                config[P.C_FRAME_SCALE] = self.design.frame_scale
                config[P.C_FRAME_RANK] = max(ranks.values())
                config[P.C_SUBFRAME] = self.design.subframe
                if self.design.error_feedback:
                    config[P.C_ERROR_FEEDBACK] = True
            if self.design.adapter == "continue":
                config[P.C_ADAPTER_START] = "continue"
            content = RecordDict({P.REC_ARRAYS: views.records[key], P.REC_CONFIG: config})
            messages.append(Message(content=content, message_type=P.MSG_TRAIN, dst_node_id=node.node_id))
        frames: dict[str, FrameBasis] | None = None
        if factor is not None and ranks:
            view_factors = views.factors[self.design.view_key(max(ranks.values()))]
            frames = frame_bases(
                view_factors, modules, factor, max(ranks.values()), self.config.seed, server_round,
                self.design.gain_of_round(server_round), self.design.frame_scale,
            )  # fmt: skip
        residuals = {rank: views.errors[self.design.view_key(rank)] for rank in sorted(set(ranks.values()))}
        log(INFO, "configure_train: round %s, %s nodes, view %s, ranks %s", server_round, len(messages), self.design.view, sorted(set(ranks.values())))
        return TrainPlan(server_round, messages, sent, bytes_down, residuals, frames)

    # ------------------------------------------------------------ check

    def check_replies(self, plan: TrainPlan, replies: Iterable[Message]) -> RoundOutcome:
        """A verdict for every reply: authentic, well-formed, within consent. Failed replies are listed, not raised."""
        outcome = RoundOutcome(
            round=plan.server_round,
            bytes_down=plan.bytes_down,
            svd_residual=dict(plan.svd_residual),
            frames=plan.frames if self.design.reach_weighted else None,
        )
        answered: set[int] = set()
        # The grid gives each message an id when it sends it; a reply names the message it answers.
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in plan.messages if m.metadata.message_id}
        for msg in replies:
            # An error reply the SuperLink writes for an offline node may not carry the node as its source.
            reply_to = msg.metadata.reply_to_message_id
            node_id = sent_to.get(reply_to, msg.metadata.src_node_id) if reply_to else msg.metadata.src_node_id
            answered.add(node_id)
            result = self._check_reply(plan, msg, outcome, node_id)
            if result is not None:
                outcome.results.append(result)
        for node_id in sorted(set(plan.sent) - answered):  # a node that went silent is recorded, not forgotten
            key_id = plan.sent[node_id].node.key_id
            outcome.failures.append(f"{key_id}: no reply within the round's timeout")
            outcome.missing[key_id] = "no reply within the round's timeout"
            log(WARNING, "node %s sent no train reply within the timeout", node_id)
        outcome.results.sort(key=lambda r: r.node.partition_id)  # fixed order: sums are reproducible
        outcome.bytes_up = sum(r.bytes_up for r in outcome.results)
        norms = {r.node.node_id: update_norm(split_adapter_arrays(r.arrays)[0], P.LORA_ALPHA_PER_RANK) for r in outcome.accepted}
        for result in outcome.accepted:
            reason = norm_outliers(norms, self.norm_factor).get(result.node.node_id)
            if reason:
                result.accepted, result.reason = False, reason
        if self.min_cosine is not None and self.min_cosine > -1.0:
            self._reject_opposed(plan, outcome)
        return outcome

    def _reject_opposed(self, plan: TrainPlan, outcome: RoundOutcome) -> None:
        """Reject accepted updates whose direction opposes the median of the round's other updates (``min_cosine``)."""
        vectors = {}
        for r in outcome.accepted:
            pairs, head = split_adapter_arrays(r.arrays)
            sent = plan.sent[r.node.node_id].head
            change = {k: v - sent[k] for k, v in head.items() if k in sent}
            vectors[r.node.node_id] = update_direction(pairs, change, P.LORA_ALPHA_PER_RANK)
        in_standing = self.direction.standing
        standing = {r.node.node_id for r in outcome.accepted if r.node.key_id in in_standing}
        cosines = direction_cosines(vectors, standing if in_standing else None)
        key_of = {n: plan.sent[n].node.key_id for n in cosines}
        by_key = self.direction.judge({key_of[n]: c for n, c in cosines.items()})
        records = {n: by_key[key_of[n]] for n in cosines}
        if cosines:
            log(INFO, "round %s: update cosines to the median %s", outcome.round,
                {plan.sent[n].node.key_id: round(c, 3) for n, c in cosines.items()})
        flagged = direction_outliers(cosines, float(self.min_cosine or 0.0), records, self.direction.scale)
        for result in outcome.accepted:
            result.direction_cosine = cosines.get(result.node.node_id)
            result.direction_record = records.get(result.node.node_id)
            reason = flagged.get(result.node.node_id)
            if reason:
                result.accepted, result.reason = False, reason

    def _check_reply(self, plan: TrainPlan, msg: Message, outcome: RoundOutcome, src: int) -> NodeResult | None:
        """One reply's verdict; None for error replies and replies from outside the run (listed as failures).

        The checks run in order and the first problem is the reason: schema,
        signature, rank and scaling, structure against what was sent, the node's
        claims, importance reports, consent, then (under a frame design) the frozen factor against the round's frame.
        """
        view = plan.sent.get(src)
        if view is not None and not msg.has_error() and msg.metadata.src_node_id != src:
            view = None  # a reply to one node's message from another node: not that node's update
        if view is None or msg.has_error():
            reason = msg.error.reason if msg.has_error() else "reply from a node outside the run"
            outcome.failures.append(f"{view.node.key_id if view else src}: {reason}")
            if view is not None:
                outcome.missing[view.node.key_id] = reason
            log(WARNING, "train reply from node %s failed: %s", src, reason)
            return None
        try:
            result = parse_train_reply(msg, view.node)
        except MalformedReplyError as e:  # a buggy or hostile node must not stop the round
            log(WARNING, "train reply from node %s rejected: %s", src, e)
            return NodeResult(node=view.node, accepted=False, reason=f"malformed reply: {e}")
        problem = self._authenticity_problem(result, plan.server_round)
        result.authentic = not problem and result.signature is not None
        problem = (
            problem
            or _rank_problem(result, view.rank)
            or structure_problem(result.arrays, view.expected)
            or claims_problem(result.num_examples, result.contract_version, view.expected)
            or importance_problem(_importance_reports(result), view.expected)
        )
        if not problem and view.start is not None:
            problem = _rebuild_continued_change(result, view.start)
        if problem:
            result.accepted = False
            result.reason = problem
            return result
        if view.permitted is not None:
            head = {PEFT_PREFIX + k: v for k, v in view.head.items()}  # the reply's key scheme
            check = check_update_consent(self.touched_fn(result.arrays, head), view.permitted)
            if not check.ok:
                result.accepted = False
                result.offending = check.offending
                result.reason = f"consent violation: update changes {len(check.offending)} component(s) outside the permitted set"
            elif self.support_fn is not None:
                result.supports = self.support_fn(result.arrays, view.permitted)
                result.head_permitted = CLASSIFIER in view.permitted
        if result.accepted and plan.frames is not None:
            pairs, _ = split_adapter_arrays(result.arrays)
            problem = frame_problem(pairs, plan.frames, result.supports)
            if problem:
                result.accepted, result.reason = False, problem
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
        payload = update_submitted_payload(result.node.key_id, server_round, result.content_hash, result.num_examples)
        if not payload_signature_valid(result.node.public_key, result.signature, payload):
            return "bad signature: the update is not signed by the node's registered key"
        return ""

    # ------------------------------------------------------------ aggregate

    def aggregate_train(self, state: GlobalState, outcome: RoundOutcome) -> GlobalState:
        """The new global state: the accepted updates aggregated onto ``state`` (unchanged when none was accepted)."""
        accepted = outcome.accepted
        self.direction.settle(frozenset(r.node.key_id for r in accepted))
        if not accepted:
            log(WARNING, "round %s: no update accepted; global model unchanged", outcome.round)
            return GlobalState(state.deltas, state.head, state.head_mask, outcome.round)
        deltas, head = aggregate_updates(accepted, self.config.aggregation, state.deltas, state.head, outcome.frames)
        return GlobalState(deltas=deltas, head=head, head_mask=state.head_mask, round=outcome.round)

    def summary(self) -> None:
        """Log the strategy's configuration."""
        log(INFO, "\t├── Aggregation: %s LoRA", self.config.aggregation)
        for role, prof in self.config.profiles.items():
            log(INFO, "\t├── %s: rank %s, %s local steps", role, prof.lora_rank, prof.local_steps)
        log(INFO, "\t└── Consent enforcement: %s", "on" if self.permitted_fn else "off")


def _rebuild_continued_change(result: NodeResult, start: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Replace a continued adapter's arrays (rank r, as signed) by its change (rank 2r); why not ('' when done).

    Runs after the structure check, so the arrays already have the sent
    modules and shapes; what is checked and aggregated from here on is the change.
    """
    try:
        result.arrays = change_arrays(result.arrays, start, P.LORA_ALPHA_PER_RANK)
    except (KeyError, ValueError) as e:
        return f"malformed update: {e}"
    return ""


def _rank_problem(result: NodeResult, expected: int) -> str:
    """Why the reported rank or scaling is not the one this node was configured with ('' if it is)."""
    if result.rank != expected:
        return f"wrong rank: the node was configured with rank {expected}, reported {result.rank}"
    if not np.isclose(result.scaling, P.LORA_ALPHA_PER_RANK):
        return f"wrong LoRA scaling: reported {result.scaling}, the protocol fixes {P.LORA_ALPHA_PER_RANK}"
    return ""


def _importance_reports(result: NodeResult) -> dict[str, np.ndarray | None]:
    return {
        P.KEY_ENTROPY: result.entropy,
        P.KEY_GRAD_IMPORTANCE: result.gradient_importance,
        P.KEY_ENTROPY_NORMALISED: result.normalised_entropy,
    }


def aggregate_updates(
    accepted: Sequence[NodeResult],
    mode: str,
    deltas: dict[str, np.ndarray],
    head: dict[str, np.ndarray],
    frames: Mapping[str, FrameBasis] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """New dense global state from accepted updates: ΔW += aggregate, head = weighted mean.

    With ``frames`` (the round's shared frame, under a reach-weighted design) each
    direction of the frame is averaged over the nodes that reach it (``server.frame_aggregation``).

    Each slice of ΔW is averaged over the updates whose node consent let change
    it (``NodeResult.supports``), and the head over the nodes that may adapt it;
    with no head permitted to anyone the head stays as it was. Exact mode only:
    ``naive`` is the FedIT baseline, averaging every factor over every node.
    """
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
    supports = [r.supports for r in accepted] if any(r.supports for r in accepted) else None
    if mode != "exact":
        agg = naive_aggregate(updates)
    elif frames:
        agg = reach_weighted_aggregate(updates, frames, supports)
    else:
        agg = exact_aggregate(updates, supports)
    missing = set(agg) - set(deltas)
    if missing:
        raise ValueError(f"updates adapt modules the global state does not have: {sorted(missing)[:3]}")
    new_deltas = {m: (d.astype(np.float64) + agg[m]).astype(np.float32) if m in agg else d for m, d in deltas.items()}
    voters = [(h, u.weight) for h, u, r in zip(heads, updates, accepted, strict=True) if r.head_permitted or mode != "exact"]
    if voters and voters[0][0]:
        mean = weighted_mean([h for h, _ in voters], [w for _, w in voters])
        new_head = {k: v.astype(np.float32) for k, v in mean.items()}
    else:
        new_head = dict(head)
    return new_deltas, new_head
