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
