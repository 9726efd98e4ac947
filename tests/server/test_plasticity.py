"""Federated plasticity on the coordinator: consensus pruning within consent, reverts, regrowth, resume.

The phase is driven directly with round outcomes (what the check and validate
phases produce) on tiny-bert's layout (2 layers × 4 heads) and real governance
contracts; the round loop's wiring is tested in tests/federation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sentinel.governance.policy_file import load_default_policy
from sentinel.ledger.store import Ledger
from sentinel.models.components import list_components, model_layout
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.protos import messages as P
from sentinel.protos.vocabulary import EntryKind, head_id
from sentinel.server.central import initial_state
from sentinel.server.config import FederationConfig
from sentinel.server.governance_observer import GovernanceObserver
from sentinel.server.outcome import Evaluation, NodeInfo, NodeResult, RoundOutcome
from sentinel.server.plasticity import PlasticityPhase
from sentinel.server.plasticity_importance import accepted_reports, node_head_scores, round_importance
from sentinel.server.state import GlobalState

L, H = 2, 4
NODES = [NodeInfo(node_id=10 + i, partition_id=i, role=role) for i, role in enumerate(["gpu", "gpu", "central", "edge"])]


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    return load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)


def _config(**overrides: object) -> FederationConfig:
    values: dict[str, object] = dict(
        model="tiny-bert", plasticity=True, prune_every=1, prune_step=0.125, target_sparsity=0.5, prune_vote_share=0.5,
        prune_rank_share=0.125, prune_tolerance=0.05, regrow_rounds=2, importance_decay=0.5,
    )
    values.update(overrides)
    return FederationConfig.model_validate(values)


def _grad(low: list[tuple[int, int]], level: float = 0.9) -> np.ndarray:
    """A gradient-importance report: every head at ``level`` but the ``low`` ones near zero."""
    g = np.full((L, H), level, dtype=np.float32)
    for layer, h in low:
        g[layer, h] = 0.01 * (1 + h)
    return g


def _result(node: NodeInfo, grad: np.ndarray, accepted: bool = True, examples: int = 10) -> NodeResult:
    return NodeResult(
        node=node, accepted=accepted, num_examples=examples, gradient_importance=grad,
        normalised_entropy=np.full((L, H), 0.5, dtype=np.float32), entropy=np.ones((L, H), dtype=np.float32),
    )


def _outcome(rnd: int, results: list[NodeResult], reputation: dict[str, float] | None = None) -> RoundOutcome:
    return RoundOutcome(round=rnd, results=results, reputation=dict(reputation or {}))


def _governance(tmp_path: Path, base: LoadedModel, policy_text: str | None = None) -> GovernanceObserver:
    ledger = Ledger.open(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "coordinator.key")
    policy_path = None
    if policy_text is not None:
        policy_path = tmp_path / "policy.yaml"
        policy_path.write_text(policy_text)
    gov = GovernanceObserver.open(tmp_path / "gov.db", ledger, list_components(base.model), "tiny-bert", str(policy_path) if policy_path else None)
    gov.on_nodes(NODES)
    return gov


def _phase(base: LoadedModel, config: FederationConfig, gov: GovernanceObserver | None = None) -> tuple[PlasticityPhase, list]:
    recorded: list = []
    may = (lambda n, op, c: bool(gov.governor.may(n, op, c))) if gov is not None else None
    phase = PlasticityPhase(config, model_layout(base.model), may, lambda kind, payload: recorded.append((kind, payload)))
    phase.on_nodes(NODES)
    return phase, recorded


def _state(base: LoadedModel, rnd: int = 0, seed: int = 0, mask: np.ndarray | None = None) -> GlobalState:
    s = initial_state(base)
    rng = np.random.default_rng(seed)
    deltas = {m: rng.normal(size=d.shape).astype(np.float32) for m, d in s.deltas.items()}
    return GlobalState(deltas, s.head, mask, rnd)


def _steady(accuracy: float = 0.8):  # noqa: ANN202 - an evaluator that does not care about the mask
    return lambda state: Evaluation(accuracy, 0.5)


def _mask_costs(cost: float, base_accuracy: float = 0.8):  # noqa: ANN202
    """An evaluator whose accuracy drops by ``cost`` per masked head."""
    return lambda state: Evaluation(base_accuracy - cost * (0 if state.head_mask is None else float((state.head_mask == 0).sum())), 0.5)


# ---------------------------------------------------------------- importance


def test_importance_comes_from_accepted_updates_only_weighted_by_examples_and_reputation() -> None:
    a, b, c = NODES[0], NODES[1], NODES[2]
    outcome = _outcome(
        1,
        [_result(a, _grad([(0, 0)]), examples=30), _result(b, _grad([(1, 1)]), examples=10), _result(c, np.zeros((L, H), np.float32), accepted=False)],
        reputation={b.key_id: 0.5},
    )
    reports = accepted_reports(outcome, (L, H))
    assert [r.node for r in reports] == [a.key_id, b.key_id]  # the rejected node's report is not read
    assert [r.weight for r in reports] == [30.0, 5.0]
    entropy = np.full((L, H), 0.5)
    expected = (30 * node_head_scores(_grad([(0, 0)]), entropy) + 5 * node_head_scores(_grad([(1, 1)]), entropy)) / 35
    np.testing.assert_allclose(round_importance(reports), expected)
    rejected_only = _outcome(1, [_result(c, _grad([(0, 0)]), accepted=False)])
    assert round_importance(accepted_reports(rejected_only, (L, H))) is None


def test_a_rejected_update_does_not_move_the_global_importance(base: LoadedModel) -> None:
    phase, _ = _phase(base, _config(prune_every=100))
    honest = [_result(NODES[0], _grad([(0, 0)]))]
    phase.decide(1, _outcome(1, honest), _state(base), _state(base, 1), Evaluation(0.8, 0.5), _steady())
    before = phase.importance.values.copy()
    liar = _result(NODES[1], np.zeros((L, H), np.float32), accepted=False)
    phase.decide(2, _outcome(2, [*honest, liar]), _state(base, 1), _state(base, 2), Evaluation(0.8, 0.5), _steady())
    np.testing.assert_allclose(phase.importance.values, before)  # the same honest report again: EMA unchanged
    phase.decide(3, _outcome(3, [_result(NODES[1], _grad([(1, 3)]))]), _state(base, 2), _state(base, 3), Evaluation(0.8, 0.5), _steady())
    assert phase.importance.values[1, 3] < before[1, 3]  # an accepted report does move it


# ---------------------------------------------------------------- consensus and consent


def test_vote_share_decides_which_heads_are_candidates(base: LoadedModel) -> None:
    # Nodes 0 and 1 rank (0, 1) lowest; node 2 ranks (1, 2) lowest: 2/3 vs 1/3 of the electorate.
    results = [_result(NODES[0], _grad([(0, 1)])), _result(NODES[1], _grad([(0, 1)])), _result(NODES[2], _grad([(1, 2)]))]
    for share, expected in ((0.6, ["layer.0.head.1"]), (0.9, [])):
        phase, recorded = _phase(base, _config(prune_vote_share=share, prune_step=0.25, prune_rank_share=0.125))
        state, _ = phase.decide(1, _outcome(1, results), _state(base), _state(base, 1), Evaluation(0.8, 0.5), _steady())
        pruned = [head_id(int(a), int(b)) for a, b in zip(*np.nonzero(state.head_mask == 0), strict=True)] if state.head_mask is not None else []
        assert pruned == expected, share
        if expected:
            (kind, payload), = recorded
            assert kind == EntryKind.HEADS_PRUNED
            assert payload["evidence"]["layer.0.head.1"]["votes"] == 2
            assert payload["evidence"]["layer.0.head.1"]["electorate"] == 3


FORBID_LAYER0 = """
  - name: layer-0-heads-stay
    match: {layers: "0", heads: "*"}
    revoke:
      prune: {roles: [gpu, central]}
