"""Partitioners: every example once, no empty node, the promised skew, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from sentinel.client.data import Example, generate_reviews, partition
from sentinel.client.data.partition import dirichlet_partition


@pytest.fixture(scope="module")
def examples():
    return generate_reviews(1200, seed=0, domains=["phones", "movies", "hotels"])


def _ids(parts):
    return Counter(id(e) for part in parts for e in part)


@pytest.mark.parametrize("method", ["iid", "by-domain", "dirichlet"])
@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_partitions_cover_every_example_exactly_once(examples, method, k):
    parts = partition(examples, k, method, seed=4)
    assert len(parts) == k and all(parts)
    ids = _ids(parts)
    assert sum(len(p) for p in parts) == len(examples) and set(ids) == {id(e) for e in examples}
    assert set(ids.values()) == {1}


@pytest.mark.parametrize("method", ["iid", "by-domain", "dirichlet"])
def test_same_seed_same_partitions(examples, method):
    assert partition(examples, 5, method, seed=1) == partition(examples, 5, method, seed=1)
    assert partition(examples, 5, method, seed=1) != partition(examples, 5, method, seed=2)


def test_iid_sizes_differ_by_at_most_one(examples):
    sizes = [len(p) for p in partition(examples, 7, "iid")]
    assert max(sizes) - min(sizes) <= 1


def test_by_domain_with_more_nodes_than_domains_shares_each_domain(examples):
    parts = partition(examples, 6, "by-domain", seed=3)
    owners = [{e.domain for e in p} for p in parts]
    assert all(len(o) == 1 for o in owners)
    assert Counter(next(iter(o)) for o in owners) == {"hotels": 2, "movies": 2, "phones": 2}
    assert [len(p) for p in parts] == [200] * 6


def test_by_domain_with_fewer_nodes_than_domains_keeps_domains_whole(examples):
    parts = partition(examples, 2, "by-domain")
    held = [{e.domain for e in p} for p in parts]
    assert sorted(len(h) for h in held) == [1, 2] and not held[0] & held[1]


def _skew(parts) -> float:
    """Mean total-variation distance between each partition's label mix and the whole's."""
    labels = sorted({e.label for p in parts for e in p})
    whole = np.array([sum(e.label == y for p in parts for e in p) for y in labels], float)
    whole /= whole.sum()
    dists = []
    for p in parts:
        mix = np.array([sum(e.label == y for e in p) for y in labels], float) / len(p)
        dists.append(0.5 * np.abs(mix - whole).sum())
    return float(np.mean(dists))


def test_dirichlet_skew_decreases_as_alpha_grows():
    examples = [Example(f"t{i}", i % 4) for i in range(2000)]
    skews = [np.mean([_skew(partition(examples, 10, "dirichlet", alpha=a, seed=s)) for s in range(5)])
             for a in (0.05, 0.5, 5.0, 500.0)]
    assert skews == sorted(skews, reverse=True)
    assert skews[0] > 0.4 and skews[-1] < 0.05


def test_dirichlet_never_leaves_a_partition_empty_even_when_skew_is_extreme():
    examples = [Example(f"t{i}", i % 2) for i in range(30)]
    for seed in range(20):
        parts = dirichlet_partition(examples, 12, alpha=0.001, seed=seed, min_size=2)
        assert all(len(p) >= 2 for p in parts) and sum(map(len, parts)) == 30


@pytest.mark.parametrize(
    ("k", "kwargs", "message"),
    [
        (0, {}, "`num_partitions`"),
        (1201, {}, "`num_partitions` (1201) exceeds the number of examples (1200)"),
        (3, {"method": "random"}, "`method`"),
        (3, {"method": "dirichlet", "alpha": 0.0}, "`alpha`"),
    ],
)
def test_bad_arguments_are_named(examples, k, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        partition(examples, k, **kwargs)
