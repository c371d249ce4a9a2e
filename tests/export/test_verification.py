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
