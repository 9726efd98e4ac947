"""The round-relative gates: loss allowance, the entropy gate's calibration over authors, coordinated updates (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.models.entropy_calibration import DEFAULT_MIN_RATIO, author_shift_z, log_shift_z
from sentinel.models.loss_calibration import author_loss_z, loss_allowance
from sentinel.server.coordination import COORDINATION_MIN_UPDATES, coordinated_groups, lora_cosines
from sentinel.server.outcome import Verdict
from sentinel.server.validation import rescinded_loss_rejections, round_entropy_gate, update_cosines

# ------------------------------------------------------------ entropy gate


def _non_iid_round(rng: np.random.Generator, outlier: float | None = None) -> dict[tuple[int, int], float]:
    """7 validators × 10 authors, k = 3: each validator's data scales every shift it measures (×0.5 … ×3),
    honest authors differ by up to 2.8× (what the benchmark measured), noise ±10 % per measurement."""
    validator_scale = dict(zip(range(7), [0.5, 0.8, 1.0, 1.0, 1.5, 2.0, 3.0], strict=True))
    author_shift = dict(zip(range(100, 110), [0.5, 0.6, 0.65, 0.7, 0.8, 0.6, 0.55, 0.75, 1.4, 0.5], strict=True))
    if outlier is not None:
        author_shift[109] = outlier
    shifts = {}
    for i, author in enumerate(sorted(author_shift)):
        for v in ((i + j) % 7 for j in range(3)):
            shifts[(v, author)] = validator_scale[v] * author_shift[author] * float(np.exp(rng.normal(0, 0.1)))
    return shifts


def test_honest_non_iid_spread_passes_the_entropy_gate() -> None:
    for seed in range(20):
        assert round_entropy_gate(_non_iid_round(np.random.default_rng(seed)), z_threshold=3.5) == {}


def test_an_update_that_distorts_attention_is_rejected_by_every_validator_of_it() -> None:
    shifts = _non_iid_round(np.random.default_rng(0), outlier=6.0)  # ~10× the round's median author
    flagged = round_entropy_gate(shifts, z_threshold=3.5)
    assert {a for _, a in flagged} == {109}
    assert set(flagged) == {k for k in shifts if k[1] == 109}


def test_a_validator_whose_data_inflates_every_shift_does_not_make_its_candidates_outliers() -> None:
    shifts = {(v, a): 1.0 + 0.05 * ((v + a) % 5) for v in range(6) for a in range(10, 20) if (v + a) % 2 == 0}
    shifts.update({(9, a): 8.0 for a in (10, 12, 14)})  # one validator measures 8× on everything it judges
    assert round_entropy_gate(shifts, z_threshold=3.5) == {}


def test_the_floor_needs_min_ratio_times_the_median_when_the_round_agrees_closely() -> None:
    tight = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98]
    below = log_shift_z([*tight, 0.95 * DEFAULT_MIN_RATIO], z_threshold=3.5)
    above = log_shift_z([*tight, 1.05 * DEFAULT_MIN_RATIO], z_threshold=3.5)
    assert below[-1] < 3.5 < above[-1]
    # Scale-free: the same pattern a thousand times smaller gives the same z-scores.
    np.testing.assert_allclose(log_shift_z([1e-3 * x for x in [*tight, 5.0]], 3.5), log_shift_z([*tight, 5.0], 3.5))


def test_zero_shifts_and_too_few_authors_are_not_judged() -> None:
    z = author_shift_z({(0, "a"): 0.0, (0, "b"): 1.0, (1, "c"): 50.0}, z_threshold=3.5)
    assert np.isneginf(z["a"]) and z["b"] == 0.0 and z["c"] == 0.0
    with pytest.raises(ValueError):
        log_shift_z([1.0] * 5, z_threshold=3.5, min_ratio=1.0)


# ------------------------------------------------------------ coordinated updates


def _lora_update(rng: np.random.Generator, shared: np.ndarray | None = None, weight: float = 0.0) -> dict[str, np.ndarray]:
    """One module's PEFT-keyed A (4×64) and B (32×4) whose product is random, plus ``weight`` × ``shared``'s direction."""
    a, b = rng.normal(size=(4, 64)), rng.normal(size=(32, 4))
    if shared is not None:
        # Put the shared direction in the first rank-1 component: B[:, 0] A[0] += weight · u vᵀ.
        u, v = shared
        a[0] += weight * v
        b[:, 0] += weight * u
    key = "base_model.model.bert.encoder.layer.0.attention.self.query"
    return {f"{key}.lora_A.weight": a.astype(np.float32), f"{key}.lora_B.weight": b.astype(np.float32)}


def coordinated_updates(arrays: dict[str, dict[str, np.ndarray]], z_threshold: float) -> dict[str, str]:
    """The round's coordinated updates judged on this round alone (no records, no probation)."""
    return coordinated_groups(update_cosines(arrays), z_threshold)


