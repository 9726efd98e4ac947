"""Validator assignment, consensus, reputation and the entropy gate's calibration (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.models.validation import MIN_CALIBRATION_SAMPLES, entropy_shift_z
from sentinel.server.validation import (
    MIN_REPUTATION,
    ValidationState,
    assign_validators,
    consensus,
    round_entropy_gate,
    updated_reputation,
)


def test_assignment_never_picks_the_author_and_gives_k_distinct_validators() -> None:
    nodes = list(range(10))
    assignment = assign_validators(nodes, nodes, {}, k=3, seed=7)
    for author, chosen in assignment.items():
        assert author not in chosen
        assert len(chosen) == len(set(chosen)) == 3


def test_assignment_spreads_the_load_evenly() -> None:
    nodes = list(range(12))
    assignment = assign_validators(nodes, nodes, {}, k=3, seed=1)
    load = np.bincount([v for chosen in assignment.values() for v in chosen], minlength=12)
    assert load.sum() == 36 and load.max() - load.min() <= 2


def test_assignment_takes_every_eligible_validator_when_fewer_than_k() -> None:
    assignment = assign_validators([0, 1, 2], [1, 2], {}, k=3, seed=0)
    assert assignment == {0: [1, 2] if assignment[0][0] == 1 else [2, 1], 1: [2], 2: [1]}


def test_low_reputation_validators_are_assigned_less() -> None:
    authors, validators = list(range(100, 160)), list(range(6))
    reputation = {0: MIN_REPUTATION, **{v: 1.0 for v in validators[1:]}}
    picks = [v for seed in range(5) for chosen in assign_validators(authors, validators, reputation, 3, seed).values() for v in chosen]
    counts = np.bincount(picks, minlength=6)
    assert counts[0] < 0.5 * counts[1:].mean()


def test_assignment_is_deterministic_for_a_seed() -> None:
    assert assign_validators(range(8), range(8), {}, 3, 5) == assign_validators(range(8), range(8), {}, 3, 5)


def test_consensus_is_a_reputation_weighted_quorum() -> None:
    assert consensus({1: True, 2: True, 3: False}, {}, 2 / 3) == (True, pytest.approx(2 / 3))
    assert consensus({1: True, 2: False, 3: False}, {}, 2 / 3)[0] is False
    # One trusted validator outweighs two distrusted ones.
    accepted, share = consensus({1: True, 2: False, 3: False}, {1: 1.0, 2: 0.1, 3: 0.1}, 2 / 3)
    assert accepted and share == pytest.approx(1 / 1.2)
    with pytest.raises(ValueError, match="votes"):
        consensus({}, {}, 0.5)


def test_reputation_follows_agreement_and_stays_in_bounds() -> None:
    rep = {1: 1.0, 2: 1.0}
    for _ in range(30):
        rep = updated_reputation(rep, {1: 1.0, 2: 0.0}, learning_rate=0.2)
    assert rep[1] == 1.0 and rep[2] == MIN_REPUTATION
    rep = updated_reputation(rep, {2: 1.0}, learning_rate=0.5)
    assert rep[2] == pytest.approx(0.5 * MIN_REPUTATION + 0.5)


def test_validation_state_round_trips_through_checkpoint_metadata() -> None:
    state = ValidationState({"k1": 0.5}, {"k2": 1}, {"k3": 4})
    again = ValidationState.from_meta(state.to_meta())
    assert again == state and ValidationState.from_meta(None) == ValidationState()


def test_entropy_z_is_calibrated_on_the_round_and_scale_free() -> None:
    honest = [1.0, 1.3, 0.8, 1.1, 0.9, 1.2]
    z = entropy_shift_z([*honest, 12.0])
    assert z[-1] > 3.5 and (z[:-1] < 3.5).all()
    # The same pattern at another scale gives the same z-scores: no magic constant.
    np.testing.assert_allclose(entropy_shift_z([1e-4 * v for v in [*honest, 12.0]]), z)


def test_zero_shifts_never_fail_and_too_few_samples_do_not_judge() -> None:
    z = entropy_shift_z([0.0, 0.0, 1.0, 1.1, 0.9, 30.0])
    assert np.isneginf(z[0]) and np.isneginf(z[1]) and z[-1] > 3.5
    assert (entropy_shift_z([1.0, 50.0, 0.9][: MIN_CALIBRATION_SAMPLES - 1]) == 0).all()


def test_round_entropy_gate_flags_only_the_outlying_measurements() -> None:
    shifts = {(v, a): 1.0 + 0.05 * (v + a) for v in range(3) for a in range(3, 6)}
    shifts[(0, 9)] = 40.0
    flagged = round_entropy_gate(shifts, z_threshold=3.5)
    assert list(flagged) == [(0, 9)]
