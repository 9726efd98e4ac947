"""Vocabulary of the built-in review task: domains, aspects, sentiment words, openers.

Written for this project (no sentence is taken from any dataset). Every sentiment
word or phrase the generator can emit appears in `SENTIMENT_LEXICON` with its
polarity, so a reader (or a test) can check a label against the words of its text.
Openers and closers are neutral: they carry no sentiment word and no negation.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITIVE, NEGATIVE = 1, -1
"""Polarity of a word; label 1 is positive, label 0 negative."""


@dataclass(frozen=True)
class Aspect:
    """Something a review talks about, with what its grammar needs."""

    noun: str
    plural: bool = False
    """Takes "are"/"were"/"do"."""
    mass: bool = False
    """Takes no indefinite article ("better acting", not "a better acting")."""


@dataclass(frozen=True)
class ReviewDomain:
    """One domain of the review task: its aspects and its own neutral openers."""

    name: str
    aspects: tuple[Aspect, ...]
    openers: tuple[str, ...]


def _aspects(spec: str) -> tuple[Aspect, ...]:
    """Parse "battery, speakers:pl, acting:mass" into aspects."""
    out = []
    for item in spec.split(","):
        noun, _, kind = item.strip().partition(":")
        out.append(Aspect(noun, plural=kind == "pl", mass=kind in {"mass", "pl"}))
    return tuple(out)


REVIEW_DOMAINS: dict[str, ReviewDomain] = {
    d.name: d
    for d in (
        ReviewDomain(
            "phones",
            _aspects(
                "phone, battery, screen, camera, speakers:pl, build quality:mass, software:mass,"
                " keyboard, reception:mass, charger, sound quality:mass, touchscreen"
            ),
            ("After a month with this phone,", "Having used it daily for six weeks,",
             "Since I switched to this model,", "For a mid-range handset,"),
        ),
        ReviewDomain(
            "movies",
            _aspects(
                "film, plot, acting:mass, soundtrack, dialogue:mass, ending, visual effects:pl,"
                " pacing:mass, cinematography:mass, characters:pl, cast, script"
            ),
            ("Having watched it last night,", "As a fan of the director,",
             "After the Sunday matinee,", "Watching it a second time,"),
        ),
        ReviewDomain(
            "restaurants",
            _aspects(
                "restaurant, food:mass, service:mass, dessert, portions:pl, staff:mass,"
                " atmosphere, wine list, menu, coffee:mass, pasta:mass, waiter"
            ),
            ("We went there for dinner, and", "After our visit on Saturday,",
             "Having eaten there twice,", "For a place on the high street,"),
        ),
        ReviewDomain(
            "hotels",
            _aspects(
                "hotel, room, staff:mass, bed, breakfast, location, pool, view, bathroom,"
                " front desk, wifi:mass, lobby"
            ),
            ("During our three-night stay,", "We stayed there for a weekend, and",
             "Having checked in late on Friday,", "For a hotel in the city centre,"),
        ),
    )
}
"""The four domains of the built-in review task, by name."""

GENERAL_OPENERS: tuple[str, ...] = (
    "Honestly,", "To be honest,", "I have to say", "In my opinion,", "Overall,",
    "All in all,", "Frankly,", "For the record,", "As far as I can tell,",
)
CLOSERS: tuple[str, ...] = (
    ", in my experience", ", to be honest", ", for what it is worth",
    " this time around", ", all things considered",
)

ADJECTIVES: dict[int, tuple[str, ...]] = {
    POSITIVE: ("excellent", "wonderful", "superb", "fantastic", "outstanding", "lovely",
               "terrific", "brilliant", "first-rate", "delightful", "remarkable", "perfect"),
    NEGATIVE: ("terrible", "awful", "poor", "dreadful", "mediocre", "lousy", "horrible",
               "subpar", "frustrating", "unpleasant", "dismal", "abysmal"),
}
"""Strong evaluative adjectives: used affirmatively only (their negation is too weak to flip)."""

NEGATABLE: dict[int, tuple[str, ...]] = {
    POSITIVE: ("good", "great", "impressive", "pleasant", "satisfying", "enjoyable", "decent"),
    NEGATIVE: ("bad", "disappointing", "a letdown", "a problem"),
}
"""Predicates whose negation clearly means the opposite ("not good" is negative,
"not bad" positive); only these appear under a negation."""

VERB_PHRASES: dict[int, tuple[tuple[str, str, str], ...]] = {
    POSITIVE: (("impress me", "impresses me", "impressed me"),
               ("live up to the hype", "lives up to the hype", "lived up to the hype"),
               ("meet my expectations", "meets my expectations", "met my expectations"),
               ("work well", "works well", "worked well")),
    NEGATIVE: (("disappoint me", "disappoints me", "disappointed me"),
               ("let me down", "lets me down", "let me down"),
               ("fail me", "fails me", "failed me")),
}
"""(base, third person singular, past) forms of sentiment verb phrases."""

FEELINGS: dict[int, tuple[str, ...]] = {
    POSITIVE: ("happy", "pleased", "satisfied"),
    NEGATIVE: ("unhappy", "dissatisfied", "unimpressed"),
}
"""How the reviewer felt "with" an aspect."""

ATTITUDE_VERBS: dict[int, tuple[tuple[str, str], ...]] = {
    POSITIVE: (("love", "loved"), ("enjoy", "enjoyed"), ("adore", "adored")),
    NEGATIVE: (("hate", "hated"), ("dislike", "disliked"), ("detest", "detested")),
}
"""(present, past) forms of "I ___ the aspect"."""

COMPARATIVES: dict[int, str] = {POSITIVE: "better", NEGATIVE: "worse"}
INTENSIFIERS: tuple[str, ...] = ("absolutely", "truly", "really", "genuinely", "simply", "incredibly")


def _lexicon() -> dict[str, int]:
    words: dict[str, int] = {}
    for polarity in (POSITIVE, NEGATIVE):
        words.update({w: polarity for w in ADJECTIVES[polarity] + NEGATABLE[polarity]})
        words.update({w: polarity for forms in VERB_PHRASES[polarity] for w in forms})
        words.update({w: polarity for w in FEELINGS[polarity]})
        words.update({w: polarity for forms in ATTITUDE_VERBS[polarity] for w in forms})
        words[COMPARATIVES[polarity]] = polarity
    words.update({"special": POSITIVE, "recommend": POSITIVE,
                  "wrong": NEGATIVE, "complaints": NEGATIVE, "fault": NEGATIVE, "complain": NEGATIVE})
    return words


SENTIMENT_LEXICON: dict[str, int] = _lexicon()
"""Every sentiment word or phrase the generator emits → its polarity (+1 or -1)."""
