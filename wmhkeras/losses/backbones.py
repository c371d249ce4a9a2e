"""Frozen ImageNet feature extractors for the Siamese content loss, loaded strictly offline.

The paper (Mac et al., MIDL 2020, section 2.2) feeds both Siamese branches through the first two blocks
of an ImageNet VGG19; our default is VGG16, whose first two blocks have the same shapes (64 and 128
filters) but other weights. Nothing here ever downloads.

Where ``weights='imagenet'`` comes from (:func:`weights_source`):

- VGG19: the package carries its ImageNet blocks 1 and 2 (:data:`CARRIED`, about 1 MB of float32, credit
  in ``weights/NOTICE``), enough for every layer up to ``block2_pool``, the paper's layers. They are used
  for those layers even when the Keras cache holds the full file: the same weights on every machine, so one
  sha256 in every run's record. A deeper layer reads the Keras-applications file from the Keras cache.
- VGG16: the Keras-applications file in the Keras cache, ``$KERAS_HOME/models``.

A weights path may be a Keras-applications HDF5 file (the whole no-top network) or an ``.npz`` of arrays
keyed ``<layer>/kernel`` and ``<layer>/bias`` in Keras layout (:func:`read_npz_layers`), which may hold
only the first layers: enough when it reaches the deepest requested layer, and then only the layers up to
that one are built. A layer deeper than a file holds, or a missing file, raises :class:`WeightsError`.
"""

from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from wmhkeras.errors import ConfigError, WeightsError
from wmhkeras.io.files import sha256

log = logging.getLogger(__name__)

