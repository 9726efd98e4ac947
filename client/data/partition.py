"""Splitting one dataset across federated nodes: IID, one domain per node, or Dirichlet skew.

Every partitioner is a pure function of its arguments and `seed`: the same call
gives the same partitions. Together the partitions hold every example exactly once,
and no partition is empty.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from sentinel.client.data.examples import Example
from sentinel.protos.vocabulary import PARTITION_METHODS, PartitionMethod

__all__ = ["PartitionMethod", "partition", "iid_partition", "domain_partition", "dirichlet_partition"]

_MAX_DIRICHLET_DRAWS = 100


def _check(examples: Sequence[Example], num_partitions: int) -> None:
    if not isinstance(num_partitions, int) or isinstance(num_partitions, bool) or num_partitions < 1:
        raise ValueError(f"`num_partitions` must be an int of at least 1, got {num_partitions!r}")
    if num_partitions > len(examples):
        raise ValueError(
            f"`num_partitions` ({num_partitions}) exceeds the number of examples ({len(examples)}): "
            "some partition would be empty"
        )


def _take(examples: Sequence[Example], indices: Sequence[int] | np.ndarray) -> list[Example]:
    return [examples[int(i)] for i in indices]


def iid_partition(examples: Sequence[Example], num_partitions: int, *, seed: int = 0) -> list[list[Example]]:
    """Shuffle, then cut into `num_partitions` parts whose sizes differ by at most one."""
    _check(examples, num_partitions)
    order = np.random.default_rng(seed).permutation(len(examples))
    return [_take(examples, part) for part in np.array_split(order, num_partitions)]


def domain_partition(examples: Sequence[Example], num_partitions: int, *, seed: int = 0) -> list[list[Example]]:
    """Give each partition the examples of one domain (non-IID by source).

    With at least as many partitions as domains, partition ``i`` takes the ``i mod D``-th
    domain (sorted by name) and a domain's examples are shuffled and shared evenly
    among its partitions (6 partitions over 3 domains: 2 per domain). With fewer
    partitions than domains, each partition holds several whole domains: domains go,
    largest first, to the partition with the fewest examples so far.
    """
    _check(examples, num_partitions)
    rng = np.random.default_rng(seed)
    by_domain: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_domain[example.domain].append(i)
    names = sorted(by_domain)
    parts: list[list[int]] = [[] for _ in range(num_partitions)]
    if num_partitions >= len(names):
        for d, name in enumerate(names):
            owners = list(range(d, num_partitions, len(names)))
            if len(by_domain[name]) < len(owners):
                raise ValueError(
                    f"domain {name!r} has {len(by_domain[name])} examples but {len(owners)} partitions to fill; "
                    "lower `num_partitions`"
                )
            shuffled = rng.permutation(by_domain[name])
            for owner, chunk in zip(owners, np.array_split(shuffled, len(owners)), strict=True):
                parts[owner] = chunk.tolist()
    else:
        for name in sorted(names, key=lambda n: (-len(by_domain[n]), n)):
            smallest = min(range(num_partitions), key=lambda p: (len(parts[p]), p))
            parts[smallest].extend(by_domain[name])
        parts = [rng.permutation(part).tolist() for part in parts]
    return [_take(examples, part) for part in parts]


def dirichlet_partition(
    examples: Sequence[Example],
    num_partitions: int,
    *,
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[list[Example]]:
    """Label-skewed partitions: each label's examples are shared by proportions drawn from Dir(α).

    For each label, proportions over the partitions are drawn from a symmetric
    Dirichlet(`alpha`) and that label's shuffled examples are cut accordingly: small
    α gives each node few labels, large α approaches IID. A draw that leaves some
    partition with fewer than `min_size` examples is redrawn (up to 100 times, as in
    common FL benchmarks); if every draw fails, the last one is repaired by moving
    random examples from the largest partitions into the short ones, so no partition
    is ever smaller than `min_size`.
    """
    _check(examples, num_partitions)
    if not isinstance(alpha, int | float) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"`alpha` must be a positive finite number, got {alpha!r}")
    if min_size < 1 or min_size * num_partitions > len(examples):
        raise ValueError(
            f"`min_size` ({min_size}) must be at least 1 and at most {len(examples) // num_partitions} "
            f"for {len(examples)} examples over {num_partitions} partitions"
        )
    rng = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_label[example.label].append(i)
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts: list[list[int]] = [[] for _ in range(num_partitions)]
        for label in sorted(by_label):
            indices = rng.permutation(by_label[label])
            proportions = rng.dirichlet(np.full(num_partitions, float(alpha)))
            cuts = (np.cumsum(proportions)[:-1] * len(indices)).round().astype(int)
            for part, chunk in zip(parts, np.split(indices, cuts), strict=True):
                part.extend(chunk.tolist())
        if min(len(part) for part in parts) >= min_size:
            break
    else:
        _top_up(parts, min_size, rng)
    return [_take(examples, rng.permutation(part)) for part in parts]


def _top_up(parts: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    """Move random examples from the largest partitions until each has `min_size`."""
    for part in parts:
        while len(part) < min_size:
            donor = max(parts, key=len)
            part.append(donor.pop(int(rng.integers(len(donor)))))


def partition(
    examples: Sequence[Example],
    num_partitions: int,
    method: PartitionMethod = "iid",
    *,
    alpha: float = 0.5,
    seed: int = 0,
) -> list[list[Example]]:
    """Split `examples` into `num_partitions` non-empty, disjoint partitions by `method`.

    ``"iid"`` shuffles and cuts evenly, ``"by-domain"`` gives each partition one
    domain (see `domain_partition`), ``"dirichlet"`` skews labels with concentration
    `alpha` (see `dirichlet_partition`; `alpha` is ignored by the other methods).
    """
    if method == "iid":
        return iid_partition(examples, num_partitions, seed=seed)
    if method == "by-domain":
        return domain_partition(examples, num_partitions, seed=seed)
    if method == "dirichlet":
        return dirichlet_partition(examples, num_partitions, alpha=alpha, seed=seed)
    raise ValueError(f"`method` must be one of {', '.join(map(repr, PARTITION_METHODS))}, got {method!r}")
