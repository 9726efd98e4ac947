"""Contribution scores (leave-one-out, truncated Monte-Carlo Shapley) and token distribution."""

from __future__ import annotations

import math
from itertools import permutations

import pytest
from sentinel.ledger.contribution import leave_one_out, monte_carlo_shapley
from sentinel.ledger.tokens import distribute_tokens

VALUES = {"1": 0.5, "2": 0.25, "3": -0.125, "4": 0.0}


def additive(subset: frozenset[str]) -> float:
    return 0.75 + sum(VALUES[n] for n in subset)


def glove_game(subset: frozenset[str]) -> float:
    """Non-additive utility with known Shapley values: a and b only count together, c alone."""
    return (1.0 if {"a", "b"} <= subset else 0.0) + (0.5 if "c" in subset else 0.0)


def exact_shapley(utility, nodes) -> dict[str, float]:  # type: ignore[no-untyped-def]
    totals = dict.fromkeys(nodes, 0.0)
    orders = list(permutations(nodes))
    for order in orders:
        prefix: frozenset[str] = frozenset()
        for node in order:
            totals[node] += utility(prefix | {node}) - utility(prefix)
            prefix = prefix | {node}
    return {n: t / len(orders) for n, t in totals.items()}


def test_both_methods_recover_values_of_an_additive_utility() -> None:
    assert leave_one_out(additive, list(VALUES)) == pytest.approx(VALUES)
    assert monte_carlo_shapley(additive, list(VALUES), permutations=3) == pytest.approx(VALUES)


def test_shapley_is_efficient_and_approaches_exact_values() -> None:
    nodes = ["a", "b", "c"]
    scores = monte_carlo_shapley(glove_game, nodes, permutations=400, seed=3)
    assert sum(scores.values()) == pytest.approx(glove_game(frozenset(nodes)) - glove_game(frozenset()))
    assert scores == pytest.approx(exact_shapley(glove_game, nodes), abs=0.05)
    # leave-one-out gives the pair all the credit each and so over-counts
    assert leave_one_out(glove_game, nodes) == {"a": 1.0, "b": 1.0, "c": 0.5}


def test_shapley_is_deterministic_by_seed_and_independent_of_node_order() -> None:
    nodes = ["a", "b", "c"]
    first = monte_carlo_shapley(glove_game, nodes, permutations=5, seed=11)
    assert monte_carlo_shapley(glove_game, list(reversed(nodes)), permutations=5, seed=11) == first
    outcomes = {tuple(monte_carlo_shapley(glove_game, nodes, permutations=5, seed=s).values()) for s in range(10)}
    assert len(outcomes) > 1


def test_truncation_saves_utility_evaluations() -> None:
    calls: list[frozenset[str]] = []

    def counted(subset: frozenset[str]) -> float:
        calls.append(subset)
        return 1.0 if "big" in subset else 0.0  # one node carries everything

    nodes = ["big"] + [f"n{i}" for i in range(7)]
    full = monte_carlo_shapley(counted, nodes, permutations=30, seed=0)
    untruncated_calls = len(calls)
    calls.clear()
    truncated = monte_carlo_shapley(counted, nodes, permutations=30, truncation_tolerance=1e-9, seed=0)
    assert len(calls) < untruncated_calls
    assert truncated == pytest.approx(full) and truncated["big"] == pytest.approx(1.0)


def test_utility_is_evaluated_once_per_subset() -> None:
    seen: list[frozenset[str]] = []
    monte_carlo_shapley(lambda s: seen.append(s) or float(len(s)), ["a", "b", "c"], permutations=50)
    assert len(seen) == len(set(seen)) <= 8


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: leave_one_out(additive, []), "empty"),
        (lambda: leave_one_out(additive, ["1", "1"]), "duplicates"),
        (lambda: monte_carlo_shapley(additive, ["1"], permutations=0), "permutations"),
        (lambda: monte_carlo_shapley(additive, ["1"], truncation_tolerance=-1), "truncation_tolerance"),
        (lambda: leave_one_out(lambda s: math.nan, ["1"]), "finite"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_tokens_are_proportional_and_sum_exactly_to_the_budget() -> None:
    amounts = distribute_tokens({"1": 1.0, "2": 1.0, "3": 1.0}, 100)
    assert sum(amounts.values()) == 100
    assert amounts == {"1": 34, "2": 33, "3": 33}  # the leftover token goes to the smallest id
    assert distribute_tokens({"a": 0.75, "b": 0.25}, 1000) == {"a": 750, "b": 250}


def test_largest_remainder_wins_the_leftover() -> None:
    # quotas 10 * (0.46, 0.34, 0.2) = 4.6, 3.4, 2.0 -> floors 4, 3, 2 and one left for the .6 remainder
    assert distribute_tokens({"x": 0.46, "y": 0.34, "z": 0.2}, 10) == {"x": 5, "y": 3, "z": 2}


def test_ties_break_by_numeric_node_id() -> None:
    amounts = distribute_tokens({"10": 1.0, "9": 1.0}, 1)
    assert amounts == {"9": 1}


def test_nobody_with_non_positive_contribution_gets_tokens() -> None:
    amounts = distribute_tokens({"1": 2.0, "2": 0.0, "3": -5.0}, 7)
    assert amounts == {"1": 7}
    assert distribute_tokens({"1": 0.0, "2": -1.0}, 100) == {}
    assert distribute_tokens({}, 100) == {}
    assert distribute_tokens({"1": 1.0}, 0) == {}


def test_sum_is_exact_for_awkward_scores() -> None:
    scores = {str(i): 1.0 / (i + 3) for i in range(17)}
    for budget in (1, 7, 99, 10**6 + 1):
        assert sum(distribute_tokens(scores, budget).values()) == budget


@pytest.mark.parametrize("budget", [-1, 1.5, True])
def test_bad_budget_is_rejected(budget: object) -> None:
    with pytest.raises(ValueError, match="`budget`"):
        distribute_tokens({"1": 1.0}, budget)  # type: ignore[arg-type]


def test_non_finite_scores_are_rejected() -> None:
    with pytest.raises(ValueError, match="finite"):
        distribute_tokens({"1": math.inf}, 10)
