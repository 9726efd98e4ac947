"""The UCI Sentiment Labelled Sentences loader, on made-up files and on the real folder."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from sentinel.client.data import DataFileError, DataSpecError, load_examples, load_labelled_dataset
from sentinel.client.data.uci import UCI_FILES

# Made-up lines in the UCI layout (sentence, TAB, label), not taken from the data.
_FILES = {
    "amazon_cells_labelled.txt": ("Sturdy clip, long battery.  \t1\n", "Screen cracked on day two.\t0\n"),
    "imdb_labelled.txt": ("A caf\u00e9 scene worth the ticket. \t1\n", "Wooden lines, no tension.\t0\n"),
    "yelp_labelled.txt": ('"Cold soup, said ""hot"" on the menu."\t0\n', "Friendly bartender.\t1\n"),
}


def _folder(root: Path, files: dict[str, tuple[str, ...]] = _FILES) -> Path:
    for name, lines in files.items():
        encoding = "latin-1" if name.startswith("imdb") else "utf-8"
        (root / name).write_bytes("".join(lines).replace("\n", "\r\n").encode(encoding))
    return root


def test_folder_loads_three_domains_with_clean_text(tmp_path):
    dataset = load_labelled_dataset(f"uci-sentiment:{_folder(tmp_path)}")
    assert dataset.label_names == ("negative", "positive")
    assert [(e.domain, e.label) for e in dataset.examples] == [
        ("phones", 1), ("phones", 0), ("movies", 1), ("movies", 0), ("restaurants", 0), ("restaurants", 1),
    ]
    texts = [e.text for e in dataset.examples]
    assert texts[0] == "Sturdy clip, long battery."
    assert texts[2] == "A caf\u00e9 scene worth the ticket."
    assert texts[4] == 'Cold soup, said "hot" on the menu.'
    assert all(e.difficulty == 0 for e in dataset.examples)


def test_domains_option_takes_domain_or_source_names(tmp_path):
    folder = _folder(tmp_path)
    assert {e.domain for e in load_examples(f"uci-sentiment:{folder}?domains=imdb,restaurants")} == {"movies", "restaurants"}
    with pytest.raises(DataSpecError, match="option `domains`"):
        load_examples(f"uci-sentiment:{folder}?domains=twitter")


def test_a_single_file_can_be_loaded(tmp_path):
    folder = _folder(tmp_path)
    examples = load_examples(f"uci-sentiment:{folder / 'yelp_labelled.txt'}")
    assert {e.domain for e in examples} == {"restaurants"} and len(examples) == 2


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("No tab here 1\n", "missing tab between the sentence and its label"),
        ("Fine keys.\tyes\n", "non-integer label 'yes'"),
        ("Fine keys.\t2\n", "label 2 is not 0 or 1"),
        ("  \t1\n", "empty sentence"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, problem):
    files = dict(_FILES)
    files["amazon_cells_labelled.txt"] = ("Good grip.\t1\n", "\n", line)
    _folder(tmp_path, files)
    with pytest.raises(DataFileError, match=re.escape(problem)) as caught:
        load_examples(f"uci-sentiment:{tmp_path}")
    assert str(caught.value).startswith(f"{tmp_path / 'amazon_cells_labelled.txt'}, line 3: ")


def test_a_missing_file_or_folder_is_named(tmp_path):
    files = {k: v for k, v in _FILES.items() if not k.startswith("imdb")}
    _folder(tmp_path, files)
    with pytest.raises(DataFileError, match=re.escape(f"{tmp_path / 'imdb_labelled.txt'}: no such file")):
        load_examples(f"uci-sentiment:{tmp_path}")
    assert len(load_examples(f"uci-sentiment:{tmp_path}?domains=phones,yelp")) == 4
    with pytest.raises(DataFileError, match="no such folder"):
        load_examples(f"uci-sentiment:{tmp_path / 'nowhere'}")


def test_real_folder_loads_whole_and_clean(uci_dir):
    examples = load_examples(f"uci-sentiment:{uci_dir}")
    by_domain = Counter(e.domain for e in examples)
    lines = {d: sum(1 for raw in (uci_dir / f).read_bytes().split(b"\n") if raw.strip()) for d, f in UCI_FILES.items()}
    assert by_domain == lines and min(lines.values()) > 900
    labels = Counter(e.label for e in examples)
    assert set(labels) == {0, 1} and abs(labels[0] - labels[1]) <= 10
    assert all(e.text == e.text.strip() and e.text for e in examples)
    assert not any("\ufffd" in e.text or "\r" in e.text for e in examples)
    # The ISO-8859-1 IMDb file holds accented letters, decoded rather than mangled.
    assert any(not e.text.isascii() for e in examples if e.domain == "movies")
    assert all(e.text.isascii() for e in examples if e.domain != "movies")
