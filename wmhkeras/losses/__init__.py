"""Losses for WMH segmentation: the Siamese content loss, overlap baselines, hybrids, Dice metric.

Importing this package registers every loss and metric with Keras (package ``wmhkeras``), so compiled
``.keras`` files load without ``custom_objects``. It needs Keras, not TensorFlow: the content loss imports
TensorFlow when it first builds its backbone.

All losses take the packed target ``y_true`` ``(batch, H, W, 2)`` (channel 0 mask, channel 1 image) or a
plain 1-channel mask where the image is not needed; ``y_pred`` is ``(batch, H, W, 1)``.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from wmhkeras.errors import ConfigError
from wmhkeras.losses.content import REDUCTION_MODES, SiameseContentLoss
from wmhkeras.losses.metrics import DiceMetric, LossTermMetric
from wmhkeras.losses.overlap import (
    BinaryCrossentropyLoss,
    BinaryFocalLoss,
    DiceBCELoss,
    DiceLoss,
    GeneralizedDiceLoss,
    HybridLoss,
    TverskyLoss,
    unpack_target,
)

__all__ = [
    "LOSSES", "REDUCTION_MODES", "BinaryCrossentropyLoss", "BinaryFocalLoss", "DiceBCELoss", "DiceLoss", "DiceMetric",
    "GeneralizedDiceLoss", "HybridLoss", "LossTermMetric", "SiameseContentLoss", "TverskyLoss", "get_loss",
    "unpack_target",
]


def _hybrid(overlap: str | keras.losses.Loss = "dice", weight: float = 1.0,
            overlap_kwargs: dict | None = None, **content_kwargs) -> HybridLoss:
    """``content + weight * overlap``; ``content_kwargs`` go to :class:`SiameseContentLoss`."""
    if isinstance(overlap, str):
        if overlap in ("content", "hybrid"):
            raise ConfigError(f"hybrid overlap must be an overlap/pixel loss; got {overlap!r}")
        overlap = get_loss(overlap, **(overlap_kwargs or {}))
    return HybridLoss(SiameseContentLoss(**content_kwargs), overlap, weight)


#: Loss constructors by the name used in configs (``loss.name``).
LOSSES: dict[str, Callable[..., keras.losses.Loss]] = {
    "content": SiameseContentLoss,
    "dice": DiceLoss,
    "dice_bce": DiceBCELoss,
    "tversky": TverskyLoss,
    "generalized_dice": GeneralizedDiceLoss,
    "focal": BinaryFocalLoss,
    "bce": BinaryCrossentropyLoss,
    "hybrid": _hybrid,
}


def get_loss(name: str, **kwargs) -> keras.losses.Loss:
    """Build a loss by name; ``kwargs`` go to its constructor.

    Names: ``content``, ``dice``, ``dice_bce``, ``tversky``, ``generalized_dice``, ``focal``, ``bce``, ``hybrid``
    (``hybrid`` takes ``overlap='dice'``, ``weight=1.0``, ``overlap_kwargs=None`` and the content loss's
    arguments).

    Raises:
        ConfigError: unknown name (the message lists the known ones), or a bad argument.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    try:
        return LOSSES[name](**kwargs)
    except TypeError as err:  # unexpected keyword: a config typo
        raise ConfigError(f"bad arguments for loss {name!r} {sorted(kwargs)}: {err}") from err
