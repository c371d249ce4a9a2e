"""Losses by their config name (:mod:`wmhkeras.losses.factory`)."""

import pytest

from wmhkeras.errors import ConfigError
from wmhkeras.losses import (
    LOSSES,
    DiceBCELoss,
    TverskyLoss,
    get_loss,
)


def test_get_loss_registry():
    assert set(LOSSES) == {"content", "dice", "dice_bce", "tversky", "generalized_dice", "focal", "bce", "hybrid"}
    assert isinstance(get_loss("tversky", alpha=0.5), TverskyLoss)
    hybrid = get_loss("hybrid", overlap="tversky", weight=0.5, weights="random")
    assert isinstance(hybrid.overlap, TverskyLoss) and hybrid.weight == 0.5
    assert isinstance(get_loss("hybrid", overlap="dice_bce", weights="random").overlap, DiceBCELoss)
    with pytest.raises(ConfigError, match="unknown loss 'dicee'; known: content, dice, dice_bce, tversky"):
        get_loss("dicee")
    with pytest.raises(ConfigError, match="bad arguments for loss 'dice'"):
        get_loss("dice", alpha=0.3)
