"""One entry point for every data source: a spec string in, labelled examples out.

Schemes:

- ``builtin:reviews`` — the generated review task; options ``n`` (default 4000),
  ``domains`` and ``difficulties`` (comma-separated; default all). Balanced labels.
- ``csv:PATH``, ``tsv:PATH`` — a file with a header row; ``jsonl:PATH`` — one JSON
  object per line. Options ``text``, ``label`` (column names, default ``text`` and
  ``label``), ``domain`` (default ``domain``, used when present), ``classes``
  (class names in index order; default as `client.data.labels` describes).
- ``uci-sentiment:DIR`` — the UCI Sentiment Labelled Sentences folder; option
  ``domains`` (``phones``/``amazon``, ``movies``/``imdb``, ``restaurants``/``yelp``).
- ``hf:NAME`` — a Hugging Face dataset (needs the optional `datasets` package);
  options ``split`` (default ``train``), ``config``, ``text``, ``label``, ``domain``,
  ``classes``.

Every scheme except ``builtin`` also takes ``n``: keep a seeded random sample of
``n`` examples (in their original order). Without it files load whole, in file
order, and `seed` is unused; shuffling is the partitioner's and splitter's job.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from sentinel.client.data import reviews
from sentinel.client.data.examples import Example, LabelledDataset
from sentinel.client.data.exceptions import DataSpecError
from sentinel.client.data.files import Columns, load_delimited, load_jsonl
from sentinel.client.data.hub import load_hf
from sentinel.client.data.spec import DataSpec, SpecOptions, parse_spec
from sentinel.client.data.uci import UCI_FILES, UCI_SOURCES, load_uci_sentiment

__all__ = ["KNOWN_SCHEMES", "BUILTIN_TASKS", "load_examples", "load_labelled_dataset"]

BUILTIN_TASKS: tuple[str, ...] = ("reviews",)
DEFAULT_REVIEWS = 4000
_COLUMN_OPTIONS = ("text", "label", "domain", "classes", "n")


def _builtin(spec: DataSpec, seed: int) -> LabelledDataset:
    if spec.target not in BUILTIN_TASKS:
        raise DataSpecError(f"unknown built-in task {spec.target!r} in {spec.raw!r}; known: {', '.join(BUILTIN_TASKS)}")
    options = SpecOptions(spec, ("n", "domains", "difficulties"))
    difficulties = options.integers("difficulties")
    if difficulties is not None and any(d not in reviews.DIFFICULTIES for d in difficulties):
        raise DataSpecError(f"option `difficulties` in {spec.raw!r} must be some of {list(reviews.DIFFICULTIES)}")
    examples = reviews.generate_reviews(
        options.integer("n", DEFAULT_REVIEWS, minimum=1) or DEFAULT_REVIEWS,
        seed,
        options.choices("domains", reviews.REVIEW_DOMAINS),
        difficulties,
    )
    return LabelledDataset(examples, reviews.LABEL_NAMES)


def _columns(options: SpecOptions) -> Columns:
    classes = options.names("classes")
    return Columns(
        text=options.text("text", "text") or "text",
        label=options.text("label", "label") or "label",
        domain=options.text("domain", "domain") or "domain",
        domain_required=options.has("domain"),
        classes=tuple(classes) if classes is not None else None,
    )


def _file(loader: Callable[[Path, Columns], LabelledDataset]) -> Callable[[DataSpec, int], LabelledDataset]:
    def load(spec: DataSpec, seed: int) -> LabelledDataset:
        options = SpecOptions(spec, _COLUMN_OPTIONS)
        return _sample(loader(Path(spec.target), _columns(options)), options, seed)

    return load


def _uci(spec: DataSpec, seed: int) -> LabelledDataset:
    options = SpecOptions(spec, ("domains", "n"))
    chosen = options.choices("domains", list(UCI_FILES) + list(UCI_SOURCES))
    return _sample(load_uci_sentiment(spec.target, chosen), options, seed)


def _hf(spec: DataSpec, seed: int) -> LabelledDataset:
    options = SpecOptions(spec, ("split", "config") + _COLUMN_OPTIONS)
    classes = options.names("classes")
    dataset = load_hf(
        spec.target,
        split=options.text("split", "train") or "train",
        config=options.text("config"),
        text=options.text("text", "text") or "text",
        label=options.text("label", "label") or "label",
        domain=options.text("domain"),
        classes=tuple(classes) if classes is not None else None,
    )
    return _sample(dataset, options, seed)


def _sample(dataset: LabelledDataset, options: SpecOptions, seed: int) -> LabelledDataset:
    """Keep a seeded random sample of ``n`` examples (option `n`), in their original order."""
    n = options.integer("n", minimum=1)
    if n is None:
        return dataset
    if n > len(dataset.examples):
        raise DataSpecError(
            f"option `n` in {options.spec.raw!r} asks for {n} examples but the source has {len(dataset.examples)}"
        )
    keep = sorted(random.Random(seed).sample(range(len(dataset.examples)), n))
    return replace(dataset, examples=[dataset.examples[i] for i in keep])


_LOADERS: dict[str, Callable[[DataSpec, int], LabelledDataset]] = {
    "builtin": _builtin,
    "csv": _file(lambda path, columns: load_delimited(path, ",", columns)),
    "tsv": _file(lambda path, columns: load_delimited(path, "\t", columns)),
    "jsonl": _file(load_jsonl),
    "uci-sentiment": _uci,
    "hf": _hf,
}
KNOWN_SCHEMES: tuple[str, ...] = tuple(_LOADERS)


def load_labelled_dataset(spec: str, *, seed: int = 0) -> LabelledDataset:
    """Load the dataset `spec` names, with the name of each class index.

    Raises `DataSpecError` for a malformed spec, an unknown scheme or option, and
    `DataFileError` (file, line, problem) for a bad file; both are `ValueError`.
    """
    parsed = parse_spec(spec)
    loader = _LOADERS.get(parsed.scheme)
    if loader is None:
        raise DataSpecError(
            f"unknown data scheme `{parsed.scheme}:` in {spec!r}; known schemes: "
            + ", ".join(f"`{s}:`" for s in KNOWN_SCHEMES)
        )
    return loader(parsed, seed)


def load_examples(spec: str, *, seed: int = 0) -> list[Example]:
    """Load the examples `spec` names (see the module docstring for the schemes).

    `seed` drives the built-in generator and the ``n`` sample of other sources.
    """
    return load_labelled_dataset(spec, seed=seed).examples
