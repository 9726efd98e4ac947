"""Data spec strings: ``SCHEME:TARGET?option=value&...``, parsed and read with checks.

A spec names one dataset in one string, so a run configuration can carry it
(``builtin:reviews?n=2000&domains=phones,movies``, ``csv:data/train.csv?text=sentence``).
Option values that are lists are comma-separated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from sentinel.client.data.exceptions import DataSpecError

__all__ = ["DataSpec", "parse_spec", "SpecOptions"]


@dataclass(frozen=True)
class DataSpec:
    """A parsed spec: scheme (``csv``), target (a path or name) and raw string options."""

    scheme: str
    target: str
    options: dict[str, str] = field(default_factory=dict)
    raw: str = ""


def parse_spec(spec: str) -> DataSpec:
    """Split ``SCHEME:TARGET?options`` into its parts; the scheme is not checked here.

    The target ends at the first ``?``. Options are URL query syntax; an option
    given twice is an error.
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise DataSpecError(f"data spec {spec!r} is not of the form `SCHEME:TARGET[?options]`")
    scheme, _, rest = spec.partition(":")
    target, _, query = rest.partition("?")
    scheme, target = scheme.strip().lower(), target.strip()
    if not scheme or not target:
        raise DataSpecError(f"data spec {spec!r} needs both a scheme and a target, as in `csv:data.csv`")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as e:
        raise DataSpecError(f"data spec {spec!r} has malformed options {query!r}: {e}") from e
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise DataSpecError(f"option `{key}` is given twice in data spec {spec!r}")
        options[key] = value.strip()
    return DataSpec(scheme, target, options, spec)


class SpecOptions:
    """Typed, checked access to the options of one spec, given the options its loader knows."""

    def __init__(self, spec: DataSpec, known: Iterable[str]) -> None:
        self.spec = spec
        self.known = sorted(known)
        unknown = sorted(set(spec.options) - set(self.known))
        if unknown:
            raise DataSpecError(
                f"unknown option `{unknown[0]}` in data spec {spec.raw!r}; "
                f"the `{spec.scheme}:` scheme knows {', '.join(f'`{k}`' for k in self.known) or 'no options'}"
            )

    def _error(self, name: str, problem: str) -> DataSpecError:
        return DataSpecError(f"option `{name}` in data spec {self.spec.raw!r} {problem}")

    def has(self, name: str) -> bool:
        """Whether the spec sets option `name`."""
        return name in self.spec.options

    def text(self, name: str, default: str | None = None) -> str | None:
        """Option `name` as a non-empty string, or `default` when absent."""
        if name not in self.spec.options:
            return default
        value = self.spec.options[name]
        if not value:
            raise self._error(name, "is empty")
        return value

    def integer(self, name: str, default: int | None = None, *, minimum: int = 0) -> int | None:
        """Option `name` as an int of at least `minimum`, or `default` when absent."""
        value = self.text(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError as e:
            raise self._error(name, f"must be an integer, got {value!r}") from e
        if number < minimum:
            raise self._error(name, f"must be at least {minimum}, got {number}")
        return number

    def names(self, name: str) -> list[str] | None:
        """Option `name` as a comma-separated list of non-empty names, or None when absent."""
        value = self.text(name)
        if value is None:
            return None
        items = [item.strip() for item in value.split(",")]
        if not all(items):
            raise self._error(name, f"has an empty item in {value!r}")
        return items

    def integers(self, name: str) -> list[int] | None:
        """Option `name` as a comma-separated list of ints, or None when absent."""
        items = self.names(name)
        if items is None:
            return None
        try:
            return [int(item) for item in items]
        except ValueError as e:
            raise self._error(name, f"must be comma-separated integers, got {self.spec.options[name]!r}") from e

    def choices(self, name: str, allowed: Iterable[str]) -> list[str] | None:
        """Option `name` as a list whose items all come from `allowed`, or None when absent."""
        items = self.names(name)
        allowed = list(allowed)
        if items is not None:
            bad = [item for item in items if item not in allowed]
            if bad:
                raise self._error(name, f"names unknown value {bad[0]!r}; known: {', '.join(allowed)}")
        return items
