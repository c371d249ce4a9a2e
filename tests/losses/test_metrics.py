"""The Dice metric (:mod:`wmhkeras.losses.metrics`): counts pooled over the epoch."""

import pytest

from wmhkeras.data.preprocessing import soft_labels
from wmhkeras.losses import (
    DiceMetric,
)

from .helpers import MASKS, PRED, packed


def test_dice_metric_pools_counts_over_the_epoch():
    metric = DiceMetric()
    assert float(metric.result()) == 1.0  # nothing seen, nothing predicted
    # Batch 1 (soft labels): G = 1 pixel, P = 2 (0.5 counts as lesion), TP = 1.
    metric.update_state(packed(soft_labels(MASKS[:1])), PRED[:1])
    # Batch 2: G = 0, P = 2.
    metric.update_state(MASKS[1:], PRED[1:])
    assert float(metric.result()) == pytest.approx(2 * 1 / (4 + 1))
    metric.reset_state()
    metric.update_state(MASKS, MASKS)
    assert float(metric.result()) == 1.0
