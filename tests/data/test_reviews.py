"""The built-in review task: labels that follow from the words, determinism, balance, variety."""

from __future__ import annotations

import re
from collections import Counter
from itertools import islice

import pytest
from sentinel.client.data import generate_reviews, iter_reviews, load_examples
from sentinel.client.data.review_lexicon import INTENSIFIERS, REVIEW_DOMAINS, SENTIMENT_LEXICON

# An independent reading of a clause: its single sentiment term, flipped once per negation.
_NEGATORS = {"not", "never", "no", "nothing", "hardly", "cannot"}
_PHRASE_NEGATORS = ("far from", "anything but")
_TERMS = sorted(SENTIMENT_LEXICON, key=len, reverse=True)


def _terms(clause: str) -> list[str]:
    found, text = [], clause.lower()
    for term in _TERMS:
        pattern = re.compile(rf"\b{re.escape(term)}\b")
        if pattern.search(text):
            found += pattern.findall(text)
            text = pattern.sub("#", text)
    return found


def _negations(clause: str) -> int:
    text = clause.lower()
    words = re.findall(r"[a-z']+", text)
    return sum(w in _NEGATORS or w.endswith("n't") for w in words) + sum(text.count(p) for p in _PHRASE_NEGATORS)


def _polarity(clause: str) -> int:
    terms = _terms(clause)
    assert len(terms) == 1, f"expected one sentiment term in {clause!r}, found {terms}"
    polarity = SENTIMENT_LEXICON[terms[0]]
    if terms[0] in {"better", "worse"}:  # "could not have been better": a superlative, not a negation
        return polarity
    return polarity * (-1) ** _negations(clause)


def _contrast(text: str) -> tuple[str, str]:
    """(conceded clause, deciding clause) of a difficulty-2 sentence."""
    for marker in (" but ", "; however, "):
        if marker in text:
            concede, decide = text.split(marker)
            return concede, decide
    match = re.search(r"\b(?:although|even though) ([^,.!]*)", text, flags=re.IGNORECASE)
    assert match, f"no contrast marker in {text!r}"
    return match.group(1), text[: match.start()] + text[match.end():]


def _sign(label: int) -> int:
    return 1 if label == 1 else -1


@pytest.fixture(scope="module")
def reviews():
    return generate_reviews(4000, seed=11)


def test_plain_sentences_carry_the_polarity_of_their_word(reviews):
    for e in (e for e in reviews if e.difficulty == 0):
        assert _negations(e.text) == 0, e.text
        assert _polarity(e.text) == _sign(e.label), e.text


def test_negation_flips_the_polarity_of_the_negated_word(reviews):
    for e in (e for e in reviews if e.difficulty == 1):
        assert _negations(e.text) == 1, e.text
        assert SENTIMENT_LEXICON[_terms(e.text)[0]] == -_sign(e.label), e.text


def test_the_clause_that_is_not_conceded_decides_a_contrast(reviews):
    for e in (e for e in reviews if e.difficulty == 2):
        concede, decide = _contrast(e.text)
        assert _polarity(decide) == _sign(e.label), e.text
        assert _polarity(concede) == -_sign(e.label), e.text


def test_intensifiers_keep_and_double_negations_cancel(reviews):
    hard = [e for e in reviews if e.difficulty == 3]
    for e in hard:
        assert _polarity(e.text) == _sign(e.label), e.text
        words = set(re.findall(r"[a-z]+", e.text.lower()))
        assert _negations(e.text) or words & set(INTENSIFIERS), f"nothing hard in {e.text!r}"
    double = [e for e in hard if _negations(e.text) == 2]
    assert double and {e.label for e in double} == {0, 1}


def test_known_sentences_of_the_brief_are_read_as_specified():
    assert _polarity("The screen is not good.") == -1
    assert _polarity("The plot was not at all bad.") == 1
    concede, decide = _contrast("The service was wonderful, although the food was awful.")
    assert (_polarity(concede), _polarity(decide)) == (-1, 1)


def test_same_seed_same_reviews_other_seed_other_reviews():
    assert generate_reviews(300, seed=3) == generate_reviews(300, seed=3)
    assert generate_reviews(300, seed=3) != generate_reviews(300, seed=4)
    assert list(islice(iter_reviews(seed=3), 300)) == generate_reviews(300, seed=3)


@pytest.mark.parametrize("n", [1, 7, 64, 1001])
def test_labels_are_balanced_in_every_prefix(n):
    counts = Counter(e.label for e in generate_reviews(n, seed=n))
    assert abs(counts[0] - counts[1]) <= 1 and sum(counts.values()) == n


def test_every_block_covers_each_domain_difficulty_and_label():
    combos = {(e.domain, e.difficulty, e.label) for e in generate_reviews(32, seed=2)}
    assert combos == {(d, k, y) for d in REVIEW_DOMAINS for k in range(4) for y in (0, 1)}
    assert len(REVIEW_DOMAINS) >= 4


def test_domain_and_difficulty_filters_are_respected():
    examples = generate_reviews(200, seed=0, domains=["hotels", "movies"], difficulties=[1, 2])
    assert {e.domain for e in examples} == {"hotels", "movies"}
    assert {e.difficulty for e in examples} == {1, 2}


def test_domains_speak_of_their_own_aspects():
    for name, domain in REVIEW_DOMAINS.items():
        nouns = {a.noun for a in domain.aspects}
        for e in generate_reviews(40, seed=1, domains=[name], difficulties=[0, 1]):
            assert any(re.search(rf"\b{noun}\b", e.text) for noun in nouns), e.text


def test_sentences_are_varied_enough_not_to_be_memorised(reviews):
    assert len({e.text for e in reviews}) / len(reviews) > 0.95
    for level in range(4):
        texts = [e.text for e in reviews if e.difficulty == level]
        assert Counter(texts).most_common(1)[0][1] <= 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "`n`"),
        ({"n": 5, "domains": ["cars"]}, "`domains`"),
        ({"n": 5, "domains": "phones"}, "`domains`"),
        ({"n": 5, "difficulties": [4]}, "`difficulties`"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        generate_reviews(**kwargs)


def test_builtin_spec_passes_its_options_to_the_generator():
    examples = load_examples("builtin:reviews?n=50&domains=phones,movies&difficulties=0,3", seed=9)
    assert examples == generate_reviews(50, seed=9, domains=["phones", "movies"], difficulties=[0, 3])
    assert len(load_examples("builtin:reviews")) == 4000


def test_generated_sentences_are_not_taken_from_the_uci_data(uci_dir):
    from sentinel.client.data.uci import load_uci_sentiment

    real = {e.text.lower() for e in load_uci_sentiment(uci_dir).examples}
    shared = real & {e.text.lower() for e in generate_reviews(4000, seed=0)}
    # Only a generic four-word sentence ("The X was Y.") may coincide by chance.
    # (Counts only: the data's sentences must not appear in test output.)
    n_shared, n_long = len(shared), sum(len(s.split()) > 4 for s in shared)
    assert n_shared <= 5
    assert n_long == 0
