"""Domain errors of the `client.data` package.

Every error is a `ValueError` (bad data is bad input) that carries a readable
`reason`; callers chain the underlying error with ``raise ... from e``.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Base class of every error raised by the `client.data` package."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DataSpecError(DataError):
    """A data spec string (scheme, target or one of its options) is malformed or unknown."""


class DataFileError(DataError):
    """A data file is missing or malformed; names the file and, where known, the 1-based line."""

    def __init__(self, path: str | Path, problem: str, *, line: int | None = None) -> None:
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line
        self.problem = problem


class MissingDependencyError(DataError, ImportError):
    """A loader needs an optional package that is not installed."""