def _round(rng: np.random.Generator, attackers: int, weight: float) -> dict[str, dict[str, np.ndarray]]:
    trigger = (rng.normal(size=32), rng.normal(size=64))
    return {f"n{i}": _lora_update(rng, trigger if i < attackers else None, weight if i < attackers else 0.0) for i in range(10)}


def test_lora_cosines_equal_the_cosines_of_the_dense_products() -> None:
    rng = np.random.default_rng(0)
    ups = {
        i: {"m": (rng.normal(size=(3, 8)), rng.normal(size=(5, 3))), "k": (rng.normal(size=(2, 4)), rng.normal(size=(6, 2)))}
        for i in range(3)
    }
    dense = {i: np.concatenate([(b @ a).ravel() for _, (a, b) in sorted(u.items())]) for i, u in ups.items()}
    for (i, j), c in lora_cosines(ups).items():
        assert c == pytest.approx(dense[i] @ dense[j] / np.linalg.norm(dense[i]) / np.linalg.norm(dense[j]))


def test_a_coordinated_minority_is_flagged_and_honest_nodes_are_not() -> None:
    for seed in range(10):
        flagged = coordinated_updates(_round(np.random.default_rng(seed), attackers=3, weight=1.5), z_threshold=5.0)
        assert set(flagged) == {"n0", "n1", "n2"}, seed
        assert all(reason.startswith("coordinated update") for reason in flagged.values())


def test_honest_rounds_flag_nothing_even_when_every_update_shares_a_direction() -> None:
    for seed in range(10):
        rng = np.random.default_rng(seed)
        assert coordinated_updates(_round(rng, attackers=0, weight=0.0), 5.0) == {}
        # A direction the whole round shares raises every pair alike: the median takes it out.
        assert coordinated_updates(_round(rng, attackers=10, weight=1.5), 5.0) == {}


def test_a_majority_small_rounds_and_a_zero_threshold_are_not_judged() -> None:
    rng = np.random.default_rng(3)
    assert coordinated_updates(_round(rng, attackers=6, weight=1.5), 5.0) == {}
    assert coordinated_updates(_round(rng, attackers=3, weight=1.5), 0.0) == {}
    few = {
        (i, j): (0.9 if (i, j) == (0, 1) else 0.0)
        for i in range(COORDINATION_MIN_UPDATES - 1)
        for j in range(i + 1, COORDINATION_MIN_UPDATES - 1)
    }
    assert coordinated_groups(few, 5.0) == {}


# ------------------------------------------------------------ loss gate (the round's re-reading of loss-gate rejections)


def _verdict(validator: str, author: str, loss_change: float) -> Verdict:
    reason = "" if loss_change <= 0.05 else f"loss gate: validation loss {loss_change:+.4f} nats > tolerance 0 + 2 SE"
    return Verdict(validator, author, not reason, reason, "sig", loss_change, 0.0, 0.01, 1.0)


def test_an_honest_cross_domain_update_is_taken_back_when_the_round_helps_the_validator() -> None:
    # Measured on the benchmark: the round's candidates gain a validator ~0.19 nats; one from another
    # domain costs it 0.099 (the absolute gate rejected it); its direction agrees with the round.
    verdicts = [_verdict("v", "a", -0.21), _verdict("v", "b", -0.19), _verdict("v", "other", +0.099)]
    taken = rescinded_loss_rejections(verdicts, {"a": 0.1, "b": 0.1, "other": 0.13}, tolerance=0.0, share=0.75)
    assert list(taken) == [("v", "other")] and taken[("v", "other")].startswith("loss gate (round)")
    assert loss_allowance([-0.21, -0.19, 0.099], 0.0, 0.75) == pytest.approx(0.1425)


def test_a_sign_flip_or_a_label_flip_keeps_its_rejection() -> None:
    verdicts = [_verdict("v", "a", -0.30), _verdict("v", "b", -0.25), _verdict("v", "c", -0.28)]
    verdicts += [_verdict("v", "flip", +0.13), _verdict("v", "labels", +0.29)]
    # The sign flip costs less than the allowance (0.75 × 0.25), but it points against the round: not taken back.
    cosines = {"a": 0.1, "b": 0.1, "c": 0.1, "flip": -0.1, "labels": 0.002}
    assert rescinded_loss_rejections(verdicts, cosines, 0.0, 0.75) == {}
    # Without a direction check (cosine unknown), the absolute gate stands.
    assert rescinded_loss_rejections(verdicts, {**cosines, "flip": None}, 0.0, 0.75) == {}


