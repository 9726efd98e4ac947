"""The built-in task: procedurally generated one-sentence reviews with a sentiment label.

Four domains (phones, movies, restaurants, hotels), each with its own aspects, and
four difficulty levels. The label is fixed first; the sentence is then built so that
its meaning carries that label, following these rules:

- **0 plain** — one clause, one sentiment word, no negation: "The battery is
  excellent." The label is the word's polarity.
- **1 negation** — one clause whose single sentiment word sits under one negation
  (not, n't, never, no, nothing): "The screen is not good." → negative, "There was
  nothing wrong with the room." → positive. The label is the opposite of the word's
  polarity. Only words whose negation clearly reverses them are negated ("not bad",
  "not good"; never "not excellent", which merely hedges).
- **2 contrast** — two clauses about two aspects with opposite polarities, joined by
  "but", "; however," or "although"/"even though". The conceded clause (the one
  before "but"/"however", or the one introduced by "although"/"even though") is
  outweighed: the *other* clause decides the label. So "The food was bland but the
  service was wonderful" is positive, and so is "The service was wonderful, although
  the food was bland". Each clause is itself plain (0) or negated (1).
- **3 intensifiers and double negation** — intensifiers keep polarity ("absolutely
  superb"); "not at all", "far from", "anything but", "hardly" each negate once
  ("not at all bad" → positive); two negations cancel ("It is not true that the plot
  was not good" → positive, "I was never unhappy with the bed" → positive); and
  negated comparatives are superlatives ("The view could not have been better",
  "I have never come across a worse menu"), labelled by the comparative.

Generation is deterministic by seed and unbounded (`iter_reviews`); labels alternate
so that every prefix is balanced to within one example, and every block of
2 × domains × difficulties examples covers each (domain, difficulty, label) once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from sentinel.client.data.examples import Example
from sentinel.client.data.review_lexicon import (
    ADJECTIVES,
    ATTITUDE_VERBS,
    CLOSERS,
    COMPARATIVES,
    FEELINGS,
    GENERAL_OPENERS,
    INTENSIFIERS,
    NEGATABLE,
    NEGATIVE,
    POSITIVE,
    REVIEW_DOMAINS,
    VERB_PHRASES,
    Aspect,
    ReviewDomain,
)

__all__ = ["REVIEW_DOMAINS", "DIFFICULTIES", "LABEL_NAMES", "iter_reviews", "generate_reviews"]

_T = TypeVar("_T")

DIFFICULTIES: tuple[int, ...] = (0, 1, 2, 3)
LABEL_NAMES: tuple[str, ...] = ("negative", "positive")
"""Class names of the review task: label 0 is negative, 1 positive."""


@dataclass(frozen=True)
class _Ctx:
    """What every clause of one review shares: the random source, domain and tense."""

    rng: random.Random
    domain: ReviewDomain
    past: bool

    def pick(self, options: Sequence[_T]) -> _T:
        return options[self.rng.randrange(len(options))]


def _the(a: Aspect) -> str:
    return f"the {a.noun}"


def _be(c: _Ctx, a: Aspect, negated: bool = False) -> str:
    verb = ("were" if a.plural else "was") if c.past else ("are" if a.plural else "is")
    if not negated:
        return verb
    return c.pick((f"{verb} not", f"{verb}n't"))


def _do_not(c: _Ctx, a: Aspect) -> str:
    verb = "did" if c.past else ("do" if a.plural else "does")
    return c.pick((f"{verb} not", f"{verb}n't"))


def _verb(c: _Ctx, forms: tuple[str, str, str], a: Aspect) -> str:
    base, third, past = forms
    return past if c.past else (base if a.plural else third)


def _indefinite(a: Aspect, adjective: str) -> str:
    phrase = f"{adjective} {a.noun}"
    if a.mass:
        return phrase
    return f"{'an' if adjective[0] in 'aeiou' else 'a'} {phrase}"


def _i_was(c: _Ctx) -> str:
    return "I was" if c.past else "I am"


# --- difficulty 0: one affirmative clause; label = polarity of its word -------------
def _plain_copula(c: _Ctx, a: Aspect, p: int) -> str:
    return f"{_the(a)} {_be(c, a)} {c.pick(ADJECTIVES[p] + NEGATABLE[p])}"


def _plain_found(c: _Ctx, a: Aspect, p: int) -> str:
    word = c.pick(ADJECTIVES[p] + NEGATABLE[p])
    if c.rng.random() < 0.5:
        return f"I {'found' if c.past else 'find'} {_the(a)} {word}"
    return f"I {'thought' if c.past else 'think'} {_the(a)} {_be(c, a)} {word}"


def _plain_verb(c: _Ctx, a: Aspect, p: int) -> str:
    return f"{_the(a)} {_verb(c, c.pick(VERB_PHRASES[p]), a)}"


def _plain_attitude(c: _Ctx, a: Aspect, p: int) -> str:
    present, past = c.pick(ATTITUDE_VERBS[p])
    return f"I {past if c.past else present} {_the(a)}"


def _plain_exclaim(c: _Ctx, a: Aspect, p: int) -> str:
    adjectives = [w for w in ADJECTIVES[p] + NEGATABLE[p] if not w.startswith("a ")]
    return f"what {_indefinite(a, c.pick(adjectives))}"


# --- difficulty 1: one negation over a word of the opposite polarity ----------------
def _negated_copula(c: _Ctx, a: Aspect, p: int) -> str:
    return f"{_the(a)} {_be(c, a, negated=True)} {c.pick(NEGATABLE[-p])}"


def _negated_verb(c: _Ctx, a: Aspect, p: int) -> str:
    forms = c.pick(VERB_PHRASES[-p])
    if c.rng.random() < 0.5:
        return f"{_the(a)} never {_verb(c, forms, a)}"
    return f"{_the(a)} {_do_not(c, a)} {forms[0]}"


def _negated_call(c: _Ctx, a: Aspect, p: int) -> str:
    return f"I would not call {_the(a)} {c.pick(NEGATABLE[-p])}"


def _negated_nothing(c: _Ctx, a: Aspect, p: int) -> str:
    there = "there was" if c.past else "there is"
    if p == POSITIVE:
        return f"{there} nothing wrong with {_the(a)}"
    return f"{there} nothing {c.pick(('special', 'good', 'impressive'))} about {_the(a)}"


def _negated_feeling(c: _Ctx, a: Aspect, p: int) -> str:
    if p == POSITIVE:
        return f"I {'had' if c.past else 'have'} no complaints about {_the(a)}"
    return f"{_i_was(c)} not {c.pick(FEELINGS[POSITIVE])} with {_the(a)}"


def _negated_can(c: _Ctx, a: Aspect, p: int) -> str:
    can = c.pick(("couldn't", "could not") if c.past else ("can't", "cannot"))
    verb = c.pick(("fault", "complain about")) if p == POSITIVE else "recommend"
    return f"I {can} {verb} {_the(a)}"


def _negated_attitude(c: _Ctx, a: Aspect, p: int) -> str:
    do = c.pick(("did not", "didn't") if c.past else ("do not", "don't"))
    return f"I {do} {c.pick(('love', 'enjoy'))} {_the(a)}"


# --- difficulty 3: intensifiers, idiomatic negation, double negation ----------------
def _intensified(c: _Ctx, a: Aspect, p: int) -> str:
    if c.rng.random() < 0.6:
        return f"{_the(a)} {_be(c, a)} {c.pick(INTENSIFIERS)} {c.pick(ADJECTIVES[p])}"
    present, past = c.pick(ATTITUDE_VERBS[p])
    return f"I {c.pick(INTENSIFIERS[:4])} {past if c.past else present} {_the(a)}"


def _idiomatic_negation(c: _Ctx, a: Aspect, p: int) -> str:
    word = c.pick(NEGATABLE[-p])
    form = c.rng.randrange(4)
    if form == 0:
        return f"{_the(a)} {_be(c, a, negated=True)} at all {word}"
    if form == 1:
        return f"{_the(a)} {_be(c, a)} {c.pick(('far from', 'anything but'))} {word}"
    if form == 2:
        return f"hardly anything about {_the(a)} {'was' if c.past else 'is'} {word}"
    return f"not once did {_the(a)} {c.pick(VERB_PHRASES[-p])[0]}"


def _not_very(c: _Ctx, a: Aspect, p: int) -> str:
    word = c.pick(("good", "impressive", "pleasant", "enjoyable", "satisfying"))
    return f"{_the(a)} {_be(c, a, negated=True)} {c.pick(('very', 'particularly', 'especially'))} {word}"


def _double_negation(c: _Ctx, a: Aspect, p: int) -> str:
    inner = f"{_the(a)} {_be(c, a, negated=True)} {c.pick(NEGATABLE[p])}"
    return f"{c.pick(('it is not true that', 'I would never say'))} {inner}"


def _never_feeling(c: _Ctx, a: Aspect, p: int) -> str:
    # "never unhappy" (two negations) is positive; "never happy" (one) is negative.
    feeling = c.pick(FEELINGS[-p])
    return f"{'I was never' if c.past else 'I have never been'} {feeling} with {_the(a)}"


def _negated_comparative(c: _Ctx, a: Aspect, p: int) -> str:
    comparative = COMPARATIVES[p]
    if c.rng.random() < 0.5:
        return f"{_the(a)} could not have been {comparative}"
    return f"I have never come across {_indefinite(a, comparative)}"


_Render = Callable[[_Ctx, Aspect, int], str]


@dataclass(frozen=True)
class _Frame:
    """A clause pattern: its difficulty, the labels it can express, whether it nests."""

    render: _Render
    difficulty: int
    polarities: tuple[int, ...] = (POSITIVE, NEGATIVE)
    embeddable: bool = True


_FRAMES: tuple[_Frame, ...] = (
    _Frame(_plain_copula, 0), _Frame(_plain_found, 0), _Frame(_plain_verb, 0),
    _Frame(_plain_attitude, 0), _Frame(_plain_exclaim, 0, embeddable=False),
    _Frame(_negated_copula, 1), _Frame(_negated_verb, 1), _Frame(_negated_call, 1),
    _Frame(_negated_nothing, 1), _Frame(_negated_feeling, 1), _Frame(_negated_can, 1),
    _Frame(_negated_attitude, 1, (NEGATIVE,)),
    _Frame(_intensified, 3), _Frame(_idiomatic_negation, 3), _Frame(_not_very, 3, (NEGATIVE,)),
    _Frame(_double_negation, 3), _Frame(_never_feeling, 3), _Frame(_negated_comparative, 3),
)

_CONTRASTS: tuple[str, ...] = (
    "{concede}, but {decide}", "{concede} but {decide}", "{concede}; however, {decide}",
    "although {concede}, {decide}", "even though {concede}, {decide}",
    "{decide}, although {concede}", "{decide}, even though {concede}",
)
"""Contrast patterns: `decide` carries the label, `concede` the opposite polarity."""


def _clause(c: _Ctx, a: Aspect, p: int, difficulties: Sequence[int], nested: bool) -> str:
    frames = [f for f in _FRAMES
              if f.difficulty in difficulties and p in f.polarities and (f.embeddable or not nested)]
    return c.pick(frames).render(c, a, p)


def _body(c: _Ctx, difficulty: int, p: int) -> str:
    if difficulty != 2:
        return _clause(c, c.pick(c.domain.aspects), p, (difficulty,), nested=False)
    decide_aspect, concede_aspect = c.rng.sample(c.domain.aspects, 2)
    return c.pick(_CONTRASTS).format(
        decide=_clause(c, decide_aspect, p, (0, 1), nested=True),
        concede=_clause(c, concede_aspect, -p, (0, 1), nested=True),
    )


def _review(rng: random.Random, domain: ReviewDomain, difficulty: int, label: int) -> Example:
    c = _Ctx(rng, domain, past=rng.random() < 0.5)
    text = _body(c, difficulty, POSITIVE if label == 1 else NEGATIVE)
    exclaims = text.startswith("what ")
    if not exclaims and rng.random() < 0.4:
        text = f"{c.pick(GENERAL_OPENERS + domain.openers)} {text}"
    if not exclaims and rng.random() < 0.25:
        text += c.pick(CLOSERS)
    text = text[0].upper() + text[1:] + ("!" if exclaims or rng.random() < 0.15 else ".")
    return Example(text=text, label=label, domain=domain.name, difficulty=difficulty)


def _checked(domains: Sequence[str] | None, difficulties: Sequence[int] | None) -> tuple[list[str], list[int]]:
    if isinstance(domains, str):
        raise ValueError(f"`domains` must be a sequence of domain names, not the string {domains!r}")
    names = list(dict.fromkeys(REVIEW_DOMAINS if domains is None else domains))
    unknown = [d for d in names if d not in REVIEW_DOMAINS]
    if unknown or not names:
        raise ValueError(f"`domains` must name some of {sorted(REVIEW_DOMAINS)}, got {list(domains or [])}")
    levels = list(dict.fromkeys(DIFFICULTIES if difficulties is None else difficulties))
    bad = [d for d in levels if d not in DIFFICULTIES or isinstance(d, bool)]
    if bad or not levels:
        raise ValueError(f"`difficulties` must be some of {list(DIFFICULTIES)}, got {list(difficulties or [])}")
    return names, levels


def iter_reviews(
    seed: int = 0,
    domains: Sequence[str] | None = None,
    difficulties: Sequence[int] | None = None,
) -> Iterator[Example]:
    """Yield review examples without end, deterministically for a given `seed`.

    Parameters
    ----------
    seed
        Seed of the generator; the same seed and arguments give the same stream.
    domains
        Domain names to draw from (default: all of `REVIEW_DOMAINS`).
    difficulties
        Difficulty levels to draw from (default: all of `DIFFICULTIES`).

    Labels alternate positive/negative in random order within each pair, so any
    prefix is balanced to within one example; each block of
    2 × len(domains) × len(difficulties) examples holds every (domain, difficulty,
    label) combination exactly once.
    """
    names, levels = _checked(domains, difficulties)
    rng = random.Random(seed)
    combos = [(name, level) for name in names for level in levels]
    while True:
        positives, negatives = combos[:], combos[:]
        rng.shuffle(positives)
        rng.shuffle(negatives)
        for positive, negative in zip(positives, negatives, strict=True):
            pair = [(positive, 1), (negative, 0)]
            if rng.random() < 0.5:
                pair.reverse()
            for (name, level), label in pair:
                yield _review(rng, REVIEW_DOMAINS[name], level, label)


def generate_reviews(
    n: int,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    difficulties: Sequence[int] | None = None,
) -> list[Example]:
    """The first `n` examples of `iter_reviews(seed, domains, difficulties)`.

    Balanced: ``n // 2`` examples of each label (one extra of either when `n` is odd).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"`n` must be a non-negative int, got {n!r}")
    return list(islice(iter_reviews(seed, domains, difficulties), n))
