"""Expected calibration error and KL divergence against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sentinel.models.calibration import ECE_BINS, expected_calibration_error, mean_kl


def binary(confidences: list[float]) -> np.ndarray:
    """Two-class probabilities whose top class is 0 with the given confidence."""
    c = np.array(confidences)
    return np.stack([c, 1 - c], axis=1)


def test_ece_of_a_hand_computed_example_uses_fifteen_equal_bins() -> None:
    # confidences 0.95 (right), 0.90 (wrong), 0.55 (right), 0.58 (wrong); 15 bins of width 1/15:
    # 0.95 → (14/15, 1], 0.90 → (13/15, 14/15], 0.55 and 0.58 → (8/15, 9/15]
    probs = binary([0.95, 0.90, 0.55, 0.58])
    labels = np.array([0, 1, 0, 1])
    expected = 0.25 * 0.05 + 0.25 * 0.90 + 0.5 * abs(0.5 - 0.565)
    assert ECE_BINS == 15
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-12)
    # With 5 bins of width 0.2, 0.90 and 0.95 share (0.8, 1.0]: another number (the bin count matters).
    merged = 0.5 * abs(0.5 - 0.925) + 0.5 * abs(0.5 - 0.565)
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(merged, abs=1e-12)


def test_ece_bins_are_closed_on_the_right() -> None:
    # bins (0, 0.5] and (0.5, 1]: confidence 0.5 (right) is in the first, 1.0 (wrong) in the second
    probs = binary([0.5, 1.0])
    labels = np.array([0, 1])
    assert expected_calibration_error(probs, labels, bins=2) == pytest.approx(0.5 * 0.5 + 0.5 * 1.0)


def test_ece_is_zero_when_confidence_matches_accuracy_and_nan_without_examples() -> None:
    probs = binary([0.75] * 4)
    labels = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0)
    assert math.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0, dtype=int)))
    with pytest.raises(ValueError):
        expected_calibration_error(probs, labels[:3])


def test_mean_kl_of_a_hand_computed_pair() -> None:
    p = np.array([[0.0, 0.0], [2.0, -1.0]])  # (1/2, 1/2) and some other distribution
    q = np.array([[math.log(3.0), 0.0], [2.0, -1.0]])  # (3/4, 1/4) and the same distribution
    expected = (0.5 * math.log(4.0 / 3.0) + 0.0) / 2  # KL((½,½) ‖ (¾,¼)) = ½ ln(4/3); identical rows: 0
    assert mean_kl(p, q) == pytest.approx(expected, abs=1e-12)
    assert mean_kl(p + 100.0, p) == pytest.approx(0.0, abs=1e-12)  # shift-invariant, stable at large logits
    assert mean_kl(q, p) != pytest.approx(mean_kl(p, q))  # KL is not symmetric: the order is P ‖ Q
    assert math.isnan(mean_kl(np.zeros((0, 2)), np.zeros((0, 2))))