def test_in_a_round_where_most_candidates_hurt_the_absolute_tolerance_is_the_floor() -> None:
    assert loss_allowance([+0.2, +0.3, -0.1, +0.25], 0.01) == 0.01
    verdicts = [_verdict("v", "a", +0.2), _verdict("v", "b", +0.3), _verdict("v", "c", -0.1), _verdict("v", "d", +0.25)]
    assert rescinded_loss_rejections(verdicts, dict.fromkeys("abcd", 0.1), 0.0, 0.75) == {}
    assert loss_allowance([-0.5, -0.4], 0.0) == 0.0  # too few candidates to calibrate: the tolerance alone
    assert rescinded_loss_rejections(verdicts, dict.fromkeys("abcd", 0.1), 0.0, 0.0) == {}


def test_near_the_optimum_typical_cross_domain_costs_pass_and_an_outlying_cost_does_not() -> None:
    # Measured on the benchmark's round 5: every honest update costs the other domains' validators
    # 0.2-0.7 nats (most candidates hurt, so the allowance is the absolute floor and rejects them all).
    costs = {"a": 0.50, "b": 0.25, "c": 0.55, "d": 0.30, "e": 0.45, "f": 0.35, "labels": 2.4}
    verdicts = [_verdict(v, author, cost + 0.02 * i) for author, cost in costs.items() for i, v in enumerate(("v1", "v2", "v3"))]
    cosines = {**dict.fromkeys(costs, 0.02), "labels": 0.01}
    z = author_loss_z({(v.validator, v.author): v.loss_change for v in verdicts})
    assert max(z[a] for a in costs if a != "labels") < 2.0 and z["labels"] > 10
    taken = rescinded_loss_rejections(verdicts, cosines, 0.0, 0.75, z_threshold=3.5)
    assert {a for _, a in taken} == set(costs) - {"labels"}
    assert all("typical cost in a round whose updates cost" in why for why in taken.values())
    # Where updates cost, a flipped one would gain: the direction check (check phase) judges direction, not this.
    assert rescinded_loss_rejections(verdicts, {**cosines, "a": -0.01}, 0.0, 0.75, z_threshold=3.5) == taken
    assert rescinded_loss_rejections(verdicts, cosines, 0.0, 0.75, z_threshold=0.0) == {}  # off


def test_the_typical_cost_is_not_calibrated_from_too_few_authors_and_centres_each_validator() -> None:
    assert author_loss_z({("v", "a"): 0.3, ("v", "b"): 0.2, ("v", "c"): 0.9}) == dict.fromkeys("abc", float("inf"))
    # A validator whose domain every update hurts by +1 nats does not make its candidates atypical.
    changes = {(v, a): 0.1 * i + (1.0 if v == "harsh" else 0.0) for i, a in enumerate("abcdef") for v in ("harsh", "mild", "x")}
    changes.pop(("harsh", "a"))
    changes.pop(("mild", "f"))
    z = author_loss_z(changes)
    assert max(abs(z[a]) for a in "abcdef") < 2.0


def test_while_the_round_gains_no_cost_is_typical_however_widely_the_gains_spread() -> None:
    # Round 1 of the benchmark's label flip: honest updates gain a validator 0.01-0.36 nats, a flipper costs +0.25
    # (robust z 2.7 against that spread); only the allowance may judge such a round.
    gains = {"a": -0.014, "b": -0.04, "c": -0.025, "d": -0.08, "e": -0.19, "f": -0.32, "g": -0.18}
    verdicts = [_verdict(v, author, g) for author, g in {**gains, "flip": 0.25}.items() for v in ("v1", "v2", "v3")]
    assert all(z == float("inf") for z in author_loss_z({(v.validator, v.author): v.loss_change for v in verdicts}).values())
    cosines = dict.fromkeys([*gains, "flip"], 0.01)
    assert ("v1", "flip") not in rescinded_loss_rejections(verdicts, cosines, 0.0, 0.75, z_threshold=3.5)


def test_only_the_rounds_own_agreement_confirms_an_update_for_the_loss_calibration() -> None:
    from sentinel.server.outcome import NodeInfo, NodeResult
    from sentinel.server.validation import _confirmed_cosine

    node = NodeInfo(1, 0, "gpu", "key")
    # Round 2 of the benchmark's label flip: a positive record from round 1 carried it, its cosine was -0.019.
    assert _confirmed_cosine(NodeResult(node, True, direction_cosine=-0.019, direction_record=0.3)) == -0.019
    assert _confirmed_cosine(NodeResult(node, True, direction_cosine=0.02, direction_record=-0.4)) == 0.0  # record against
    assert _confirmed_cosine(NodeResult(node, True, direction_cosine=0.02, direction_record=0.4)) == 0.02
    assert _confirmed_cosine(NodeResult(node, True)) is None
