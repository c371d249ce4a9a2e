"""The parity check every artifact goes through."""

from __future__ import annotations

import numpy as np
import pytest

from tests.export.helpers import mask_dice
from wmhkeras.export.verification import check_artifact


def test_mask_dice_by_hand():
    a = np.array([0.9, 0.6, 0.2, 0.1])
    b = np.array([0.7, 0.4, 0.5, 0.0])
    # masks [1, 1, 0, 0] and [1, 0, 1, 0]: 2 * 1 / (2 + 2)
    assert mask_dice(a, b) == pytest.approx(0.5)
    assert mask_dice(np.zeros(3), np.zeros(3)) == 1.0


def test_check_artifact_applies_both_limits():
    ref = np.array([[0.9, 0.6], [0.2, 0.1]])
    close = ref + 0.01
    assert check_artifact("a", "a", None, 1.0, close, ref, {"max_abs_diff": 0.02}).passed
    assert not check_artifact("a", "a", None, 1.0, close, ref, {"max_abs_diff": 0.001}).passed
    flipped = np.array([[0.9, 0.4], [0.2, 0.1]])  # masks [1, 1, 0, 0] and [1, 0, 0, 0]: Dice 2/3
    check = check_artifact("a", "a", 10, 1.23456, flipped, ref, {"mask_dice": 0.6})
    assert check.passed and check.mask_dice == pytest.approx(2 / 3) and check.latency_ms == 1.235
    assert not check_artifact("a", "a", None, 1.0, flipped, ref, {"mask_dice": 0.7}).passed


def test_slices_of_different_sizes_are_padded_centred_to_the_largest():
    """Free-size models: subjects on different grids give slices of different sizes; one array holds them."""
    from wmhkeras.export.verification import _pick_slices

    a, b = np.ones((2, 4, 8, 1), np.float32), 2 * np.ones((1, 8, 4, 1), np.float32)
    out = _pick_slices([a, b], 10)
    assert out.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(out[0, 2:6, :, 0], 1)
    assert out[0, :2].sum() == 0 and out[0, 6:].sum() == 0
    np.testing.assert_array_equal(out[2, :, 2:6, 0], 2)
    assert out[2, :, :2].sum() == 0 and out[2, :, 6:].sum() == 0
