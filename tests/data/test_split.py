"""Splits: disjoint, of the asked sizes, stratified by label and domain, deterministic."""

from __future__ import annotations

from collections import Counter

import pytest
from sentinel.client.data import generate_reviews, holdout_split, train_val_test_split
from sentinel.client.data.split import stratified_counts


@pytest.fixture(scope="module")
def examples():
    return generate_reviews(1000, seed=0)


def test_parts_are_disjoint_cover_everything_and_have_the_asked_sizes(examples):
    split = train_val_test_split(examples, 0.15, 0.1, seed=2)
    assert (len(split.train), len(split.val), len(split.test)) == (750, 150, 100)
    ids = Counter(id(e) for part in (split.train, split.val, split.test) for e in part)
    assert set(ids) == {id(e) for e in examples} and set(ids.values()) == {1}


def test_every_part_keeps_the_label_and_domain_mix(examples):
    split = train_val_test_split(examples, 0.2, 0.2, seed=5)
    whole = Counter((e.domain, e.label) for e in examples)
    for part in (split.train, split.val, split.test):
        mix = Counter((e.domain, e.label) for e in part)
        assert set(mix) == set(whole)
        for key, count in whole.items():
            assert abs(mix[key] / len(part) - count / len(examples)) < 0.02


def test_same_seed_same_split(examples):
    assert train_val_test_split(examples, seed=1) == train_val_test_split(examples, seed=1)
    assert train_val_test_split(examples, seed=1) != train_val_test_split(examples, seed=2)


def test_holdout_sets_aside_a_balanced_test_part(examples):
    rest, test = holdout_split(examples, 0.25, seed=0)
    assert len(test) == 250 and len(rest) == 750
    assert Counter(e.label for e in test) == {0: 125, 1: 125}
    assert not {id(e) for e in rest} & {id(e) for e in test}


def test_a_positive_fraction_of_a_tiny_set_still_gets_an_example(examples):
    split = train_val_test_split(examples[:6], 0.05, 0.05)
    assert (len(split.train), len(split.val), len(split.test)) == (4, 1, 1)


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [(-0.1, 0.1, "`val_fraction`"), (0.1, 1.0, "`test_fraction`"), (0.5, 0.5, "no training examples")],
)
def test_bad_fractions_are_named(examples, val, test, message):
    with pytest.raises(ValueError, match=message):
        train_val_test_split(examples, val, test)


def test_stratified_counts_are_proportional_and_exact():
    assert stratified_counts([50, 30, 20], 10) == [5, 3, 2]
    assert sum(stratified_counts([7, 5, 1], 6)) == 6
    assert stratified_counts([1, 1], 2) == [1, 1]
