"""Segmentation generators: the dense-block U-Net of Mac et al. (2020) and a plain U-Net baseline.

Imports TensorFlow/Keras. The generators are plain functional models of built-in layers. The frozen
feature extractors of the content loss live beside the loss (:mod:`wmhkeras.losses.backbones`).
"""

from __future__ import annotations

from wmhkeras.models.unet import GENERATORS, build_dense_unet, build_generator, build_unet, count_flops

__all__ = ["GENERATORS", "build_dense_unet", "build_generator", "build_unet", "count_flops"]
