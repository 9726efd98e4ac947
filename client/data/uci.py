"""Loader of the UCI "Sentiment Labelled Sentences" folder (Kotzias et al., KDD 2015).

Three files, one sentence, a TAB and a 0/1 label per line. Each source is one
domain, named after what it reviews so that it lines up with the built-in task:
``amazon_cells_labelled.txt`` → ``phones``, ``imdb_labelled.txt`` → ``movies``,
``yelp_labelled.txt`` → ``restaurants`` (the source names ``amazon``, ``imdb`` and
``yelp`` are accepted wherever a domain is asked for). Each file is decoded as
UTF-8, falling back to latin-1 (the IMDb file is ISO-8859-1); line endings may be
CRLF; sentences are stripped of surrounding whitespace, and a sentence written as a
quoted CSV field (``"..."`` with ``""`` for a quote) is unquoted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sentinel.client.data.examples import Example, LabelledDataset
from sentinel.client.data.exceptions import DataFileError
from sentinel.client.data.textio import read_text, split_lines

__all__ = ["UCI_FILES", "UCI_SOURCES", "LABEL_NAMES", "load_uci_sentiment", "read_uci_file"]

UCI_FILES: dict[str, str] = {
    "phones": "amazon_cells_labelled.txt",
    "movies": "imdb_labelled.txt",
    "restaurants": "yelp_labelled.txt",
}
"""Domain → file name in the folder."""
UCI_SOURCES: dict[str, str] = {"amazon": "phones", "imdb": "movies", "yelp": "restaurants"}
"""Source name → domain."""
LABEL_NAMES: tuple[str, ...] = ("negative", "positive")


def _unquote(sentence: str) -> str:
    """The content of a well-formed quoted CSV field, or `sentence` unchanged."""
    if len(sentence) >= 2 and sentence[0] == sentence[-1] == '"':
        inner = sentence[1:-1]
        if '"' not in inner.replace('""', ""):
            return inner.replace('""', '"').strip()
    return sentence


def read_uci_file(path: str | Path, domain: str) -> list[Example]:
    """Examples of one UCI file, every one in `domain`; blank lines are skipped."""
    path = Path(path)
    examples = []
    for line, content in enumerate(split_lines(read_text(path)), start=1):
        if not content.strip():
            continue
        sentence, tab, label = content.rpartition("\t")
        if not tab:
            raise DataFileError(path, "missing tab between the sentence and its label", line=line)
        label = label.strip()
        if label not in {"0", "1"}:
            try:
                int(label)
            except ValueError:
                raise DataFileError(path, f"non-integer label {label!r}", line=line) from None
            raise DataFileError(path, f"label {label} is not 0 or 1", line=line)
        sentence = _unquote(sentence.strip())
        if not sentence:
            raise DataFileError(path, "empty sentence", line=line)
        examples.append(Example(sentence, int(label), domain))
    if not examples:
        raise DataFileError(path, "holds no examples")
    return examples


def load_uci_sentiment(folder: str | Path, domains: Sequence[str] | None = None) -> LabelledDataset:
    """Examples of the UCI folder (or of one of its files), in file order, domain by domain.

    Parameters
    ----------
    folder
        The ``sentiment labelled sentences`` folder, or one of its three files.
    domains
        Domains to read (``phones``, ``movies``, ``restaurants``, or the source names
        ``amazon``, ``imdb``, ``yelp``); default all three. Each one's file must exist.
    """
    folder = Path(folder)
    if folder.is_file():
        by_file = {name: domain for domain, name in UCI_FILES.items()}
        if folder.name not in by_file:
            raise DataFileError(folder, f"is not one of the UCI files {sorted(by_file)}")
        return LabelledDataset(read_uci_file(folder, by_file[folder.name]), LABEL_NAMES)
    if not folder.is_dir():
        raise DataFileError(folder, "no such folder (expected the UCI sentiment labelled sentences folder)")
    chosen = list(UCI_FILES) if domains is None else [UCI_SOURCES.get(d, d) for d in domains]
    unknown = [d for d in chosen if d not in UCI_FILES]
    if unknown:
        raise ValueError(f"`domains` has unknown UCI domain {unknown[0]!r}; known: {list(UCI_FILES) + list(UCI_SOURCES)}")
    examples: list[Example] = []
    for domain in dict.fromkeys(chosen):
        examples.extend(read_uci_file(folder / UCI_FILES[domain], domain))
    return LabelledDataset(examples, LABEL_NAMES)
