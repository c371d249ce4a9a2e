"""Segmentation generators (:mod:`~wmhkeras.models.unet`): the dense-block U-Net of Mac et al. (2020) and a
plain U-Net baseline, plain functional models of built-in layers, and their FLOP count.

The frozen feature extractors of the content loss live beside the loss (:mod:`wmhkeras.losses.backbones`).
"""

import importlib

#: The public names, by the module that defines them, each imported on first use (PEP 562).
_PUBLIC = {
    **dict.fromkeys(("GENERATORS", "build_dense_unet", "build_generator", "build_unet", "count_flops"),
                     "wmhkeras.models.unet"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
