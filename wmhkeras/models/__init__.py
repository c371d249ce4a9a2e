"""Networks: the segmentation generators and the frozen feature extractors of the content loss.

Imports TensorFlow/Keras. The generators are plain functional models of built-in layers.
"""

from __future__ import annotations

import os

import keras

from wmhkeras.models.backbones import BACKBONES, build_feature_extractor, resolve_weights, vgg_preprocess
from wmhkeras.models.unet import GENERATORS, build_dense_unet, build_generator, build_unet, count_flops

__all__ = [
    "BACKBONES", "GENERATORS", "build_dense_unet", "build_feature_extractor", "build_generator",
    "build_unet", "count_flops", "load_model", "resolve_weights", "vgg_preprocess",
]


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load a saved ``.keras`` generator safely (``safe_mode=True``, no ``custom_objects``).

    ``compile=False`` (default, for inference) skips rebuilding the training loss, so the content loss's
    backbone weights are not needed; ``compile=True`` restores loss and metrics (the content loss then
    resolves its backbone weights again, see :mod:`wmhkeras.losses.content`).
    """
    import wmhkeras.losses  # noqa: F401  (registers the custom losses/metrics a compiled file names)

    return keras.saving.load_model(os.fspath(path), compile=compile, safe_mode=True)
