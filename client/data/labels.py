"""Turning the labels found in a file into class indices, with the names behind them.

Rule (applied per file): if every label is an integer — a JSON integer, an
integral JSON number, or text such as ``1`` or `` 0 `` — the integers are the class
indices and class ``i`` is named ``str(i)``. Otherwise every label is read as text
(JSON booleans as ``true``/``false``) and the distinct texts are numbered in sorted
order: labels ``neg``/``pos`` become 0/1 with names ``("neg", "pos")``. A caller that
needs another order names the classes explicitly (the ``classes`` option).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sentinel.client.data.exceptions import DataFileError

__all__ = ["RawLabel", "encode_labels"]

RawLabel = tuple[object, int]
"""A label as read (str, int, float or bool) and the 1-based line it came from."""

_INTEGER = re.compile(r"[+-]?\d+")


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip())
    return None


def _as_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).strip()


def encode_labels(
    raw: Sequence[RawLabel], path: str | Path, classes: Sequence[str] | None = None
) -> tuple[list[int], tuple[str, ...]]:
    """Class indices for `raw` labels read from `path`, and the name of each class.

    Parameters
    ----------
    raw
        Each label as read with its 1-based line number (used in error messages).
    path
        The file the labels come from (named in error messages).
    classes
        Class names in index order; when given, every label must be one of them.
    """
    for value, line in raw:
        if not isinstance(value, str | int | float | bool):
            raise DataFileError(path, f"label {value!r} is not a number, string or boolean", line=line)
        if not _as_text(value):
            raise DataFileError(path, "label is empty", line=line)
    if classes is not None:
        index = {name: i for i, name in enumerate(classes)}
        labels = []
        for value, line in raw:
            if _as_text(value) not in index:
                raise DataFileError(path, f"label {_as_text(value)!r} is not one of the classes {list(classes)}", line=line)
            labels.append(index[_as_text(value)])
        return labels, tuple(classes)
    integers = [_as_int(value) for value, _ in raw]
    if all(i is not None for i in integers):
        ints = [i for i in integers if i is not None]
        for i, (_, line) in zip(ints, raw, strict=True):
            if i < 0:
                raise DataFileError(path, f"label {i} is negative; class indices start at 0", line=line)
        return ints, tuple(str(i) for i in range(max(ints, default=-1) + 1))
    names = sorted({_as_text(value) for value, _ in raw})
    index = {name: i for i, name in enumerate(names)}
    return [index[_as_text(value)] for value, _ in raw], tuple(names)
