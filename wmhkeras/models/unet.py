"""Segmentation generators: the paper's dense U-Net and a plain, lighter U-Net.

Both builders return plain Keras functional models made only of built-in layers, so a saved ``.keras``
file loads without ``custom_objects``. Tensors are ``(batch, height, width, channels)``; the output is
``(batch, height, width, 1)`` sigmoid probabilities, always float32 (also under a ``mixed_float16``
policy, so losses and metrics see full precision).

Architecture: Mac, Moody & Khademi, "Siamese Content Loss Networks for Highly Imbalanced Medical Image
Segmentation", MIDL 2020, section 2.1 and figure 2 (see ``docs/models.md`` for our reading, the
parameter counts and the FLOPs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import keras

from wmhkeras.errors import ConfigError

log = logging.getLogger(__name__)

#: LeakyReLU slope of every conv unit (paper section 2.1).
LEAKY_SLOPE = 0.1


def _check_shape(input_shape: Sequence[int | None], depth: int, base_filters: int) -> tuple[int | None, int | None, int]:
    """Validate ``(height, width, channels)`` against the ``depth`` pooling steps; return it as a tuple.

    ``height`` and ``width`` may be ``None``: the model is then fully convolutional and accepts any
    in-plane size divisible by ``2**depth`` (callers pad to it: :class:`~wmhkeras.data.preprocessing.Resampling`).
    """
    if len(input_shape) != 3:
        raise ConfigError(f"input_shape must be (height, width, channels); got {tuple(input_shape)!r}")
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"depth must be an integer >= 1; got {depth!r}")
    if not isinstance(base_filters, int) or base_filters < 1:
        raise ConfigError(f"base_filters must be an integer >= 1; got {base_filters!r}")
    height, width, channels = (None if v is None else int(v) for v in input_shape)
    if channels is None or channels < 1:
        raise ConfigError(f"input_shape channels must be >= 1; got {channels}")
    check_spatial_size([s for s in (height, width) if s is not None], depth)
    return height, width, channels


def check_spatial_size(size: Sequence[int], depth: int, what: str = "input size") -> None:
    """Raise :class:`ConfigError` unless every in-plane size is a positive multiple of ``2**depth``."""
    divisor = 2**depth
    if any(int(s) < 1 or int(s) % divisor for s in size):
        shown = "x".join(str(int(s)) for s in size)
        first = next(int(s) for s in size if int(s) < 1 or int(s) % divisor)
        raise ConfigError(
            f"{what} {shown} is not divisible by 2^depth = {divisor} (depth={depth}); "
            f"use a size that is a multiple of {divisor}, e.g. {divisor * max(1, round(first / divisor))}"
        )


def model_depth(model: keras.Model) -> int:
    """The number of 2x2 pooling steps of a generator (its in-plane sizes must divide by ``2**depth``)."""
    return sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers)


#: BatchNorm moving-average momentum (Keras' default). Short trainings (a few hundred steps) track
#: the batch statistics better with a lower value such as 0.9: see ``model.bn_momentum``.
BN_MOMENTUM = 0.99


def _conv_unit(x, filters: int, name: str, momentum: float = BN_MOMENTUM):
    """3x3 Conv2D (same padding) -> BatchNorm -> LeakyReLU(0.1). Bias omitted: BN's beta replaces it."""
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_act")(x)


def _dense_block(x, filters: int, name: str, momentum: float = BN_MOMENTUM, units: int = 3):
    """DenseNet-style block: one initial 3x3 conv, then ``units`` conv units.

    Each unit's input is the concatenation of the block's earlier outputs (the initial conv's output and
    every earlier unit's), as in DenseNet (Huang et al. 2017). The block returns the last unit's output
    (``filters`` channels), which keeps the decoder's widths equal to the encoder's.
    """
    outputs = [keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_init")(x)]
    for i in range(units):
        unit_in = outputs[0] if i == 0 else keras.layers.Concatenate(name=f"{name}_cat{i}")(outputs)
        outputs.append(_conv_unit(unit_in, filters, f"{name}_u{i}", momentum))
    return outputs[-1]


def _plain_block(x, filters: int, name: str, momentum: float = BN_MOMENTUM):
    """Two conv units: the classic U-Net level (Ronneberger et al. 2015), with BN and LeakyReLU."""
    return _conv_unit(_conv_unit(x, filters, f"{name}_u0", momentum), filters, f"{name}_u1", momentum)


def _up_block(x, skip, filters: int, name: str, momentum: float = BN_MOMENTUM):
    """2x2 stride-2 transposed conv, concatenation with the encoder skip, LeakyReLU, BN (paper fig. 2)."""
    x = keras.layers.Conv2DTranspose(filters, 2, strides=2, name=f"{name}_tconv")(x)
    x = keras.layers.Concatenate(name=f"{name}_cat")([x, skip])
    x = keras.layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=f"{name}_act")(x)
    return keras.layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)


