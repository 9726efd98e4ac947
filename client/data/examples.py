"""The unit of data a node trains on, and small summaries over lists of it."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Example", "LabelledDataset", "num_labels", "domains", "label_counts"]

DIFFICULTY_NAMES: dict[int, str] = {
    0: "plain",
    1: "negation",
    2: "contrast",
    3: "intensifier or double negation",
}
"""What each `Example.difficulty` level means (loaders of real data always use 0)."""


@dataclass(frozen=True)
class Example:
    """One labelled text: a class index, the domain it comes from and how hard it is.

    `label` is a class index (0, 1, ...). `domain` names where the text comes from
    (the unit of a by-domain federated split). `difficulty` is 0 for plain text and
    for every example read from real data; the built-in review task uses 1 for
    negation, 2 for contrast and 3 for intensifiers and double negation.
    """

    text: str
    label: int
    domain: str = "default"
    difficulty: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.label, int) or isinstance(self.label, bool) or self.label < 0:
            raise ValueError(f"`label` must be a non-negative int (a class index), got {self.label!r}")
        if not isinstance(self.difficulty, int) or isinstance(self.difficulty, bool) or self.difficulty < 0:
            raise ValueError(f"`difficulty` must be a non-negative int, got {self.difficulty!r}")


@dataclass(frozen=True)
class LabelledDataset:
    """Examples together with the name of each class index.

    ``label_names[i]`` names class ``i``. Loaders that read text labels number them
    in sorted order, so this is where the mapping back to the original text lives.
    """

    examples: list[Example]
    label_names: tuple[str, ...]

    @property
    def label_to_index(self) -> dict[str, int]:
        """Class name → class index (the inverse of `label_names`)."""
        return {name: i for i, name in enumerate(self.label_names)}

    def __len__(self) -> int:
        return len(self.examples)


def num_labels(examples: Sequence[Example]) -> int:
    """Number of classes a classifier over `examples` needs: one more than the largest label.

    A partition may lack some classes; pass the whole dataset (or use
    `LabelledDataset.label_names`) when sizing a classifier head.
    """
    if not examples:
        raise ValueError("`examples` is empty: the number of labels is undefined")
    return max(example.label for example in examples) + 1


def domains(examples: Sequence[Example]) -> list[str]:
    """The distinct domains present in `examples`, sorted."""
    return sorted({example.domain for example in examples})


def label_counts(examples: Sequence[Example]) -> dict[int, int]:
    """How many examples carry each label, by label in increasing order."""
    return dict(sorted(Counter(example.label for example in examples).items()))
