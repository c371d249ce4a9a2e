"""Losses for WMH segmentation: the Siamese content loss, overlap baselines, hybrids, Dice metric.

Modules: :mod:`~wmhkeras.losses.content` (the Siamese content loss) with its frozen feature extractors
(``backbones``), ``overlap`` (overlap and pixel losses, the hybrid), ``metrics`` (Keras metrics),
``factory`` (a loss by its config name) and ``adversarial`` (the fine-tuning ablation model). Each module
registers its Keras objects (package ``wmhkeras``) when imported; :mod:`wmhkeras.registration` imports all
of them. They import Keras, and with it TensorFlow, its backend.

All losses take the packed target ``y_true`` ``(batch, H, W, 2)`` (channel 0 mask, channel 1 image) or a
plain 1-channel mask where the image is not needed; ``y_pred`` is ``(batch, H, W, 1)``.
"""

import importlib

#: The public names, by the module that defines them, each imported on first use (PEP 562).
_PUBLIC = {
    **dict.fromkeys(("REDUCTION_MODES", "SiameseContentLoss"), "wmhkeras.losses.content"),
    **dict.fromkeys(("DiceMetric", "LossTermMetric"), "wmhkeras.losses.metrics"),
    **dict.fromkeys(("BinaryCrossentropyLoss", "BinaryFocalLoss", "DiceBCELoss", "DiceLoss", "GeneralizedDiceLoss",
                     "HybridLoss", "TverskyLoss", "unpack_target"), "wmhkeras.losses.overlap"),
    **dict.fromkeys(("LOSSES", "get_loss"), "wmhkeras.losses.factory"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