def _build(
    block: Callable,
    input_shape,
    depth: int,
    base_filters: int,
    bottleneck_filters: int | None,
    name: str,
    bn_momentum: float = BN_MOMENTUM,
    output_prior: float | None = None,
) -> keras.Model:
    """Encoder-bottleneck-decoder skeleton shared by both generators; ``block`` builds one level."""
    shape = _check_shape(input_shape, depth, base_filters)
    if not 0.0 <= bn_momentum < 1.0:
        raise ConfigError(f"bn_momentum must be in [0, 1); got {bn_momentum!r}")
    if output_prior is not None and not 0.0 < output_prior < 1.0:
        raise ConfigError(f"output_prior must be in (0, 1) or None; got {output_prior!r}")
    if bottleneck_filters is None:
        bottleneck_filters = base_filters * 2 ** (depth - 1)
    elif not isinstance(bottleneck_filters, int) or bottleneck_filters < 1:
        raise ConfigError(f"bottleneck_filters must be an integer >= 1 or None; got {bottleneck_filters!r}")
    inputs = keras.Input(shape=shape, name="image")
    x, skips = inputs, []
    # === Encoder: base * 2^i filters, a 2x2 max-pool after each level ===
    for level in range(depth):
        x = block(x, base_filters * 2**level, f"enc{level}", bn_momentum)
        skips.append(x)
        x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    # === Bottleneck: the paper lists no width beyond the deepest encoder's, so we keep that width ===
    x = block(x, bottleneck_filters, "bottleneck", bn_momentum)
    # === Decoder: widths mirror the encoder ===
    for level in reversed(range(depth)):
        x = _up_block(x, skips[level], base_filters * 2**level, f"dec{level}", bn_momentum)
        x = block(x, base_filters * 2**level, f"dec{level}", bn_momentum)
    # === Head: 1x1 conv, sigmoid kept in float32 under mixed precision ===
    # With a prior p the output starts at p everywhere (bias log(p / (1 - p)), Lin et al. 2017, focal
    # loss): under heavy class imbalance the first steps then need not unlearn a 0.5 background.
    bias = "zeros" if output_prior is None else keras.initializers.Constant(math.log(output_prior / (1 - output_prior)))
    x = keras.layers.Conv2D(1, 1, bias_initializer=bias, name="head_conv")(x)
    outputs = keras.layers.Activation("sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name=name)


def build_dense_unet(
    input_shape: Sequence[int] = (224, 224, 1),
    depth: int = 5,
    base_filters: int = 32,
    name: str = "dense_unet",
    *,
    bottleneck_filters: int | None = None,
    bn_momentum: float = BN_MOMENTUM,
    output_prior: float | None = None,
) -> keras.Model:
    """The paper's generator: a U-Net whose levels are dense blocks.

    Args:
        input_shape: ``(height, width, channels)``; height and width must divide by ``2**depth``, or be
            ``None`` (a fully convolutional model that segments slices of any size divisible by
            ``2**depth``, e.g. trained on patches, applied to whole slices; :func:`free_size` makes
            this copy of a model built for one size).
        depth: number of encoder levels (= max-pools = upsample blocks). The paper uses 5.
        base_filters: filters of the first level; level ``i`` has ``base_filters * 2**i`` (32..512 in the
            paper).
        name: model name.
        bottleneck_filters: width of the bottleneck dense block; ``None`` (default) keeps the deepest
            encoder width ``base_filters * 2**(depth - 1)`` (512 in the paper's setting: the paper names
            no wider layer). Pass ``base_filters * 2**depth`` for the classic U-Net doubling.
        bn_momentum: momentum of every BatchNorm's moving averages (the paper does not say; Keras'
            0.99 by default, 0.9 suits trainings of a few hundred steps).
        output_prior: initial output probability everywhere (head bias ``log(p/(1-p))``); ``None``
            starts at 0.5 (zero bias). The paper does not say; 0.01 helps short trainings.

    Returns:
        A functional model mapping ``(batch, H, W, C)`` float32 images to ``(batch, H, W, 1)`` float32
        probabilities.

    Raises:
        ConfigError: the input size does not divide by ``2**depth``, or a bad depth/filter count.
    """
    return _build(_dense_block, input_shape, depth, base_filters, bottleneck_filters, name, bn_momentum, output_prior)


def build_unet(
    input_shape: Sequence[int] = (224, 224, 1),
    depth: int = 5,
    base_filters: int = 32,
    name: str = "unet",
    *,
    bottleneck_filters: int | None = None,
    bn_momentum: float = BN_MOMENTUM,
    output_prior: float | None = None,
) -> keras.Model:
    """A plain U-Net (two conv units per level), same skeleton and signature as :func:`build_dense_unet`.

    Lighter and faster than the dense U-Net; meant for quick experiments and tests.
    """
    return _build(_plain_block, input_shape, depth, base_filters, bottleneck_filters, name, bn_momentum, output_prior)


#: Generator builders by the name used in configs (``model.arch``).
GENERATORS: dict[str, Callable[..., keras.Model]] = {
    "dense_unet": build_dense_unet,
    "unet": build_unet,
}


def build_generator(arch: str, **kwargs) -> keras.Model:
    """Build a generator by name (``'dense_unet'`` or ``'unet'``); ``kwargs`` go to the builder.

    Raises:
        ConfigError: unknown ``arch`` (the message lists the known names).
    """
    if arch not in GENERATORS:
        raise ConfigError(f"unknown generator arch {arch!r}; known: {', '.join(sorted(GENERATORS))}")
    return GENERATORS[arch](**kwargs)


def free_size(model: keras.Model) -> keras.Model:
    """The same generator with a free in-plane size: input ``(None, None, C)``, equal weight values.

    Training runs the graph built for its sample size (static shapes give the same numbers as ever and
    let the kernels specialise); checkpoints for inference and models loaded for whole-slice
    segmentation use this copy, which accepts any size divisible by ``2**depth``. A model whose input is
    already free is returned as it is.
    """
    if tuple(model.input_shape[1:3]) == (None, None):
        return model
    copy = _rebuilt(model, (None, None, model.input_shape[-1]))
    copy.set_weights(model.get_weights())
    return copy


def with_dtype_policy(model: keras.Model, policy: str) -> keras.Model:
    """The same generator with every layer (nested models included) under the Keras dtype ``policy``
    (``"float32"``, ``"mixed_bfloat16"``, ...) and equal weight values (variables stay float32 under
    the mixed policies). Used to segment in bfloat16 (``segment --precision``, the bfloat16 SavedModel)
    and to bring a checkpoint saved under a mixed policy back to float32."""

    def clone(layer):
        config = layer.get_config()
        if not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = keras.DTypePolicy(policy)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy


def _rebuilt(model: keras.Model, shape: tuple) -> keras.Model:
    """The functional ``model``'s graph rebuilt on an input of ``shape`` (new, unset weights)."""
    new = keras.Input(shape=shape)
    # a model loaded from a .keras file keeps its inputs as a list: clone_model wants the same structure
    return keras.models.clone_model(model, input_tensors=[new] if isinstance(model.input, (list, tuple)) else new)


def count_flops(model: keras.Model, input_size: Sequence[int] | None = None) -> int:
    """Forward FLOPs of one sample, counted analytically as 2 x multiply-accumulates of the convolutions.

    Conv2D: ``2 * H_out * W_out * C_out * k_h * k_w * C_in / groups``; Conv2DTranspose:
    ``2 * H_in * W_in * C_in * k_h * k_w * C_out`` (every input pixel scatters a full kernel). Batch norm,
    activations, pooling and bias additions are ignored (they are O(activations), not O(weights)).
    Nested models are counted recursively. A fully convolutional model (``None`` in-plane sizes) needs
    ``input_size=(height, width)``: it is counted as a copy built for that size.
    """
    if input_size is not None:
        model = _rebuilt(model, (*map(int, input_size), model.input_shape[-1]))
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += count_flops(layer)
            continue
        if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)):
            continue
        in_shape, out_shape = layer.input.shape, layer.output.shape
        if any(v is None for v in (*in_shape[1:], *out_shape[1:])):
            raise ConfigError(f"count_flops needs a fixed input size (pass input_size); layer {layer.name} has {in_shape}")
        kh, kw, *_ = layer.kernel.shape
        if isinstance(layer, keras.layers.Conv2DTranspose):
            _, h, w, c_in = in_shape
            macs = h * w * c_in * kh * kw * out_shape[-1]
        else:
            _, h, w, c_out = out_shape
            macs = h * w * c_out * kh * kw * in_shape[-1] // layer.groups
        total += 2 * int(macs)
    return total
