"""Central evaluation reports accuracy, loss, per-domain accuracy, ECE and KL(global ‖ base), and the round row carries them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sentinel.client.data.batching import iter_batches
from sentinel.client.data.loaders import load_examples
from sentinel.models.calibration import expected_calibration_error, mean_kl
from sentinel.models.global_model import evaluate_classifier, materialise
from sentinel.models.loading import load_base_model
from sentinel.server.central import CentralEvaluator, CentralMetrics, initial_state
from sentinel.server.outcome import Evaluation, RoundOutcome
from sentinel.server.rounds import round_row
from sentinel.server.state import GlobalState


@pytest.fixture(scope="module")
def setup():  # noqa: ANN201
    base = load_base_model("tiny-bert", num_labels=2, seed=0)
    test = load_examples("builtin:reviews?n=120", seed=0)[:60]
    return base, test


def _moved(base, seed: int = 1) -> GlobalState:  # noqa: ANN001
    start = initial_state(base)
    rng = np.random.default_rng(seed)
    deltas = {m: rng.normal(scale=0.05, size=d.shape).astype(np.float32) for m, d in start.deltas.items()}
    head = {k: (v + rng.normal(scale=0.5, size=v.shape)).astype(np.float32) for k, v in start.head.items()}
    return GlobalState(deltas=deltas, head=head, round=1)


def _probs(model: torch.nn.Module, base, test) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """Logits and labels computed here, independently of the evaluator."""
    model.eval()
    out, labels = [], []
    with torch.no_grad():
        for batch in iter_batches(base.tokenizer, test, 7, 24):
            labels.append(batch.pop("labels").numpy())
            out.append(model(**batch).logits.numpy())
    return np.concatenate(out), np.concatenate(labels)


def test_metrics_match_an_independent_computation_and_the_tuple_contract_holds(setup) -> None:  # noqa: ANN001
    base, test = setup
    evaluator = CentralEvaluator(base, test, max_length=24, batch_size=16)
    state = _moved(base)
    m = evaluator.metrics(state)
    model = materialise(base, state.deltas, state.head)
    acc, loss = evaluate_classifier(model, iter_batches(base.tokenizer, test, 16, 24))
    assert m.num_examples == len(test)
    assert m.accuracy == pytest.approx(acc) and m.loss == pytest.approx(loss, rel=1e-5)
    assert evaluator(state) == (m.accuracy, m.loss)  # server.rounds' (accuracy, loss) contract
    logits, labels = _probs(model, base, test)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert m.ece == pytest.approx(expected_calibration_error(probs, labels), abs=1e-5)
    base_logits, _ = _probs(base.model, base, test)
    assert m.kl_from_base == pytest.approx(mean_kl(logits, base_logits), rel=1e-4)
    assert m.kl_from_base > 1e-3  # the moved global model is measurably away from the base
    domains = sorted({e.domain for e in test})
    assert sorted(m.per_domain) == domains and len(domains) > 1
    for d in domains:
        idx = [i for i, e in enumerate(test) if e.domain == d]
        assert m.per_domain[d] == pytest.approx(float(np.mean(logits[idx].argmax(1) == labels[idx])))


def test_the_initial_global_model_is_the_base_model(setup) -> None:  # noqa: ANN001
    base, test = setup
    m = CentralEvaluator(base, test, max_length=24).metrics(initial_state(base))
    assert m.kl_from_base == pytest.approx(0.0, abs=1e-9)


def test_central_metrics_refuse_values_a_dishonest_reporter_could_send() -> None:
    good = dict(num_examples=10, accuracy=0.7, loss=0.5, ece=0.1, per_domain={"a": 0.6}, kl_from_base=0.01)
    CentralMetrics.model_validate(good)
    for bad in (
        {"accuracy": 1.5},
        {"accuracy": math.nan},
        {"loss": -1.0},
        {"loss": math.inf},
        {"ece": -0.1},
        {"per_domain": {"a": 2.0}},
        {"kl_from_base": -0.5},
        {"num_examples": 0},
        {"extra": 1},
    ):
        with pytest.raises(ValidationError):
            CentralMetrics.model_validate({**good, **bad})


def test_the_round_row_carries_the_extra_fields_only_when_measured() -> None:
    outcome = RoundOutcome(round=3)
    plain = round_row(outcome, Evaluation(0.8, 0.4), 1.0)
    assert (plain["accuracy"], plain["loss"]) == (0.8, 0.4) and "ece" not in plain
    rich = round_row(outcome, Evaluation(0.8, 0.4, ece=0.05, kl_from_base=0.2, per_domain={"books": 0.9}), 1.0)
    assert rich["ece"] == 0.05 and rich["kl_from_base"] == 0.2
    assert rich["per_domain_accuracy"] == {"books": 0.9} and rich["evaluated_on"] == "coordinator"


# ---------------------------------------------------------------- central evaluation on central nodes

ROLES = ("edge", "central", "gpu")
IDS = (601, 602, 603)


def _grid(apps: dict | None = None):  # noqa: ANN202
    from sentinel.client.app import app as client_app
    from sentinel.server.local_grid import LocalGrid

    apps = {n: (apps or {}).get(n, client_app) for n in IDS}
    return LocalGrid(apps, {n: {"partition-id": i, "num-partitions": 3, "role": ROLES[i], "device": "cpu"} for i, n in enumerate(IDS)})


def _federation():  # noqa: ANN202
    from sentinel.client.data.federated import federated_split, node_train_val
    from sentinel.server.outcome import NodeInfo
    from sentinel.server.strategy import SentinelStrategy

    from tests.federation.conftest import tiny_config

    config = tiny_config()
    data = federated_split(config.dataset, config.nodes, config.partition, config.dirichlet_alpha, config.test_fraction, config.seed)
    base = load_base_model(config.model, num_labels=data.num_labels, seed=config.seed)
    strategy = SentinelStrategy(config, touched_fn=lambda arrays, head: set(), require_signatures=False)
    nodes = [NodeInfo(n, i, ROLES[i]) for i, n in enumerate(IDS)]
    central_val = node_train_val(data, 1, config.val_fraction, config.seed)[1]
    return config, data, base, strategy, nodes, central_val


def test_central_nodes_evaluate_on_their_own_held_out_data_through_flower_messages() -> None:
    from sentinel.server.central_nodes import CentralNodeEvaluator

    config, data, base, strategy, nodes, central_val = _federation()
    state = _moved(base)
    state.round = 2
    coordinator_eval = CentralEvaluator(base, data.test, config.max_length)
    evaluator = CentralNodeEvaluator(_grid(), strategy.node_config, fallback=coordinator_eval)
    evaluator.on_nodes(nodes)
    got = evaluator.evaluation(state)
    assert got.source == "central-nodes" and not evaluator.rejected
    # The central node scored the global model on its own validation split, as the coordinator would on it.
    expected = CentralEvaluator(base, central_val, config.max_length).metrics(state)
    assert got.accuracy == pytest.approx(expected.accuracy) and got.loss == pytest.approx(expected.loss, rel=1e-4)
    assert got.ece == pytest.approx(expected.ece, abs=1e-4) and got.kl_from_base == pytest.approx(expected.kl_from_base, rel=1e-3)
    assert got.per_domain == pytest.approx(expected.per_domain)
    assert evaluator(state) == (got.accuracy, got.loss)
    # No central node in the run: the coordinator's own test set answers.
    evaluator.on_nodes([n for n in nodes if n.role != "central"])
    assert evaluator.evaluation(state).source == "coordinator"


def test_a_dishonest_central_node_is_refused_and_the_coordinator_answers() -> None:
    from sentinel.client.app import app as client_app
    from sentinel.protos import messages as P
    from sentinel.server.central_nodes import CentralNodeEvaluator

    config, data, base, strategy, nodes, _ = _federation()

    def boasting(msg, ctx):  # noqa: ANN001, ANN202
        reply = client_app(msg, ctx)
        reply.content[P.REC_METRICS][P.M_ACCURACY] = 0.99  # claims more than its per-domain accuracies add up to
        return reply

    def oversized(msg, ctx):  # noqa: ANN001, ANN202
        reply = client_app(msg, ctx)
        metrics = reply.content[P.REC_METRICS]
        for key in list(metrics):
            if key.startswith(P.M_DOMAIN_EXAMPLES):
                metrics[key] = int(metrics[key]) * 100
        metrics[P.M_EXAMPLES] = int(metrics[P.M_EXAMPLES]) * 100
        return reply

    state = _moved(base)
    for app, why in ((boasting, "weighted mean"), (oversized, "at most")):
        evaluator = CentralNodeEvaluator(
            _grid({IDS[1]: app}), strategy.node_config, fallback=CentralEvaluator(base, data.test, config.max_length),
            max_examples_fn=lambda node: 1000,
        )
        evaluator.on_nodes(nodes)
        got = evaluator.evaluation(state)
        assert got.source == "coordinator"
        (reason,) = evaluator.rejected.values()
        assert why in reason


def test_a_run_evaluates_every_round_on_its_central_node(tmp_path) -> None:  # noqa: ANN001
    from sentinel.server.central_nodes import CentralNodeEvaluator
    from sentinel.server.coordinator import Coordinator

    from tests.federation.conftest import tiny_config

    config = tiny_config(rounds=1, roles=list(ROLES))
    coordinator = Coordinator.build(config, tmp_path / "run", accountable=False)
    strategy = coordinator.strategy()
    grid = _grid()
    evaluator = CentralNodeEvaluator(grid, strategy.node_config, fallback=coordinator.evaluator)
    coordinator.evaluator = evaluator
    result = coordinator.run(grid, extra_observers=[evaluator])
    assert [r["evaluated_on"] for r in result.history] == ["central-nodes", "central-nodes"]
    assert all(0 <= r["ece"] <= 1 and r["kl_from_base"] >= 0 and r["per_domain_accuracy"] for r in result.history)


def test_central_nodes_score_a_pruned_global_model_with_its_heads_masked() -> None:
    from sentinel.models.calibration import predictive_metrics
    from sentinel.models.components import model_layout
    from sentinel.models.head_mask import apply_head_mask
    from sentinel.models.predictions import classifier_logits
    from sentinel.server.central_nodes import CentralNodeEvaluator

    config, data, base, strategy, nodes, central_val = _federation()
    state = _moved(base)
    layout = model_layout(base.model)
    mask = np.ones((layout.num_layers, layout.num_heads), dtype=np.float32)
    mask[0, :2] = 0.0
    state.head_mask = mask
    evaluator = CentralNodeEvaluator(_grid(), strategy.node_config)
    evaluator.on_nodes(nodes)
    got = evaluator.evaluation(state)
    model = materialise(base, state.deltas, state.head)
    batches = lambda: iter_batches(base.tokenizer, central_val, 16, config.max_length)  # noqa: E731
    with apply_head_mask(model, mask):
        masked, labels = classifier_logits(model, batches())
    unmasked, _ = classifier_logits(model, batches())
    expected = predictive_metrics(masked, labels)
    assert got.loss == pytest.approx(expected.loss, rel=1e-4)
    assert abs(got.loss - predictive_metrics(unmasked, labels).loss) > 1e-4  # the mask mattered


def test_node_evaluations_pool_by_example_count() -> None:
    from sentinel.server.central_nodes import NodeEvaluation, pool_evaluations

    a = NodeEvaluation(
        metrics=CentralMetrics(num_examples=10, accuracy=0.8, loss=0.5, ece=0.1, per_domain={"books": 0.8}, kl_from_base=0.2),
        domain_examples={"books": 10},
    )
    b = NodeEvaluation(
        metrics=CentralMetrics(
            num_examples=30, accuracy=0.6, loss=1.0, ece=0.3, per_domain={"books": 0.5, "games": 2 / 3}, kl_from_base=0.4
        ),
        domain_examples={"books": 12, "games": 18},
    )
    pooled = pool_evaluations([a, b])
    assert pooled.num_examples == 40
    assert pooled.accuracy == pytest.approx((8 + 18) / 40) and pooled.loss == pytest.approx((5 + 30) / 40)
    assert pooled.ece == pytest.approx((1 + 9) / 40) and pooled.kl_from_base == pytest.approx((2 + 12) / 40)
    assert pooled.per_domain == pytest.approx({"books": (8 + 6) / 22, "games": 2 / 3})
    with pytest.raises(ValidationError):  # counts that do not add up are refused
        NodeEvaluation(metrics=a.metrics, domain_examples={"books": 9})
