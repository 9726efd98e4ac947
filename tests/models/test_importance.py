"""Head importance: attention entropy and Michel et al. gradient importance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sentinel.models.components import attention_modules, model_layout
from sentinel.models.importance import attention_entropy, gradient_importance, head_importance, normalise_per_layer
from sentinel.models.loading import LoadedModel, load_base_model
from sentinel.models.pruning import prune_heads

PRESETS = ["tiny-bert", "tiny-gpt2", "tiny-llama"]
TEXTS = ["the quick brown fox jumps", "consent matters", "a somewhat longer third sentence", "hi"]


def _batch(base: LoadedModel, texts: list[str] = TEXTS, labels: bool = True, **kwargs: object) -> dict[str, torch.Tensor]:
    batch = dict(base.tokenizer(texts, return_tensors="pt", **({"padding": True} | kwargs)))
    if labels:
        batch["labels"] = torch.tensor([i % 2 for i in range(len(texts))])
    return batch


def _zero_rows(proj: object, rows: slice) -> None:
    """Zero output features `rows` of a projection (weight and bias)."""
    with torch.no_grad():
        if proj.transposed:
            proj.module.weight[:, proj.offset + rows.start : proj.offset + rows.stop] = 0
        else:
            proj.module.weight[rows] = 0
        if proj.module.bias is not None:
            start = proj.offset + rows.start if proj.transposed else rows.start
            proj.module.bias[start : start + (rows.stop - rows.start)] = 0


def _head_rows(base: LoadedModel, head: int) -> slice:
    d = model_layout(base.model).head_dim
    return slice(head * d, (head + 1) * d)


@pytest.mark.parametrize("preset", PRESETS)
def test_uniform_head_has_maximal_entropy(preset: str) -> None:
    base = load_base_model(preset)
    parts = attention_modules(base.model)[1]
    with torch.no_grad():  # sharpen every head of layer 1 so "uniform" is not the random-init default
        parts.q.module.weight.mul_(60.0)
        parts.k.module.weight.mul_(60.0)
    _zero_rows(parts.q, _head_rows(base, 2))  # q = 0: all scores equal, attention uniform
    batch = _batch(base, ["a sentence of some length"], labels=False)
    length = batch["input_ids"].shape[1]
    entropy = attention_entropy(base.model, [batch])
    if base.family == "bert":
        expected = math.log(length)  # every query sees all keys
    else:
        expected = float(np.mean([math.log(n) for n in range(1, length + 1)]))  # query t sees t+1 keys
    assert entropy[1, 2] == pytest.approx(expected, abs=1e-6)
    others = np.delete(entropy[1], 2)
    assert (others < expected - 0.01).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_normalised_entropy_is_one_for_a_uniform_head_and_ignores_padding(preset: str) -> None:
    base = load_base_model(preset)
    parts = attention_modules(base.model)[1]
    with torch.no_grad():
        parts.q.module.weight.mul_(60.0)
        parts.k.module.weight.mul_(60.0)
    _zero_rows(parts.q, _head_rows(base, 2))
    short, long = "a short one", "a sentence of quite some length"
    alone = attention_entropy(base.model, [_batch(base, [short], labels=False)], normalised=True)
    padded = attention_entropy(base.model, [_batch(base, [short, long], labels=False)], normalised=True)
    assert alone[1, 2] == pytest.approx(1.0, abs=1e-5)  # uniform over the keys each query may see
    assert padded[1, 2] == pytest.approx(1.0, abs=1e-5)
    assert (np.delete(alone[1], 2) < 0.99).all() and (alone >= 0).all() and (alone <= 1 + 1e-6).all()


@pytest.mark.parametrize("preset", PRESETS)
def test_padding_does_not_change_entropy(preset: str) -> None:
    base = load_base_model(preset)
    tight = _batch(base, TEXTS, labels=False)
    padded = _batch(base, TEXTS, labels=False, padding="max_length", max_length=tight["input_ids"].shape[1] + 7)
    assert padded["input_ids"].shape[1] > tight["input_ids"].shape[1]
    np.testing.assert_allclose(attention_entropy(base.model, [padded]), attention_entropy(base.model, [tight]), atol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_head_without_output_has_exactly_zero_gradient_importance(preset: str) -> None:
    base = load_base_model(preset)
    parts = attention_modules(base.model)
    d = model_layout(base.model).head_dim
    with torch.no_grad():  # layer 0 head 1: o-projection input columns zeroed
        o = parts[0].o
        if o.transposed:
            o.module.weight[d : 2 * d] = 0
        else:
            o.module.weight[:, d : 2 * d] = 0
    if base.family != "llama":  # layer 1 head 3: value rows zeroed (llama shares v across a group)
        _zero_rows(parts[1].v, _head_rows(base, 3))
    importance = gradient_importance(base.model, [_batch(base)])
    assert importance[0, 1] == 0.0
    if base.family != "llama":
        assert importance[1, 3] == 0.0
    assert np.count_nonzero(importance) >= 6


def test_importance_is_l2_normalised_per_layer() -> None:
    base = load_base_model("tiny-gpt2")
    importance = gradient_importance(base.model, [_batch(base)])
    np.testing.assert_allclose(np.linalg.norm(importance, axis=1), [1.0, 1.0], rtol=1e-9)
    assert (importance >= 0).all()


def test_normalisation_keeps_an_all_zero_layer_at_zero() -> None:
    out = normalise_per_layer(np.array([[0.0, 0.0], [3.0, 4.0]]))
    np.testing.assert_array_equal(out, [[0.0, 0.0], [0.6, 0.8]])


def test_absolute_value_is_taken_per_example_not_per_batch() -> None:
    base = load_base_model("tiny-bert")
    whole = gradient_importance(base.model, [_batch(base)])
    singles = [{k: v[i : i + 1] for k, v in _batch(base).items()} for i in range(len(TEXTS))]
    np.testing.assert_allclose(gradient_importance(base.model, singles), whole, rtol=1e-5)


def test_gradient_importance_leaves_parameter_grads_and_mode_alone() -> None:
    base = load_base_model("tiny-llama")
    base.model.train()
    gradient_importance(base.model, [_batch(base)])
    assert all(p.grad is None for p in base.model.parameters())
    assert base.model.training


def test_custom_loss_and_missing_labels() -> None:
    base = load_base_model("tiny-bert")
    batch = _batch(base, labels=False)
    with pytest.raises(ValueError, match="`labels`"):
        gradient_importance(base.model, [batch])

    def loss_fn(outputs: object, _batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs.logits[:, 0].mean()

    assert np.isfinite(gradient_importance(base.model, [batch], loss_fn=loss_fn)).all()


def test_pruned_heads_get_nan_entropy_and_zero_importance() -> None:
    base = load_base_model("tiny-llama")
    prune_heads(base.model, {0: [1, 2]})
    result = head_importance(base.model, [_batch(base)])
    assert np.isnan(result.entropy[0, [1, 2]]).all() and np.isfinite(result.entropy[0, [0, 3]]).all()
    assert (result.gradient[0, [1, 2]] == 0).all() and (result.gradient[0, [0, 3]] > 0).all()
    as_dict = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert as_dict["entropy"][0][1] is None and len(as_dict["gradient"]) == 2


@pytest.mark.parametrize("preset", PRESETS)
def test_one_pass_probe_equals_the_separate_measurements(preset: str) -> None:
    """`head_importance` takes entropy, normalised entropy and gradients from one pass: the values of the three apart."""
    base = load_base_model(preset)
    batches = [_batch(base), _batch(base, TEXTS[::-1][:3])]  # padded, two batch shapes
    fused = head_importance(base.model, batches)
    np.testing.assert_allclose(fused.entropy, attention_entropy(base.model, batches), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(
        fused.normalised_entropy, attention_entropy(base.model, batches, normalised=True), rtol=1e-6, atol=1e-9
    )
    np.testing.assert_allclose(fused.gradient, gradient_importance(base.model, batches), rtol=1e-5, atol=1e-8)
    base.model.train()
    head_importance(base.model, batches)
    assert base.model.training  # the caller's mode is restored
    assert all(p.grad is None for p in base.model.parameters())


@pytest.mark.parametrize("preset", PRESETS)
def test_without_gradient_the_probe_measures_the_same_entropies_in_one_forward_pass(preset: str) -> None:
    base = load_base_model(preset)
    batches = [_batch(base), _batch(base, TEXTS[1:])]
    full, entropies_only = head_importance(base.model, batches), head_importance(base.model, batches, gradient=False)
    assert entropies_only.gradient is None and "gradient" not in entropies_only.to_dict()
    np.testing.assert_allclose(entropies_only.entropy, full.entropy, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(entropies_only.normalised_entropy, full.normalised_entropy, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("gradient", [False, True])
def test_the_probe_counts_accuracy_and_loss_as_evaluation_does(gradient: bool) -> None:
    """A node probes its validation data once: the probe's own forward passes give the accuracy and loss a
    separate evaluation would (so a node does not run those examples through the model twice)."""
    from sentinel.models.global_model import ClassifierTally, evaluate_classifier

    base = load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)
    batches = [_batch(base, TEXTS[:2]), _batch(base, TEXTS[2:])]
    tally = ClassifierTally()
    probed = head_importance(base.model, batches, gradient=gradient, tally=tally)
    assert tally.count == len(TEXTS)
    accuracy, loss = evaluate_classifier(base.model, batches)
    assert tally.result() == pytest.approx((accuracy, loss), abs=1e-6)
    np.testing.assert_array_equal(probed.entropy, head_importance(base.model, batches, gradient=gradient).entropy)
    # the rest of the data evaluated into the same tally gives the whole set's figures
    rest = [_batch(base, ["one more", "and the last one here"])]
    assert evaluate_classifier(base.model, rest, tally) == pytest.approx(evaluate_classifier(base.model, batches + rest), abs=1e-6)
    assert all(math.isnan(x) for x in ClassifierTally().result())  # nothing counted
