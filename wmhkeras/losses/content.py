"""The Siamese content loss of Mac, Moody & Khademi (MIDL 2020, section 2.2, equation 1).

``l = (1/L) sum_i (f_c(x*y)_i - f_c(x*y')_i)^2``: the image masked by the ground truth (``x*y``) and by
the prediction (``x*y'``) go through one frozen ImageNet backbone (both Siamese branches share it);
``f_c`` flattens the chosen feature maps and concatenates them into one vector of length ``L``.

Serialisation: :meth:`SiameseContentLoss.get_config` stores the backbone's *recipe* (name, layers,
weights source), never its weights. Loading a compiled ``.keras`` model rebuilds the backbone from that
recipe and resolves the weights again from the same source: ``'imagenet'`` needs the weights on the
loading machine too (VGG19 up to ``block2_pool``: the ones the package carries; otherwise the Keras cache
file, else :class:`~wmhkeras.errors.WeightsError`), a path must exist there (relative paths resolve
against the working directory), and ``'random'`` gives a *new* random backbone. Inference
needs no backbone: load with ``compile=False`` (see :func:`wmhkeras.registration.load_model`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras

from wmhkeras import KERAS_PACKAGE
from wmhkeras.errors import ConfigError
from wmhkeras.losses.backbones import (
    BACKBONES,
    DEFAULT_LAYERS,
    build_feature_extractor,
    resolve_weights,
    vgg_preprocess,
)
from wmhkeras.losses.overlap import unpack_target

log = logging.getLogger(__name__)

#: ``'paper'``: equation 1 exactly (each layer weighted by its element count); ``'per_layer_mean'``: the
#: average of per-layer mean squared differences (each layer weighted equally).
REDUCTION_MODES = ("paper", "per_layer_mean")


class _Hidden:
    """Holds the backbone out of sight of Keras' saving walk.

    Keras saves the state of every Keras object reachable from a model's attributes, compiled losses
    included; the frozen backbone is rebuilt from the config instead, so it must not be written to (or
    read back from) ``.keras`` files.
    """

    __slots__ = ("model",)

    def __init__(self):
        self.model = None


def _element_count(features):
    """Elements per sample of a ``(batch, h, w, c)`` feature map (static when the size is known)."""
    if None not in features.shape[1:]:
        return float(features.shape[1] * features.shape[2] * features.shape[3])
    return keras.ops.cast(keras.ops.prod(keras.ops.shape(features)[1:]), "float32")


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class SiameseContentLoss(keras.losses.Loss):
    """Equation 1 of Mac et al. 2020 on packed targets.

    Args:
        backbone: ``'vgg16'`` (default) or ``'vgg19'`` (the paper's).
        layers: backbone layers whose outputs form ``f_c``; default the first two max-pools.
        weights: ``'imagenet'`` (VGG19: the blocks the package carries; VGG16: the Keras cache file),
            ``'random'`` (tests/timing only) or a file path (``.h5``, or an ``.npz`` reaching the deepest
            layer); resolved at construction, so a missing file fails before training starts.
        reduction_mode: ``'paper'`` or ``'per_layer_mean'`` (see :data:`REDUCTION_MODES`).
        input_size: ``(H, W)`` to build the backbone now; ``None`` builds it on the first call.
        trainable_backbone: leave the backbone trainable and let gradients reach it through both
            branches; only for the adversarial ablation (:mod:`wmhkeras.losses.adversarial`).
        name, reduction, dtype: as for ``keras.losses.Loss``.

    Call:
        ``y_true`` ``(batch, H, W, 2)`` (channel 0 mask, channel 1 image in ``[0, 1]``), ``y_pred``
        ``(batch, H, W, 1)``; :meth:`call` returns the per-sample loss ``(batch,)``.

    Compute: the ground-truth branch runs forward only (its features are under ``stop_gradient``, its
    input is data); the prediction branch backpropagates to the input only, as the frozen backbone has
    no trainable weights.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str] = DEFAULT_LAYERS,
        weights: str = "imagenet",
        reduction_mode: str = "paper",
        input_size: Sequence[int] | None = None,
        trainable_backbone: bool = False,
        name: str = "siamese_content_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if backbone not in BACKBONES:
            raise ConfigError(f"content loss backbone {backbone!r} unknown; known: {', '.join(sorted(BACKBONES))}")
        if reduction_mode not in REDUCTION_MODES:
            raise ConfigError(f"content loss reduction_mode {reduction_mode!r} unknown; "
                              f"known: {', '.join(REDUCTION_MODES)}")
        if isinstance(layers, str):
            layers = (layers,)
        if input_size is not None:
            input_size = tuple(int(v) for v in input_size)
            if len(input_size) != 2 or min(input_size) < 1:
                raise ConfigError(f"content loss input_size must be (height, width) > 0; got {input_size}")
        self.backbone = backbone
        self.layers = tuple(layers)
        self.weights = str(weights)
        self.reduction_mode = reduction_mode
        self.input_size = input_size
        self.trainable_backbone = bool(trainable_backbone)
        resolve_weights(backbone, self.weights, self.layers)  # fail now, not at the first training step
        self._hidden = _Hidden()
        if input_size is not None:
            self.get_backbone()

    def get_backbone(self) -> keras.Model:
        """The shared Siamese feature extractor, built (eagerly, weights loaded) on first use."""
        if self._hidden.model is None:
            shape = (*self.input_size, 3) if self.input_size else (None, None, 3)
            # First use may be inside a traced train step: build and load weights eagerly.
            import tensorflow as tf

            with tf.init_scope():
                model = build_feature_extractor(self.backbone, self.layers, self.weights, shape)
            model.trainable = self.trainable_backbone
            self._hidden.model = model
        return self._hidden.model

    def features(self, masked_images) -> list:
        """``(batch, H, W, 1)`` masked images in ``[0, 1]`` -> list of backbone feature maps."""
        backbone = self.get_backbone()
        inputs = vgg_preprocess(masked_images)
        if self.trainable_backbone:
            outputs = backbone(inputs, training=False)
        else:
            # Keras' `trainable=False` does not reach the underlying tf.Variables, which a GradientTape
            # still watches; feeding the weights as stop-gradient constants guarantees that no weight
            # gradient is ever formed (in eager mode too), only the input gradient the generator needs.
            constants = [keras.ops.stop_gradient(v) for v in backbone.non_trainable_variables]
            outputs, _ = backbone.stateless_call([], constants, inputs, training=False)
        return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]

    def call(self, y_true, y_pred):
        mask, image = unpack_target(y_true, need_image=True)
        if y_pred.shape[-1] != 1:
            raise ConfigError(f"content loss needs a 1-channel prediction; got shape {tuple(y_pred.shape)}")
        truth_features = self.features(keras.ops.stop_gradient(image * mask))
        if not self.trainable_backbone:
            # Frozen: nothing upstream of the ground-truth branch needs a gradient.
            truth_features = [keras.ops.stop_gradient(f) for f in truth_features]
        pred_features = self.features(image * y_pred)
        sums, sizes = [], []
        for truth, pred in zip(truth_features, pred_features, strict=True):
            diff = keras.ops.cast(truth, "float32") - keras.ops.cast(pred, "float32")
            sums.append(keras.ops.sum(keras.ops.square(diff), axis=(1, 2, 3)))
            sizes.append(_element_count(truth))
        if self.reduction_mode == "paper":
            return sum(sums) / sum(sizes)
        return sum(s / n for s, n in zip(sums, sizes, strict=True)) / len(sums)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": self.backbone,
            "layers": list(self.layers),
            "weights": self.weights,
            "reduction_mode": self.reduction_mode,
            "input_size": list(self.input_size) if self.input_size else None,
            "trainable_backbone": self.trainable_backbone,
        }
