"""Loaders of tabular text files: CSV, TSV (both with a header row) and JSON Lines.

Every reader reports a bad file as a `DataFileError` naming the file, the 1-based
line and the problem. Text is stripped of surrounding whitespace; the domain comes
from the domain column when the file has one, else it is ``"default"``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from sentinel.client.data.examples import Example, LabelledDataset
from sentinel.client.data.exceptions import DataFileError
from sentinel.client.data.labels import RawLabel, encode_labels
from sentinel.client.data.textio import read_text, split_lines

__all__ = ["Columns", "load_delimited", "load_jsonl"]

DEFAULT_DOMAIN = "default"


@dataclass(frozen=True)
class Columns:
    """Which columns (or JSON keys) hold the text, the label and the domain."""

    text: str = "text"
    label: str = "label"
    domain: str = "domain"
    domain_required: bool = False
    """True when the caller named the domain column, so a file without it is an error."""
    classes: tuple[str, ...] | None = None
    """Class names in index order; None numbers the labels as `client.data.labels` describes."""


@dataclass(frozen=True)
class _Record:
    line: int
    text: str
    label: object
    domain: str


def _text(path: Path, line: int, column: str, value: object) -> str:
    if not isinstance(value, str):
        raise DataFileError(path, f"field `{column}` must be a string, got {type(value).__name__}", line=line)
    value = value.strip()
    if not value:
        raise DataFileError(path, f"field `{column}` is empty", line=line)
    return value


def _dataset(path: Path, records: list[_Record], columns: Columns) -> LabelledDataset:
    if not records:
        raise DataFileError(path, "holds no examples")
    raw: list[RawLabel] = [(r.label, r.line) for r in records]
    labels, names = encode_labels(raw, path, columns.classes)
    examples = [Example(r.text, label, r.domain) for r, label in zip(records, labels, strict=True)]
    return LabelledDataset(examples, names)


def load_delimited(path: str | Path, delimiter: str, columns: Columns = Columns()) -> LabelledDataset:
    """Read a CSV (``delimiter=","``) or TSV (``"\\t"``) file whose first row names the columns.

    Fields may be quoted as in CSV (``"a, b"``, ``""`` for a quote); blank lines are
    skipped.
    """
    path = Path(path)
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter=delimiter)
    records: list[_Record] = []
    header: list[str] | None = None
    where: tuple[int, int, int | None] = (0, 0, None)
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                where = _locate(path, line, header, columns)
                continue
            if len(row) != len(header):
                raise DataFileError(path, f"expected {len(header)} fields, found {len(row)}", line=line)
            domain = _text(path, line, columns.domain, row[where[2]]) if where[2] is not None else DEFAULT_DOMAIN
            label = row[where[1]].strip()
            if not label:
                raise DataFileError(path, f"field `{columns.label}` is empty", line=line)
            records.append(_Record(line, _text(path, line, columns.text, row[where[0]]), label, domain))
    except csv.Error as e:
        raise DataFileError(path, f"malformed {'TSV' if delimiter == chr(9) else 'CSV'}: {e}", line=reader.line_num) from e
    if header is None:
        raise DataFileError(path, "is empty (no header row)")
    return _dataset(path, records, columns)


def _locate(path: Path, line: int, header: list[str], columns: Columns) -> tuple[int, int, int | None]:
    """Positions of the text, label and (optional) domain columns in `header`."""
    for name in (columns.text, columns.label) + ((columns.domain,) if columns.domain_required else ()):
        if name not in header:
            raise DataFileError(path, f"missing column `{name}` (the header has {header})", line=line)
    domain = header.index(columns.domain) if columns.domain in header else None
    return header.index(columns.text), header.index(columns.label), domain


def load_jsonl(path: str | Path, columns: Columns = Columns()) -> LabelledDataset:
    """Read a JSON Lines file: one JSON object per line, blank lines skipped."""
    path = Path(path)
    records: list[_Record] = []
    for line, content in enumerate(split_lines(read_text(path)), start=1):
        if not content.strip():
            continue
        try:
            obj = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataFileError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=line) from e
        if not isinstance(obj, dict):
            raise DataFileError(path, f"expected a JSON object, found {type(obj).__name__}", line=line)
        for key in (columns.text, columns.label) + ((columns.domain,) if columns.domain_required else ()):
            if key not in obj:
                raise DataFileError(path, f"missing key `{key}` (the object has {sorted(obj)})", line=line)
        if obj[columns.label] is None:
            raise DataFileError(path, f"field `{columns.label}` is null", line=line)
        domain = _text(path, line, columns.domain, obj[columns.domain]) if columns.domain in obj else DEFAULT_DOMAIN
        records.append(_Record(line, _text(path, line, columns.text, obj[columns.text]), obj[columns.label], domain))
    return _dataset(path, records, columns)
