"""The check phase's direction test: an update that points against the honest majority is rejected, whatever its size."""

from __future__ import annotations

import numpy as np
import pytest
from sentinel.server.update_checks import DIRECTION_MIN_UPDATES, direction_cosines, direction_outliers, update_direction


def _nearly_orthogonal_updates(n: int, dim: int = 20_000, shared: float = 0.15, seed: int = 0) -> np.ndarray:
    """n updates that share a small common direction and are otherwise independent (LoRA with per-node random A)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    return np.stack([shared * common + rng.normal(size=dim) for _ in range(n)]).astype(np.float32)


def test_sign_flipped_updates_are_flagged_although_every_update_is_nearly_orthogonal() -> None:
    updates = _nearly_orthogonal_updates(10)
    attackers = {1, 3, 8}
    for i in attackers:
        updates[i] = -updates[i]
    unit = updates / np.linalg.norm(updates, axis=1, keepdims=True)
    assert np.abs(unit @ unit.T - np.eye(10)).max() < 0.1  # pairwise, no update says much about another
    cosines = direction_cosines({i: u for i, u in enumerate(updates)})
    assert {i for i, c in cosines.items() if c < 0} == attackers
    flagged = direction_outliers(cosines, 0.0)
    assert set(flagged) == attackers
    assert "opposes the round's consensus" in flagged[1] and "median of the other updates" in flagged[1]


def test_the_update_itself_is_left_out_of_its_reference() -> None:
    # A median that includes the update correlates with it whatever its sign: with a shared part of
    # zero, every update would look aligned. Leave-one-out gives them cosines near 0 instead.
    updates = _nearly_orthogonal_updates(10, shared=0.0)
    updates[0] = -updates[0]
    cosines = direction_cosines({i: u for i, u in enumerate(updates)})
    assert max(abs(c) for c in cosines.values()) < 0.05


def test_a_scaled_update_keeps_its_direction_and_is_left_to_the_norm_bound() -> None:
    updates = _nearly_orthogonal_updates(8)
    updates[2] *= 10.0
    assert not direction_outliers(direction_cosines({i: u for i, u in enumerate(updates)}), 0.0)


def test_too_few_updates_are_not_judged_and_a_zero_update_has_cosine_zero() -> None:
    updates = _nearly_orthogonal_updates(DIRECTION_MIN_UPDATES)
    assert direction_cosines({i: u for i, u in enumerate(updates[:-1])}) == {}
    updates[0] = 0.0
    cosines = direction_cosines({i: u for i, u in enumerate(updates)})
    assert cosines[0] == 0.0 and set(direction_outliers(cosines, 0.0)) == {0}
    assert not direction_outliers(cosines, -1.0)


def test_update_vectors_must_share_one_shape() -> None:
    vectors = {i: np.ones(4, dtype=np.float32) for i in range(DIRECTION_MIN_UPDATES)}
    vectors[0] = np.ones(5, dtype=np.float32)
    with pytest.raises(ValueError, match="differ in shape"):
        direction_cosines(vectors)


def test_update_direction_is_the_dense_product_then_the_head_change() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 5)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    head = {"classifier.weight": np.arange(4, dtype=np.float32)}
    vector = update_direction({"m": (a, b)}, head, scaling=2.0)
    np.testing.assert_allclose(vector[:15], (2.0 * b @ a).ravel(), rtol=1e-6)
    np.testing.assert_array_equal(vector[15:], head["classifier.weight"])
    # Flipping B flips the product: the direction a sign-flip attacker sends.
    np.testing.assert_allclose(update_direction({"m": (a, -b)}, {}, 2.0), -vector[:15], rtol=1e-6)


def test_near_the_optimum_the_reference_of_nodes_in_good_standing_keeps_honest_updates_positive() -> None:
    # Seven honest updates share a weak direction (each mostly its own noise, as near the optimum),
    # three sign-flipped copies sit in the round; last round's accepted nodes are the honest ones.
    rng = np.random.default_rng(4)
    shared = rng.normal(size=4000)
    honest = {i: 0.12 * shared + rng.normal(size=4000) for i in range(7)}
    flipped = {7 + i: -(0.12 * shared + rng.normal(size=4000)) for i in range(3)}
    vectors = {**honest, **flipped}
    everyone = direction_cosines(vectors)
    trusted = direction_cosines(vectors, reference=set(honest))
    assert min(trusted[i] for i in honest) > 0 > max(trusted[i] for i in flipped)
    assert sum(trusted[i] for i in honest) > sum(everyone[i] for i in honest)  # the attackers no longer dilute the median
    assert min(everyone[i] for i in honest) < min(trusted[i] for i in honest)
    # Too few nodes in good standing: the reference is every other update, as without one.
    assert direction_cosines(vectors, reference={0, 1}) == everyone
