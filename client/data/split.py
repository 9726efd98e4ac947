"""Train/validation/test splits stratified by label and domain.

The coordinator keeps a held-out test set that no node trains on (`holdout_split`);
a node splits its own partition for training and validation
(`train_val_test_split`). Both keep every (domain, label) group's share of each split
proportional to its size, so labels stay balanced and domains stay represented.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sentinel.client.data.examples import Example

__all__ = ["DataSplit", "train_val_test_split", "holdout_split", "stratified_counts"]


@dataclass(frozen=True)
class DataSplit:
    """Three disjoint parts of one dataset."""

    train: list[Example]
    val: list[Example]
    test: list[Example]


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value) or not 0 <= value < 1:
        raise ValueError(f"`{name}` must be a number in [0, 1), got {value!r}")


def _target(fraction: float, total: int) -> int:
    """Examples a split of `fraction` gets: rounded, and at least one when `fraction` > 0."""
    return 0 if fraction == 0 else max(1, round(fraction * total))


def stratified_counts(sizes: Sequence[int], total: int) -> list[int]:
    """Share `total` among groups of `sizes` proportionally (largest remainder), capped by size.

    The counts sum to `total` (at most ``sum(sizes)``); ties in remainder go to the
    earlier group.
    """
    whole = sum(sizes)
    if total > whole:
        raise ValueError(f"`total` ({total}) exceeds the number of items ({whole})")
    quotas = [total * size / whole if whole else 0.0 for size in sizes]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda g: (-(quotas[g] - counts[g]), g))
    short = total - sum(counts)
    for g in by_remainder:
        if short == 0:
            break
        if counts[g] < sizes[g]:
            counts[g] += 1
            short -= 1
    return counts


def _groups(examples: Sequence[Example], rng: np.random.Generator) -> list[list[int]]:
    """Indices of each (domain, label) group, shuffled, groups in sorted key order."""
    by_key: dict[tuple[str, int], list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        by_key[(example.domain, example.label)].append(i)
    return [rng.permutation(by_key[key]).tolist() for key in sorted(by_key)]


def train_val_test_split(
    examples: Sequence[Example],
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    *,
    seed: int = 0,
) -> DataSplit:
    """Split `examples` into train, validation and test parts, stratified by (domain, label).

    Each part has ``round(fraction × len(examples))`` examples (at least one when its
    fraction is positive), shared among (domain, label) groups in proportion to their
    size. The order inside each part is shuffled by `seed`.
    """
    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    n_val, n_test = _target(val_fraction, len(examples)), _target(test_fraction, len(examples))
    if n_val + n_test >= len(examples):
        raise ValueError(
            f"`val_fraction` + `test_fraction` leave no training examples out of {len(examples)} "
            f"({n_val} validation, {n_test} test)"
        )
    rng = np.random.default_rng(seed)
    groups = _groups(examples, rng)
    test_counts = stratified_counts([len(g) for g in groups], n_test)
    rest = [g[c:] for g, c in zip(groups, test_counts, strict=True)]
    val_counts = stratified_counts([len(g) for g in rest], n_val)
    test = [i for g, c in zip(groups, test_counts, strict=True) for i in g[:c]]
    val = [i for g, c in zip(rest, val_counts, strict=True) for i in g[:c]]
    train = [i for g, c in zip(rest, val_counts, strict=True) for i in g[c:]]
    return DataSplit(*([examples[int(i)] for i in rng.permutation(part)] for part in (train, val, test)))


def holdout_split(
    examples: Sequence[Example], test_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Set aside a stratified test part that no node trains on: ``(rest, test)``."""
    split = train_val_test_split(examples, 0.0, test_fraction, seed=seed)
    return split.train, split.test
