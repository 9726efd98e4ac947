"""Component patterns: how proposals and queries name components, matched in linear time.

A pattern is a component id, or a glob over component ids in which ``*``
stands for any run of characters (also none) and ``?`` for exactly one; every
other character stands for itself, so ``layer.0.*`` names every component of
layer 0. Character sets (``fnmatch``'s ``[...]``) are refused: translating them
costs time quadratic in the pattern's length, and component ids need none.
Patterns are at most :data:`~governance.limits.MAX_PATTERN` printable characters.

Matching is a greedy scan that remembers the last ``*`` (at most
``len(pattern) * len(text)`` steps, with both bounded), with results equal to
``fnmatch.fnmatchcase`` on every pattern this module accepts (a test pins it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import AfterValidator
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.limits import MAX_PATTERN


def check_pattern(pattern: str, field: str = "pattern") -> str:
    """``pattern`` itself if it is a valid component pattern; :class:`InvalidRequestError` naming ``field`` otherwise."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidRequestError(f"`{field}` must be a non-empty component id or glob")
    if len(pattern) > MAX_PATTERN:
        raise InvalidRequestError(f"`{field}` is {len(pattern)} characters long; at most {MAX_PATTERN} are allowed")
    if "[" in pattern or "]" in pattern:
        raise InvalidRequestError(f"`{field}` {pattern[:40]!r}: character sets `[...]` are not supported; use `*` and `?`")
    if not pattern.isprintable():
        raise InvalidRequestError(f"`{field}` must consist of printable characters")
    return pattern


def matches(pattern: str, text: str) -> bool:
    """True iff ``text`` matches the (checked) glob ``pattern`` as a whole."""
    p = t = 0
    star, resume = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, resume, p = p, t, p + 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == text[t]):
            p, t = p + 1, t + 1
        elif star >= 0:  # let the last `*` swallow one more character and retry from there
            resume += 1
            p, t = star + 1, resume
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def select(pattern: str, names: Iterable[str]) -> list[str]:
    """The ``names`` matching ``pattern``, in their order (``pattern`` is checked first)."""
    check_pattern(pattern)
    return [name for name in names if matches(pattern, name)]


ComponentPattern = Annotated[str, AfterValidator(lambda value: check_pattern(value, "components"))]
"""A component id or glob in a proposal (pydantic): checked by :func:`check_pattern`."""
