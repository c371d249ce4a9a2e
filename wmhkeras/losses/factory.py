"""Losses by the name a config gives them (``loss.name``): :data:`LOSSES` and :func:`get_loss`."""

from __future__ import annotations

from collections.abc import Callable

import keras

from wmhkeras.errors import ConfigError
from wmhkeras.losses.content import SiameseContentLoss
from wmhkeras.losses.overlap import (
    BinaryCrossentropyLoss,
    BinaryFocalLoss,
    DiceBCELoss,
    DiceLoss,
    GeneralizedDiceLoss,
    HybridLoss,
    TverskyLoss,
)


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
