"""Loading CSV, TSV and JSONL files through spec strings; bad files and specs are named."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from sentinel.client.data import (
    KNOWN_SCHEMES,
    DataFileError,
    DataSpecError,
    Example,
    MissingDependencyError,
    domains,
    load_examples,
    load_labelled_dataset,
    num_labels,
)


def _write(path: Path, text: str, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def test_csv_with_quotes_crlf_and_a_domain_column(tmp_path):
    path = _write(tmp_path / "d.csv", 'text,label,domain\n"Loud, clear speakers",1,phones\nDull plot ,0,movies\n', newline="\r\n")
    assert load_examples(f"csv:{path}") == [
        Example("Loud, clear speakers", 1, "phones"),
        Example("Dull plot", 0, "movies"),
    ]


def test_tsv_with_custom_columns_and_no_domain(tmp_path):
    path = _write(tmp_path / "d.tsv", "id\tsentence\ty\n1\tA calm lobby\t0\n2\tA noisy bar\t1\n")
    examples = load_examples(f"tsv:{path}?text=sentence&label=y")
    assert [(e.text, e.label, e.domain) for e in examples] == [("A calm lobby", 0, "default"), ("A noisy bar", 1, "default")]


def test_latin1_file_is_decoded(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\nCaf\u00e9 cr\u00e8me,1\n", encoding="latin-1")
    assert load_examples(f"csv:{path}")[0].text == "Caf\u00e9 cr\u00e8me"


def test_utf8_with_bom_is_decoded(tmp_path):
    path = _write(tmp_path / "d.csv", "\ufefftext,label\nna\u00efve,0\n")
    assert load_examples(f"csv:{path}")[0].text == "na\u00efve"


def test_text_labels_are_numbered_in_sorted_order(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": "pos"}\n\n{"text": "b", "label": "neg"}\n{"text": "c", "label": "mixed"}\n')
    dataset = load_labelled_dataset(f"jsonl:{path}")
    assert dataset.label_names == ("mixed", "neg", "pos")
    assert [e.label for e in dataset.examples] == [2, 1, 0]
    assert dataset.label_to_index["neg"] == 1
    assert num_labels(dataset.examples) == 3


def test_classes_option_fixes_the_order(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\na,pos\nb,neg\n")
    dataset = load_labelled_dataset(f"csv:{path}?classes=neg,pos")
    assert [e.label for e in dataset.examples] == [1, 0] and dataset.label_names == ("neg", "pos")


def test_integer_labels_are_class_indices(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": 2, "domain": "x"}\n{"text": "b", "label": "0", "domain": "y"}\n')
    dataset = load_labelled_dataset(f"jsonl:{path}")
    assert [e.label for e in dataset.examples] == [2, 0]
    assert dataset.label_names == ("0", "1", "2")
    assert domains(dataset.examples) == ["x", "y"]


def test_json_booleans_are_class_names(tmp_path):
    path = _write(tmp_path / "d.jsonl", '{"text": "a", "label": true}\n{"text": "b", "label": false}\n')
    dataset = load_labelled_dataset(f"jsonl:{path}")
    assert dataset.label_names == ("false", "true") and [e.label for e in dataset.examples] == [1, 0]


def test_n_keeps_a_seeded_sample_in_file_order(tmp_path):
    lines = "".join(f"row {i},{i % 2}\n" for i in range(20))
    path = _write(tmp_path / "d.csv", "text,label\n" + lines)
    sample = load_examples(f"csv:{path}?n=5", seed=1)
    assert len(sample) == 5 and sample == load_examples(f"csv:{path}?n=5", seed=1)
    numbers = [int(e.text.split()[1]) for e in sample]
    assert numbers == sorted(numbers)
    with pytest.raises(DataSpecError, match="`n`"):
        load_examples(f"csv:{path}?n=21")


@pytest.mark.parametrize(
    ("name", "content", "line", "problem"),
    [
        ("d.csv", "text,label\na,1\nb\n", 3, "expected 2 fields, found 1"),
        ("d.csv", "sentence,label\na,1\n", 1, "missing column `text`"),
        ("d.csv", "text,label\na,1\n ,0\n", 3, "field `text` is empty"),
        ("d.csv", "text,label\na,1\nb,\n", 3, "field `label` is empty"),
        ("d.csv", "text,label\na,1\nb,-1\n", 3, "label -1 is negative"),
        ("d.tsv", "text\tlabel\na\t1\n\nb\t0\tx\n", 4, "expected 2 fields, found 3"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 0\n', 2, "invalid JSON"),
        ("d.jsonl", '{"text": "a", "label": 1}\n\n[1, 2]\n', 3, "expected a JSON object"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 0}\n', 2, "missing key `text`"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": 5, "label": 0}\n', 2, "field `text` must be a string"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n', 2, "field `label` is null"),
        ("d.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": [0]}\n', 2, "is not a number, string or boolean"),
    ],
)
def test_bad_files_name_file_line_and_problem(tmp_path, name, content, line, problem):
    path = _write(tmp_path / name, content, newline="\r\n")
    with pytest.raises(DataFileError, match=re.escape(problem)) as caught:
        load_examples(f"{name.split('.')[1]}:{path}")
    assert str(caught.value).startswith(f"{path}, line {line}: ")
    assert caught.value.line == line and isinstance(caught.value, ValueError)


def test_label_outside_the_named_classes_is_reported(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\na,neg\nb,meh\n")
    with pytest.raises(DataFileError, match=r"line 3: label 'meh' is not one of the classes"):
        load_examples(f"csv:{path}?classes=neg,pos")


def test_named_domain_column_must_exist(tmp_path):
    path = _write(tmp_path / "d.csv", "text,label\na,1\n")
    with pytest.raises(DataFileError, match="line 1: missing column `src`"):
        load_examples(f"csv:{path}?domain=src")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataFileError, match="no such file"):
        load_examples(f"csv:{tmp_path / 'absent.csv'}")
    with pytest.raises(DataFileError, match="no header row"):
        load_examples(f"csv:{_write(tmp_path / 'e.csv', '')}")
    with pytest.raises(DataFileError, match="holds no examples"):
        load_examples(f"jsonl:{_write(tmp_path / 'e.jsonl', chr(10))}")


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(DataSpecError) as caught:
        load_examples("parquet:data.parquet")
    assert all(f"`{scheme}:`" in str(caught.value) for scheme in KNOWN_SCHEMES)
    assert set(KNOWN_SCHEMES) >= {"builtin", "csv", "tsv", "jsonl", "uci-sentiment", "hf"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("reviews", "SCHEME:TARGET"),
        ("builtin:movies", "unknown built-in task 'movies'"),
        ("builtin:reviews?size=10", "unknown option `size`"),
        ("builtin:reviews?n=ten", "option `n`"),
        ("builtin:reviews?n=0", "option `n`"),
        ("builtin:reviews?domains=phones,cars", "option `domains`"),
        ("builtin:reviews?difficulties=0,7", "option `difficulties`"),
        ("builtin:reviews?difficulties=one", "option `difficulties`"),
        ("builtin:reviews?n=5&n=6", "option `n` is given twice"),
        ("csv:x.csv?sep=;", "unknown option `sep`"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(DataSpecError, match=re.escape(message)):
        load_examples(spec)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="`datasets` is installed here")
def test_hf_without_datasets_says_what_is_missing():
    with pytest.raises(MissingDependencyError, match="`datasets` package"):
        load_examples("hf:imdb?split=train")
