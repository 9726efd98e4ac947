"""Component patterns: fnmatch's answers for `*`/`?` globs, in bounded time, and refusals for everything else."""

from __future__ import annotations

import fnmatch
import random
import time

import pytest
from sentinel.governance.exceptions import InvalidRequestError
from sentinel.governance.limits import MAX_PATTERN
from sentinel.governance.patterns import check_pattern, matches, select
from sentinel.protos.vocabulary import standard_components

ALPHABET = "ab.*?01"


def test_matches_agrees_with_fnmatchcase_on_random_globs() -> None:
    rng = random.Random(13)
    for _ in range(5000):
        pattern = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 8)))
        text = "".join(rng.choice("ab.01") for _ in range(rng.randint(0, 10)))
        assert matches(pattern, text) == fnmatch.fnmatchcase(text, pattern), (pattern, text)


def test_component_globs_select_what_fnmatch_selects() -> None:
    ids = standard_components(12, 12)
    for pattern in ("layer.0.*", "layer.1?.head.*", "layer.*.ffn", "*", "classifier", "layer.?.head.1?", "*.head.3"):
        assert select(pattern, ids) == [c for c in ids if fnmatch.fnmatchcase(c, pattern)]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("", "non-empty"), ("[" * 16_000, "at most"), ("layer.[0-3].*", "character sets"), ("a]", "character sets"),
     ("layer.0\n", "printable"), ("x" * (MAX_PATTERN + 1), "at most")],
)
def test_other_patterns_are_refused_with_a_reason(pattern: str, why: str) -> None:
    with pytest.raises(InvalidRequestError, match=why):
        check_pattern(pattern)


def test_the_worst_accepted_pattern_is_matched_at_once() -> None:
    pattern, text = "*a" * (MAX_PATTERN // 2), "a" * 127 + "b"
    started = time.perf_counter()
    assert not matches(check_pattern(pattern), text)
    assert time.perf_counter() - started < 1.0
