"""A node's direction record over rounds decides the direction check near the optimum, and survives --resume."""

from __future__ import annotations

import pytest
from sentinel.server.direction_memory import DirectionMemory
from sentinel.server.update_checks import direction_outliers

# Cosines measured on the robustness benchmark (MiniLM, 10 nodes, 3 sign-flippers "m1".."m3"):
# rounds 1-3 separate by sign, by round 5 both sides scatter around zero.
ROUNDS = [  # partitions 0, 7, 6, 2 (honest) and 8, 1, 3 (flipped), rounds 1-5
    {"h1": 0.0122, "h2": 0.008, "h3": 0.0121, "h4": 0.0035, "m1": -0.0107, "m2": -0.014, "m3": -0.0212},
    {"h1": 0.1195, "h2": 0.1634, "h3": 0.117, "h4": 0.13, "m1": -0.1476, "m2": -0.1326, "m3": -0.0654},
    {"h1": 0.008, "h2": 0.0224, "h3": 0.0028, "h4": 0.028, "m1": -0.026, "m2": -0.012, "m3": -0.0102},
    {"h1": -0.0011, "h2": 0.0034, "h3": 0.0141, "h4": 0.0142, "m1": -0.0166, "m2": -0.0149, "m3": -0.011},
    {"h1": 0.0014, "h2": -0.002, "h3": -0.0006, "h4": 0.0028, "m1": 0.0018, "m2": -0.01, "m3": -0.0003},
]


def _run(memory: float) -> list[set[str]]:
    """The nodes flagged each round when the record decides."""
    direction = DirectionMemory(memory)
    flagged_by_round = []
    for cosines in ROUNDS:
        records = direction.judge(cosines)
        flagged = set(direction_outliers(cosines, 0.0, records, direction.scale))
        direction.settle(frozenset(cosines) - flagged)
        flagged_by_round.append(flagged)
    return flagged_by_round


def test_the_record_keeps_flipped_nodes_flagged_and_honest_ones_clear_when_one_round_is_noise() -> None:
    plain = [set(direction_outliers(c, 0.0)) for c in ROUNDS]
    assert "h1" in plain[3] and {"h2", "h3"} <= plain[4] and "m1" not in plain[4]  # the plain sign rule errs both ways late
    with_record = _run(0.6)  # the default
    assert all(flagged == {"m1", "m2", "m3"} for flagged in with_record)
    assert _run(0.0) == plain  # memory 0: this round alone


def test_a_node_that_turns_against_the_round_is_flagged_within_two_rounds() -> None:
    direction = DirectionMemory(0.6)
    for _ in range(3):
        direction.judge({"a": 0.01, "b": 0.012, "c": 0.009, "turncoat": 0.011})
        direction.settle(frozenset("abc") | {"turncoat"})
    cosines = {"a": 0.01, "b": 0.012, "c": 0.009, "turncoat": -0.011}
    first = set(direction_outliers(cosines, 0.0, direction.judge(cosines), direction.scale))
    direction.settle(frozenset("abc") | {"turncoat"} - first)
    second = set(direction_outliers(cosines, 0.0, direction.judge(cosines), direction.scale))
    assert first == set() and second == {"turncoat"}  # its good history buys it one round, at weight 1/n


def test_the_records_and_the_standing_survive_a_checkpoint() -> None:
    direction = DirectionMemory(0.5)
    direction.judge({"a": 0.02, "b": -0.01})
    direction.settle(frozenset({"a"}))
    resumed = DirectionMemory(0.5)
    resumed.restore(dict(direction.checkpoint_meta()))
    assert resumed.records == direction.records and resumed.standing == frozenset({"a"})
    assert direction.records == {"a": pytest.approx(2 / 1.5), "b": pytest.approx(-1 / 1.5)}
    fresh = DirectionMemory(0.5)
    fresh.restore({})
    assert fresh.records == {} and fresh.standing == frozenset()
    with pytest.raises(ValueError, match="memory"):
        DirectionMemory(1.0)


def test_a_judged_round_that_is_not_aggregated_leaves_the_records_as_they_were() -> None:
    direction = DirectionMemory(0.5)
    direction.judge({"a": 0.02, "b": 0.01})
    direction.settle(frozenset({"a", "b"}))
    before = dict(direction.records)
    direction.judge({"a": -0.5, "b": -0.4})  # a round that crashed before aggregation
    direction.restore(dict(direction.checkpoint_meta()))
    assert direction.records == before
