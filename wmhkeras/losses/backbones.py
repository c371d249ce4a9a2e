"""Frozen ImageNet feature extractors for the Siamese content loss, loaded strictly offline.

The paper (Mac et al., MIDL 2020, section 2.2) feeds both Siamese branches through the first two blocks
of an ImageNet VGG19; our default is VGG16, whose first two blocks have the same shapes (64 and 128
filters) but other weights. Nothing here ever downloads: ``weights='imagenet'`` reads the file the
Keras-applications cache would hold, and a missing file raises :class:`WeightsError` that says how to
get it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import keras

from wmhkeras.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)

#: Keras-applications constructor and cached no-top weight file for each supported backbone.
BACKBONES: dict[str, tuple[str, str]] = {
    "vgg16": ("VGG16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg19": ("VGG19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}

#: Default feature layers: the outputs of the first two max-pools (paper, equation 1).
DEFAULT_LAYERS: tuple[str, ...] = ("block1_pool", "block2_pool")


def keras_cache_dir() -> Path:
    """``$KERAS_HOME/models`` (default ``~/.keras/models``), read at call time."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")


def resolve_weights(name: str, weights: str | os.PathLike) -> Path | None:
    """Find the weight file for ``weights`` without building anything (cheap; fails before work starts).

    Args:
        name: ``'vgg16'`` or ``'vgg19'``.
        weights: ``'imagenet'`` (the Keras-applications cache file), ``'random'`` (no file), or a path.

    Returns:
        The file to load, or ``None`` for ``'random'``.

    Raises:
        ConfigError: unknown backbone name.
        WeightsError: the file does not exist (the message says where it was looked for and how to get it).
    """
    _check_name(name)
    if weights == "random":
        return None
    ctor, filename = BACKBONES[name]
    if weights == "imagenet":
        path = keras_cache_dir() / filename
        if not path.is_file():
            raise WeightsError(
                f"ImageNet weights for {name} not found: expected {filename} in {path.parent} "
                f"($KERAS_HOME/models). Nothing is downloaded. To get it, run "
                f"`python -c \"import keras; keras.applications.{ctor}(include_top=False)\"` once on a "
                f"machine with internet and copy ~/.keras/models/{filename} here, or set "
                f"`weights: <path>` in the config to a local copy of that file."
            )
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"backbone weights file {str(path)!r} (config `weights: <path>`) does not exist; expected a "
            f"Keras-applications no-top file like {filename}, or 'imagenet' / 'random'"
        )
    return path


def build_feature_extractor(
    name: str = "vgg16",
    layers: Sequence[str] = DEFAULT_LAYERS,
    weights: str | os.PathLike = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> keras.Model:
    """A frozen VGG truncated after the deepest requested layer, returning the requested layers.

    The full no-top network is built with ``weights=None`` (so Keras never downloads), weights are loaded
    into it from ``weights`` (see :func:`resolve_weights`), then it is cut. Accepted weight files: the
    Keras-applications legacy HDF5 (``*.h5``, order-based, shapes checked) and Keras 3 ``*.weights.h5``
    written by ``keras.applications.VGG16(weights=None, include_top=False).save_weights(...)``.

    Args:
        name: ``'vgg16'`` or ``'vgg19'``.
        layers: layer names whose outputs are returned, e.g. ``('block1_pool', 'block2_pool')``.
        weights: ``'imagenet'``, ``'random'`` (explicit only; logs a warning) or a file path.
        input_shape: ``(H, W, 3)``; ``None`` dims accept any size.

    Returns:
        A model with ``trainable=False`` mapping ``(batch, H, W, 3)`` caffe-preprocessed images to a list
        of feature maps, one per requested layer (in the requested order).

    Raises:
        ConfigError: unknown backbone or layer names (the message lists the valid layers).
        WeightsError: weights file missing or not matching the architecture.
    """
    path = resolve_weights(name, weights)
    layers = tuple(layers)
    if not layers:
        raise ConfigError(f"backbone layers must name at least one layer of {name}; got an empty list")
    ctor, _ = BACKBONES[name]
    full = getattr(keras.applications, ctor)(include_top=False, weights=None, input_shape=tuple(input_shape))
    valid = [layer.name for layer in full.layers[1:]]
    unknown = [layer for layer in layers if layer not in valid]
    if unknown:
        raise ConfigError(f"unknown {name} layer(s) {unknown}; valid: {', '.join(valid)}")
    if path is None:
        log.warning("backbone %s uses RANDOM weights (weights='random'): fine for tests and timing, "
                       "not for training a segmentation model", name)
    else:
        try:
            full.load_weights(str(path), skip_mismatch=False)
        except (ValueError, OSError, KeyError) as err:
            raise WeightsError(f"cannot load {name} no-top weights from {str(path)!r}: {err}") from err
        log.info("loaded %s weights from %s", name, path)
    # Connecting to intermediate outputs keeps only the layers up to the deepest one.
    extractor = keras.Model(full.input, [full.get_layer(layer).output for layer in layers],
                            name=f"{name}_features")
    extractor.trainable = False
    return extractor


#: ImageNet channel means in BGR order, as subtracted by Keras-applications' caffe-mode preprocessing.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)


def vgg_preprocess(images):
    """Caffe-style VGG preprocessing of ``[0, 1]`` images: x255, RGB->BGR, ImageNet mean subtracted.

    Equivalent to ``keras.applications.vgg16.preprocess_input(255 * x)`` for 3 channels. A grey
    ``(batch, H, W, 1)`` input is repeated into 3 channels by broadcasting against the 3-value mean (one
    op instead of a concatenation; the BGR flip is the identity for grey images).

    Args:
        images: ``(batch, H, W, 1)`` grey or ``(batch, H, W, 3)`` RGB tensor, values in ``[0, 1]``.

    Returns:
        ``(batch, H, W, 3)`` float tensor, the backbone's expected input.
    """
    channels = images.shape[-1]
    if channels == 3:
        images = keras.ops.flip(images, axis=-1)
    elif channels != 1:
        raise ConfigError(f"VGG preprocessing needs 1 (grey) or 3 (RGB) channels; got {channels}")
    mean = keras.ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=images.dtype)
    return images * 255.0 - mean
