"""The deterministic data layout of a federation: the coordinator's test set and each node's share.

Every node (and the coordinator) derives the same layout from the same spec and
seed, so no data ever travels: the coordinator keeps a held-out test set that no
node trains on, and node ``i`` trains on partition ``i`` of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from sentinel.client.data import DataError, Example, holdout_split, load_examples, partition


@dataclass(frozen=True)
class FederatedData:
    """The coordinator's held-out test set and the nodes' partitions."""

    test: tuple[Example, ...]
    partitions: tuple[tuple[Example, ...], ...]
    num_labels: int


@lru_cache(maxsize=8)
def federated_split(
    spec: str,
    num_partitions: int,
    method: str = "iid",
    alpha: float = 0.5,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> FederatedData:
    """Load ``spec`` and split it into a held-out test set and ``num_partitions`` node shares."""
    examples = load_examples(spec, seed=seed)
    pool, test = holdout_split(examples, test_fraction, seed=seed)
    parts = partition(pool, num_partitions, method, alpha=alpha, seed=seed)  # type: ignore[arg-type]
    labels = {e.label for e in examples}
    return FederatedData(
        test=tuple(test),
        partitions=tuple(tuple(p) for p in parts),
        num_labels=max(labels) + 1 if labels else 0,
    )


def own_train_val(spec: str, num_labels: int, val_fraction: float, seed: int, partition_id: int = 0) -> tuple[list[Example], list[Example]]:
    """A node's train and validation examples from its own data spec (``sentinel node --dataset``).

    The whole spec is the node's: nothing is held out for the coordinator, which
    has its own test set. Labels must be classes of the run's classifier
    (``num_labels``); a label outside raises :class:`DataError` naming it.
    """
    examples = load_examples(spec, seed=seed)
    bad = sorted({e.label for e in examples if not 0 <= e.label < num_labels})
    if bad:
        raise DataError(f"dataset {spec!r} has label(s) {bad[:5]} outside the run's {num_labels} classes 0..{num_labels - 1}")
    if len(examples) < 2:
        raise DataError(f"dataset {spec!r} has {len(examples)} example(s); a node needs at least 2 (train and validation)")
    return holdout_split(examples, val_fraction, seed=seed + 1000 + partition_id)


def node_train_val(data: FederatedData, partition_id: int, val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A node's own train and validation examples (stratified, seeded by its partition)."""
    if not 0 <= partition_id < len(data.partitions):
        raise ValueError(f"`partition-id` {partition_id} is outside 0..{len(data.partitions) - 1}")
    train, val = holdout_split(list(data.partitions[partition_id]), val_fraction, seed=seed + 1000 + partition_id)
    return train, val