#: Keras-applications constructor and cached no-top weight file for each supported backbone.
BACKBONES: dict[str, tuple[str, str]] = {
    "vgg16": ("VGG16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg19": ("VGG19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}
#: Conv layers per block (``block<b>_conv1`` ... then ``block<b>_pool``) and the filters of each block, as
#: Keras applications builds them: 3x3 same-padded ReLU convolutions, 2x2 max-pools of stride 2.
VGG_BLOCKS: dict[str, tuple[int, ...]] = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
VGG_FILTERS = (64, 128, 256, 512, 512)

#: Default feature layers: the outputs of the first two max-pools (paper, equation 1).
DEFAULT_LAYERS: tuple[str, ...] = ("block1_pool", "block2_pool")

#: ImageNet weights carried in the package, by backbone: VGG19 blocks 1-2 (made by
#: ``scripts/carry_vgg19_blocks.py`` from ImageNet VGG19 blocks 1-3; credit in ``weights/NOTICE``).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CARRIED: dict[str, Path] = {"vgg19": WEIGHTS_DIR / "vgg19_imagenet_block1-2.npz"}
CARRIED_SHA256: dict[str, str] = {
    "vgg19": "cbe2c8c3ee31ec9d6816100262b136608e3d7c2c3b0a9426de22b086702b4bc4",
}

#: Where the weights of a backbone come from (:attr:`WeightsSource.kind`).
SOURCE_KINDS = ("random", "carried", "keras_cache", "file")


def keras_cache_dir() -> Path:
    """``$KERAS_HOME/models`` (default ``~/.keras/models``), read at call time."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"


def _check_name(name: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")


def layer_names(name: str) -> list[str]:
    """The layers of the no-top VGG ``name`` in network order, without the input: ``block1_conv1``, ..."""
    _check_name(name)
    names = []
    for block, convs in enumerate(VGG_BLOCKS[name], start=1):
        names += [f"block{block}_conv{i}" for i in range(1, convs + 1)] + [f"block{block}_pool"]
    return names


def deepest_layer(name: str, layers: Sequence[str]) -> str:
    """The deepest of ``layers`` in the network (checked: a :class:`ConfigError` lists the valid names)."""
    valid = layer_names(name)
    layers = tuple(layers)
    if not layers:
        raise ConfigError(f"backbone layers must name at least one layer of {name}; got an empty list")
    unknown = [layer for layer in layers if layer not in valid]
    if unknown:
        raise ConfigError(f"unknown {name} layer(s) {unknown}; valid: {', '.join(valid)}")
    return max(layers, key=valid.index)


# === Partial weight files (.npz) ===


def read_npz_layers(name: str, path: str | os.PathLike) -> list[str]:
    """The layers of ``name`` that the ``.npz`` at ``path`` covers, in network order (reads its index only).

    A layer is covered when every convolution up to it has both ``<layer>/kernel`` and ``<layer>/bias``:
    ``block2_pool`` needs ``block1_conv1`` to ``block2_conv2``.

    Raises:
        WeightsError: not a readable ``.npz``, or it holds arrays that are no weight of ``name`` (a file
            of another backbone, or another key layout).
    """
    try:
        with zipfile.ZipFile(path) as z:
            keys = {n.removesuffix(".npy") for n in z.namelist()}
    except (OSError, zipfile.BadZipFile) as err:
        raise WeightsError(f"cannot read the {name} weights file {str(path)!r}: {err}") from err
    valid = layer_names(name)
    convs = [layer for layer in valid if "_conv" in layer]
    wanted = {f"{layer}/{w}" for layer in convs for w in ("kernel", "bias")}
    stray = sorted(keys - wanted)
    if stray:
        raise WeightsError(f"{str(path)!r} is not a {name} weights file: it holds {stray[0]!r}"
                           f"{f' and {len(stray) - 1} more' if len(stray) > 1 else ''}; expected arrays "
                           f"keyed <layer>/kernel and <layer>/bias of {name}'s layers ({convs[0]} ...)")
    covered = []
    for layer in valid:
        if "_conv" in layer and not {f"{layer}/kernel", f"{layer}/bias"} <= keys:
            break
        covered.append(layer)
    return covered


def _check_covers(name: str, layers: Sequence[str], path: Path, what: str, hint: str = "") -> None:
    """:class:`WeightsError` naming the first of ``layers`` deeper than the ``.npz`` at ``path`` holds."""
    covered = read_npz_layers(name, path)
    deepest = deepest_layer(name, layers)
    if deepest not in covered:
        held = f"deepest layer: {covered[-1]}" if covered else f"no {name} layer"
        raise WeightsError(f"layer {deepest!r} of {name} is deeper than {what} ({held}){hint}")


# === Where the weights come from ===


@dataclass(frozen=True)
class WeightsSource:
    """The weights of a backbone: ``kind`` (one of :data:`SOURCE_KINDS`) and the file (``None``: random)."""

    kind: str
    path: Optional[Path]

    @property
    def is_npz(self) -> bool:
        return self.path is not None and self.path.suffix.lower() == ".npz"

    @property
    def file(self) -> Optional[str]:
        """How a record names the file: package-relative when carried, the cache file's name, else the path."""
        if self.path is None:
            return None
        if self.kind == "carried":
            return f"wmhkeras/losses/weights/{self.path.name}"
        return self.path.name if self.kind == "keras_cache" else str(self.path)


def weights_source(name: str, weights: str | os.PathLike,
                   layers: Sequence[str] = DEFAULT_LAYERS) -> WeightsSource:
    """Find the weights for ``layers`` of backbone ``name`` without building anything (cheap; fails first).

    Args:
        name: ``'vgg16'`` or ``'vgg19'``.
        weights: ``'imagenet'`` (the carried file, else the Keras-applications cache file; see the module
            docstring), ``'random'`` (no file), or a path (``.h5``, or an ``.npz`` that may hold only the
            first layers).
        layers: the layers to be returned; a partial file must reach the deepest of them.

    Raises:
        ConfigError: unknown backbone or layer names.
        WeightsError: no file (the message says where it was looked for and how to get it), or a layer deeper
            than the file holds (the message names the layer and the file's deepest layer).
    """
    _check_name(name)
    deepest = deepest_layer(name, layers)
    if weights == "random":
        return WeightsSource("random", None)
    ctor, filename = BACKBONES[name]
    cached = keras_cache_dir() / filename
    if weights == "imagenet":
        carried = CARRIED.get(name)
        if carried is not None:
            if not carried.is_file():
                raise WeightsError(f"the ImageNet {name} weights the package carries are missing ({carried}); "
                                   "reinstall wmhkeras")
            if deepest in read_npz_layers(name, carried):
                return WeightsSource("carried", carried)
            if cached.is_file():
                return WeightsSource("keras_cache", cached)
            _check_covers(name, layers, carried, f"the ImageNet weights the package carries, {carried.name}",
                          f", and {filename} is not in {cached.parent} ($KERAS_HOME/models): put that file "
                          f"there, or set `weights: <path>` to a weights file that holds {deepest}")
        if not cached.is_file():
            offline = " (`backbone: vgg19` works offline: the package carries its ImageNet blocks 1-2)"
            raise WeightsError(
                f"ImageNet weights for {name} not found: expected {filename} in {cached.parent} "
                f"($KERAS_HOME/models). Nothing is downloaded. To get it, run "
                f"`python -c \"import keras; keras.applications.{ctor}(include_top=False)\"` once on a "
                f"machine with internet and copy ~/.keras/models/{filename} here, or set "
                f"`weights: <path>` in the config to a local copy of that file"
                + ("" if name in CARRIED else offline)
            )
        return WeightsSource("keras_cache", cached)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"backbone weights file {str(path)!r} (config `weights: <path>`) does not exist; expected a "
            f"Keras-applications no-top file like {filename}, an .npz of <layer>/kernel and <layer>/bias "
            f"arrays, or 'imagenet' / 'random'"
        )
    source = WeightsSource("file", path)
    if source.is_npz:
        _check_covers(name, layers, path, f"the weights file {str(path)!r} holds")
    return source


def resolve_weights(name: str, weights: str | os.PathLike,
                    layers: Sequence[str] = DEFAULT_LAYERS) -> Path | None:
    """The weight file :func:`weights_source` finds (``None`` for ``'random'``); same arguments and errors."""
    return weights_source(name, weights, layers).path


def weights_record(name: str, weights: str | os.PathLike, layers: Sequence[str] = DEFAULT_LAYERS) -> dict:
    """What a run records of its backbone: ``name``, ``layers``, ``weights`` (as configured), ``source``
    (:data:`SOURCE_KINDS`), ``file`` and its ``sha256`` (``None`` for random weights).

    Raises:
        as :func:`weights_source`.
    """
    source = weights_source(name, weights, layers)
    return {"name": name, "layers": list(layers), "weights": str(weights), "source": source.kind,
            "file": source.file, "sha256": None if source.path is None else sha256(source.path)}


# === Building ===


def _build_vgg(name: str, upto: str, input_shape) -> keras.Model:
    """The no-top VGG ``name`` up to layer ``upto``, with Keras applications' layer names and settings."""
    inputs = keras.layers.Input(shape=tuple(input_shape))
    x = inputs
    for layer in layer_names(name)[: layer_names(name).index(upto) + 1]:
        if layer.endswith("_pool"):
            x = keras.layers.MaxPooling2D((2, 2), strides=(2, 2), name=layer)(x)
        else:
            filters = VGG_FILTERS[int(layer[5]) - 1]
            x = keras.layers.Conv2D(filters, (3, 3), activation="relu", padding="same", name=layer)(x)
    return keras.Model(inputs, x, name=name)


def _load_npz(model: keras.Model, name: str, source: WeightsSource) -> None:
    """Set every conv layer of ``model`` from the ``.npz`` of ``source`` (shapes checked)."""
    path = source.path
    if source.kind == "carried":
        digest = sha256(path)
        if digest != CARRIED_SHA256[name]:
            raise WeightsError(f"the ImageNet {name} weights the package carries ({path}) are damaged: sha256 "
                               f"{digest}, expected {CARRIED_SHA256[name]}; reinstall wmhkeras")
    try:
        with np.load(path, allow_pickle=False) as arrays:
            convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
            values = {layer.name: [arrays[f"{layer.name}/{w}"] for w in ("kernel", "bias")] for layer in convs}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise WeightsError(f"cannot load {name} weights from {str(path)!r}: {err}") from err
    for layer in convs:
        for weight, value, variable in zip(("kernel", "bias"), values[layer.name], (layer.kernel, layer.bias),
                                           strict=True):
            if tuple(value.shape) != tuple(variable.shape):
                raise WeightsError(f"cannot load {name} weights from {str(path)!r}: {layer.name}/{weight} has "
                                   f"shape {tuple(value.shape)}, {name} needs {tuple(variable.shape)}")
        layer.set_weights([np.asarray(v, "float32") for v in values[layer.name]])


def build_feature_extractor(
    name: str = "vgg16",
    layers: Sequence[str] = DEFAULT_LAYERS,
    weights: str | os.PathLike = "imagenet",
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
) -> keras.Model:
    """A frozen VGG truncated after the deepest requested layer, returning the requested layers.

    Weights come from :func:`weights_source`. An ``.npz`` (the carried VGG19 blocks, or a path) is loaded
    into the layers up to the deepest requested one, built alone. Otherwise the full no-top network is
    built with ``weights=None`` (so Keras never downloads), weights are loaded into it, then it is cut.
    Accepted HDF5 files: the Keras-applications legacy HDF5 (``*.h5``, order-based, shapes checked) and
    Keras 3 ``*.weights.h5`` written by ``keras.applications.VGG16(weights=None, include_top=False)
    .save_weights(...)``.

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
        WeightsError: weights file missing, not reaching the deepest layer, or not matching the architecture.
    """
    source = weights_source(name, weights, layers)
    layers = tuple(layers)
    if source.is_npz:
        full = _build_vgg(name, deepest_layer(name, layers), input_shape)
        _load_npz(full, name, source)
        log.info("loaded %s weights up to %s from %s", name, deepest_layer(name, layers), source.path)
    else:
        ctor, _ = BACKBONES[name]
        full = getattr(keras.applications, ctor)(include_top=False, weights=None, input_shape=tuple(input_shape))
        if source.path is None:
            log.warning("backbone %s uses RANDOM weights (weights='random'): fine for tests and timing, "
                        "not for training a segmentation model", name)
        else:
            try:
                full.load_weights(str(source.path), skip_mismatch=False)
            except (ValueError, OSError, KeyError) as err:
                raise WeightsError(f"cannot load {name} no-top weights from {str(source.path)!r}: {err}") from err
            log.info("loaded %s weights from %s", name, source.path)
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
