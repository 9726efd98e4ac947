"""What a validator measures: loss change with its standard error, per-head entropy shift, output KL."""

from __future__ import annotations

import copy

import torch
from sentinel.client.data import Example
from sentinel.client.data.batching import iter_batches
from sentinel.models.loading import load_base_model
from sentinel.models.validation import compare, loss_gate_fails, read_model


def _batches(base, n: int = 24):  # noqa: ANN001, ANN202
    examples = [Example(text=f"sample text number {i} " * (1 + i % 3), label=i % 2) for i in range(n)]
    return list(iter_batches(base.tokenizer, examples, 8, 24))


def test_a_model_compared_with_itself_has_no_shift_no_kl_and_no_loss_change() -> None:
    base = load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)
    batches = _batches(base)
    reading = read_model(base.model, batches)
    m = compare(reading, read_model(copy.deepcopy(base.model), batches))
    assert m.loss_change == 0.0 and m.kl == 0.0 and m.entropy_shift_norm == 0.0
    assert reading.entropy.shape == (2, 4) and ((reading.entropy > 0) & (reading.entropy <= 1)).all()
    assert not loss_gate_fails(m, tolerance=0.0)


def test_a_perturbed_model_shows_entropy_shift_kl_and_a_significant_loss_rise() -> None:
    base = load_base_model("tiny-bert", task="classification", num_labels=2, seed=0)
    batches = _batches(base)
    reference = read_model(base.model, batches)
    sharpened = copy.deepcopy(base.model)
    with torch.no_grad():
        attention = sharpened.bert.encoder.layer[0].attention.self
        attention.query.weight.mul_(200.0)  # attention collapses onto few keys
        attention.key.weight.mul_(200.0)
    m = compare(reference, read_model(sharpened, batches))
    assert m.entropy_shift[0].mean() < -0.05  # layer 0's heads sharpen
    assert m.entropy_shift_norm > 0.05 and m.kl > 0
    # A classifier pushed toward the wrong answer makes every example's loss rise: significantly worse.
    wrong = copy.deepcopy(base.model)
    labels = torch.cat([b["labels"] for b in batches])
    with torch.no_grad():
        wrong.classifier.weight.zero_()
        wrong.classifier.bias.copy_(torch.tensor([0.0, 0.0]))
    flat = compare(reference, read_model(wrong, batches))
    with torch.no_grad():
        wrong.classifier.bias.copy_(torch.tensor([3.0, -3.0]) if labels.float().mean() > 0.5 else torch.tensor([-3.0, 3.0]))
    worse = compare(reference, read_model(wrong, batches))
    assert worse.loss_change > flat.loss_change
    assert loss_gate_fails(worse, tolerance=0.0)
    assert worse.loss_change_se > 0
