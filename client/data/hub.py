"""Loader of a Hugging Face Hub dataset through the optional `datasets` package.

`datasets` is not a dependency of this project: it is imported when an ``hf:`` spec
is loaded, and its absence is reported as a `MissingDependencyError`. Loading
follows the library's own caching and network rules (offline, only datasets already
in its cache or on local paths load).
"""

from __future__ import annotations

from typing import Any

from sentinel.client.data.examples import Example, LabelledDataset
from sentinel.client.data.exceptions import DataError, MissingDependencyError
from sentinel.client.data.files import DEFAULT_DOMAIN
from sentinel.client.data.labels import encode_labels

__all__ = ["load_hf"]


def load_hf(
    name: str,
    *,
    split: str = "train",
    config: str | None = None,
    text: str = "text",
    label: str = "label",
    domain: str | None = None,
    classes: tuple[str, ...] | None = None,
) -> LabelledDataset:
    """Examples of split `split` of Hub dataset `name` (optionally its `config`).

    `text`, `label` and `domain` name the columns (without `domain`, every example
    is in domain ``"default"``). A `ClassLabel` label column keeps its own names;
    other labels are numbered as `client.data.labels` describes.
    """
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported only when used
    except ImportError as e:
        raise MissingDependencyError(
            "the `hf:` data scheme needs the `datasets` package, which is not installed "
            "(install it with `pip install datasets`, or export the data to CSV/JSONL)"
        ) from e
    try:
        table: Any = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # the library raises many unrelated types (network, missing split...)
        raise DataError(f"cannot load Hugging Face dataset {name!r} (config {config!r}, split {split!r}): {e}") from e
    missing = [c for c in (text, label, domain) if c is not None and c not in table.column_names]
    if missing:
        raise DataError(f"Hugging Face dataset {name!r} has no column `{missing[0]}` (columns: {table.column_names})")
    texts = [str(t).strip() for t in table[text]]
    raw_labels = list(table[label])
    names = getattr(table.features[label], "names", None)
    where = f"hf:{name}[{split}]"
    if names is not None and classes is None:
        labels, label_names = [int(v) for v in raw_labels], tuple(names)
        if any(y < 0 for y in labels):
            raise DataError(f"{where} has unlabelled rows (label -1); choose a labelled `split`")
    else:
        if names is not None:  # explicit `classes` reorder a ClassLabel column by name
            raw_labels = [names[v] if v >= 0 else v for v in raw_labels]
        # Row numbers stand in for line numbers in error messages.
        labels, label_names = encode_labels([(v, i + 1) for i, v in enumerate(raw_labels)], where, classes)
    domains = [str(d) for d in table[domain]] if domain is not None else [DEFAULT_DOMAIN] * len(texts)
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise DataError(f"{where}, row {empty + 1}: column `{text}` is empty")
    examples = [Example(t, y, d) for t, y, d in zip(texts, labels, domains, strict=True)]
    return LabelledDataset(examples, label_names)