"""


def test_consensus_never_prunes_a_head_whose_contract_forbids_it(tmp_path: Path, base: LoadedModel) -> None:
    default = (Path(__file__).resolve().parents[2] / "governance" / "default_policy.yaml").read_text()
    policy = default.replace("rules:\n", "rules:\n" + FORBID_LAYER0, 1)
    gov = _governance(tmp_path, base, policy)
    assert load_default_policy().name  # the default loads; ours adds one rule
    assert not gov.governor.may(NODES[0].key_id, "prune", "layer.0.head.0")
    # Every node ranks layer 0's heads lowest, and the step would take half the model.
    everyone_low = [(0, 0), (0, 1), (0, 2), (0, 3), (1, 3)]
    results = [_result(n, _grad(everyone_low)) for n in NODES]
    phase, recorded = _phase(base, _config(prune_step=0.5, target_sparsity=0.5, prune_rank_share=0.625), gov)
    state, _ = phase.decide(1, _outcome(1, results), _state(base), _state(base, 1), Evaluation(0.8, 0.5), _steady())
    mask = state.head_mask
    assert mask is not None and (mask[0] == 1).all()  # layer 0 untouched however low it ranks
    assert (mask == 0).sum() == 1 and mask[1, 3] == 0  # the one low head contracts allow went instead
    (kind, payload), = recorded
    assert payload["heads"] == ["layer.1.head.3"]
    # The edge node may not prune (default policy): it is in no head's electorate.
    assert all(ev["electorate"] == 3 for ev in payload["evidence"].values())


def test_a_withdrawn_head_is_never_pruned(tmp_path: Path, base: LoadedModel) -> None:
    gov = _governance(tmp_path, base)
    phase, _ = _phase(base, _config(prune_step=0.125, target_sparsity=0.5, prune_rank_share=0.125), gov)
    results = [_result(n, _grad([(1, 0)])) for n in NODES]
    real_may = phase.may
    phase.may = lambda n, op, c: False if c == "layer.1.head.0" else real_may(n, op, c)  # as governance would answer
    state, _ = phase.decide(1, _outcome(1, results), _state(base), _state(base, 1), Evaluation(0.8, 0.5), _steady())
    assert state.head_mask is None or state.head_mask[1, 0] == 1


# ---------------------------------------------------------------- evaluation: revert and regrow


def test_a_cycle_whose_evaluation_falls_beyond_the_tolerance_is_reverted(base: LoadedModel) -> None:
    phase, recorded = _phase(base, _config(prune_tolerance=0.05))
    results = [_result(n, _grad([(1, 2)])) for n in NODES[:3]]
    new = _state(base, 1)
    state, evaluation = phase.decide(1, _outcome(1, results), _state(base), new, Evaluation(0.8, 0.5), _mask_costs(0.2))
    assert state.head_mask is None and state.deltas is new.deltas  # the heads came back: nothing changed
    assert evaluation == Evaluation(0.8, 0.5)  # the round is scored as the state in force
    (kind, payload), = recorded
    assert kind == EntryKind.PRUNE_REVERTED
    assert payload["heads"] == ["layer.1.head.2"]
    assert payload["evaluation_before"]["accuracy"] == pytest.approx(0.8)
    assert payload["evaluation_after"]["accuracy"] == pytest.approx(0.6)
    assert phase.cycles == []
    # Within the tolerance the same cycle is kept.
    phase, recorded = _phase(base, _config(prune_tolerance=0.05))
    state, evaluation = phase.decide(1, _outcome(1, results), _state(base), new, Evaluation(0.8, 0.5), _mask_costs(0.01))
    assert state.head_mask[1, 2] == 0 and evaluation.accuracy == pytest.approx(0.79)
    assert recorded[0][0] == EntryKind.HEADS_PRUNED


def test_regrowth_restores_the_pruned_heads_with_their_kept_weights_and_boosts_them(base: LoadedModel) -> None:
    layout = model_layout(base.model)
    phase, recorded = _phase(base, _config(prune_every=1, regrow_rounds=2, regrow_lr_factor=4.0))
    results = [_result(n, _grad([(1, 2)])) for n in NODES[:3]]
    # Round 1 prunes (1, 2).
    s1, _ = phase.decide(1, _outcome(1, results), _state(base, 0, seed=0), _state(base, 1, seed=1), Evaluation(0.8, 0.5), _steady(0.8))
    assert s1.head_mask[1, 2] == 0
    # Round 2 (no reports, so no cycle): nodes' updates changed every slice of ΔW; the pruned head's slices are put back.
    after_round2 = _state(base, 2, seed=2, mask=s1.head_mask)
    s2, _ = phase.decide(2, _outcome(2, []), s1, after_round2, Evaluation(0.81, 0.5), _steady(0.81))
    q = "bert.encoder.layer.1.attention.self.query"
    o = "bert.encoder.layer.1.attention.output.dense"
    d = layout.head_dim
    np.testing.assert_array_equal(s2.deltas[q][2 * d : 3 * d], s1.deltas[q][2 * d : 3 * d])  # kept
    np.testing.assert_array_equal(s2.deltas[o][:, 2 * d : 3 * d], s1.deltas[o][:, 2 * d : 3 * d])
    np.testing.assert_array_equal(s2.deltas[q][: 2 * d], after_round2.deltas[q][: 2 * d])  # the live heads train
    # Round 3: central accuracy falls beyond the tolerance below its reference: the last cycle's heads come back.
    last_cycle = [tuple(h) for h in phase.cycles[-1]["heads"]]
    after_round3 = _state(base, 3, seed=3, mask=s2.head_mask)
    s3, ev3 = phase.decide(3, _outcome(3, results), s2, after_round3, Evaluation(0.6, 0.7), _steady(0.7))
    kind, payload = recorded[-1]
    assert kind == EntryKind.HEADS_REGROWN
    assert payload["heads"] == [head_id(*h) for h in sorted(last_cycle)]
    assert payload["evaluation_before"]["accuracy"] == pytest.approx(0.6)
    assert payload["evaluation_after"]["accuracy"] == pytest.approx(0.7) and ev3.accuracy == pytest.approx(0.7)
    for layer, h in last_cycle:
        assert (s3.head_mask is None) or s3.head_mask[layer, h] == 1
        qm = f"bert.encoder.layer.{layer}.attention.self.query"
        np.testing.assert_array_equal(s3.deltas[qm][h * d : (h + 1) * d], s2.deltas[qm][h * d : (h + 1) * d])
    # The next rounds' train messages carry the boost; no cycle runs while it lasts.
    extra = phase.train_config(4)
    assert extra[P.C_BOOST_HEADS] == payload["heads"] and extra[P.C_BOOST_FACTOR] == 4.0
    assert phase.train_config(6) == {}
    n = len(recorded)
    phase.decide(4, _outcome(4, results), s3, _state(base, 4, mask=s3.head_mask), Evaluation(0.7, 0.5), _steady(0.7))
    assert len(recorded) == n


def test_regrowth_brings_back_only_heads_that_may_grow(base: LoadedModel) -> None:
    phase, recorded = _phase(base, _config(prune_step=0.25, prune_rank_share=0.25))
    results = [_result(n, _grad([(1, 2), (1, 3)])) for n in NODES[:3]]
    s1, _ = phase.decide(1, _outcome(1, results), _state(base), _state(base, 1), Evaluation(0.8, 0.5), _steady(0.8))
    pruned = sorted(tuple(h) for h in phase.cycles[-1]["heads"])
    assert len(pruned) == 2
    phase.may = lambda n, op, c: not (op == "grow" and c == head_id(*pruned[0]))
    s2, _ = phase.decide(2, _outcome(2, results), s1, _state(base, 2, mask=s1.head_mask), Evaluation(0.5, 0.9), _steady(0.6))
    assert s2.head_mask[pruned[0]] == 0 and s2.head_mask[pruned[1]] == 1
    assert recorded[-1][1]["heads"] == [head_id(*pruned[1])]


# ---------------------------------------------------------------- resume


def test_resume_keeps_the_global_importance_cycles_and_boost(base: LoadedModel) -> None:
    phase, _ = _phase(base, _config())
    results = [_result(n, _grad([(1, 2)])) for n in NODES[:3]]
    phase.decide(1, _outcome(1, results), _state(base), _state(base, 1), Evaluation(0.8, 0.5), _steady())
    meta = json.loads(json.dumps(phase.checkpoint_meta()))  # what a checkpoint's state.json holds
    resumed, _ = _phase(base, _config())
    resumed.restore(meta)
    np.testing.assert_array_equal(resumed.importance.values, phase.importance.values)
    assert resumed.importance.rounds == 1
    assert resumed.cycles == phase.cycles and resumed.reference == phase.reference
    assert resumed.report()["plasticity"]["pruned"] == phase.report()["plasticity"]["pruned"] == ["layer.1.head.2"]
    fresh, _ = _phase(base, _config())
    fresh.restore({})
    assert fresh.importance.values is None and fresh.cycles == []


# ---------------------------------------------------------------- central evaluation of a masked state


def test_central_evaluation_of_a_pruned_state_runs_with_its_mask(base: LoadedModel) -> None:
    from sentinel.client.data import Example
    from sentinel.client.data.batching import iter_batches
    from sentinel.server.central import CentralEvaluator
    from sentinel.server.plasticity import MaskedEvaluator, mask_aware

    texts = ["good film", "bad film", "great acting", "awful plot", "fine", "terrible"] * 3
    central = CentralEvaluator(base, [Example(t, i % 2) for i, t in enumerate(texts)], max_length=12)
    evaluate = mask_aware(central)
    assert isinstance(evaluate, MaskedEvaluator)
    other = _steady()  # an evaluator that reads the mask itself (central nodes get it in their view) passes through
    assert mask_aware(other) is other
    state = _state(base, 1)
    assert evaluate(state) == central(state)
    full = np.ones((L, H), dtype=np.float32)
    assert evaluate(GlobalState(state.deltas, state.head, full, 1)) == central(state)
    half = full.copy()
    half[:, :2] = 0
    masked = GlobalState(state.deltas, state.head, half, 1)
    assert evaluate(masked)[1] != pytest.approx(central(state)[1], abs=1e-6)  # the mask's gates are on
    # The same as the model physically masked by hand, in every metric the round's row carries.
    from sentinel.models.global_model import evaluate_classifier, materialise
    from sentinel.models.head_mask import apply_head_mask

    model = materialise(base, state.deltas, state.head)
    with apply_head_mask(model, half):
        accuracy, loss = evaluate_classifier(model, iter_batches(base.tokenizer, central.test, central.batch_size, 12))
    full_eval = evaluate.evaluation(masked)
    assert (full_eval.accuracy, full_eval.loss) == pytest.approx((accuracy, loss), abs=1e-6)
    assert full_eval.ece is not None and full_eval.kl_from_base is not None and full_eval.kl_from_base > 0


@pytest.mark.usefixtures("inside_a_server_app")
def test_the_boost_travels_in_a_copy_of_each_train_message(base: LoadedModel) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    phase, _ = _phase(base, _config(regrow_lr_factor=2.5))
    phase.boost = {"heads": [[1, 2], [0, 3]], "until": 5}
    original = Message(
        content=RecordDict({P.REC_ARRAYS: ArrayRecord(), P.REC_CONFIG: ConfigRecord({P.C_ROUND: 5, P.C_LR: 1e-3})}),
        message_type=P.MSG_TRAIN,
        dst_node_id=7,
    )
    (sent,) = phase.annotate([original], 5)
    assert sent.metadata.dst_node_id == 7 and sent.metadata.message_type == P.MSG_TRAIN
    config = sent.content[P.REC_CONFIG]
    assert list(config[P.C_BOOST_HEADS]) == ["layer.0.head.3", "layer.1.head.2"]
    assert config[P.C_BOOST_FACTOR] == 2.5 and config[P.C_LR] == 1e-3
    assert P.C_BOOST_HEADS not in original.content[P.REC_CONFIG]  # the strategy's message is not changed
    assert phase.annotate([original], 6) == [original]  # the window is over
