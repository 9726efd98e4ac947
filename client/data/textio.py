"""Reading a data file's text whatever its encoding: UTF-8, else latin-1."""

from __future__ import annotations

from pathlib import Path

from sentinel.client.data.exceptions import DataFileError

__all__ = ["read_text", "split_lines"]


def read_text(path: str | Path) -> str:
    """The text of `path`, decoded as UTF-8 (a BOM is dropped) or, if that fails, latin-1.

    Real datasets mix encodings file by file (the UCI IMDb file is ISO-8859-1), and
    every byte sequence is valid latin-1, so the fallback never fails; the price is
    that a corrupt UTF-8 file is read as latin-1 rather than rejected.
    """
    path = Path(path)
    if not path.exists():
        raise DataFileError(path, "no such file")
    if not path.is_file():
        raise DataFileError(path, "is not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataFileError(path, f"cannot be read: {e.strerror or e}") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def split_lines(text: str) -> list[str]:
    """Lines of `text` split on LF, CRLF or CR only.

    Unlike `str.splitlines`, latin-1 text may hold U+0085 or U+001C, which must not
    end a line.
    """
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
