"""What a run trains with, built from its config: the learning rate (a float or a schedule), the loss,
the metrics and the compiled model (:func:`build_model`), for :mod:`wmhkeras.training.trainer`.
"""

from __future__ import annotations

import keras
import numpy as np

from wmhkeras.config import Config
from wmhkeras.errors import ConfigError
from wmhkeras.losses import DiceMetric, HybridLoss, LossTermMetric, get_loss
from wmhkeras.models.unet import build_generator, check_spatial_size
from wmhkeras.training.pipeline import input_shape

#: Step schedule: the learning rate is multiplied by this factor at each boundary ...
STEP_DECAY_FACTOR = 0.1
#: ... placed at these fractions of the total number of training steps.
STEP_DECAY_AT = (0.5, 0.75)


def make_learning_rate(cfg: Config):
    """``train.learning_rate`` as Adam expects it: a float (``constant``) or a schedule over steps.

    ``cosine``: cosine decay to 0 over all ``epochs * steps_per_epoch`` steps (Loshchilov & Hutter
    2017, without restarts). ``step``: multiplied by :data:`STEP_DECAY_FACTOR` at
    :data:`STEP_DECAY_AT` of the steps (50 % and 75 %).
    """
    t = cfg.train
    total = t.epochs * t.steps_per_epoch
    if t.lr_schedule == "constant":
        return t.learning_rate
    if t.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=total)
    boundaries = sorted({max(1, int(f * total)) for f in STEP_DECAY_AT})
    values = [t.learning_rate * STEP_DECAY_FACTOR**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def make_loss(cfg: Config, size: tuple[int, int]) -> keras.losses.Loss:
    """The loss named by ``cfg.loss`` with its section mapped onto the constructor arguments.

    ``content`` and ``hybrid`` get ``backbone``, ``layers``, ``weights``, ``reduction`` (as
    ``reduction_mode``) and the input size (so the backbone is built now, outside the mixed-precision
    policy, and a missing weights file fails before training); ``hybrid`` adds ``overlap`` and
    ``weight``; the overlap losses take their defaults (the paper's epsilon 1, Tversky 0.3 / 0.7).
    """
    lo = cfg.loss
    if lo.finetune_backbone and lo.name != "content":
        raise ConfigError(f"loss.finetune_backbone: true needs loss.name: content; got {lo.name!r}")
    content = {"backbone": lo.backbone, "layers": list(lo.layers), "weights": lo.weights,
               "reduction_mode": lo.reduction, "input_size": list(size)}
    if lo.name == "content":
        return get_loss("content", **content, trainable_backbone=lo.finetune_backbone)
    if lo.name == "hybrid":
        return get_loss("hybrid", overlap=lo.overlap, weight=lo.weight, **content)
    return get_loss(lo.name)


def make_metrics(cfg: Config, loss: keras.losses.Loss) -> list[keras.metrics.Metric]:
    """Hard Dice (``dice``, ``val_dice``) plus each term of a hybrid loss."""
    metrics: list[keras.metrics.Metric] = [DiceMetric(name="dice")]
    if isinstance(loss, HybridLoss):
        metrics += [LossTermMetric(loss.content, name="content_loss"),
                    LossTermMetric(loss.overlap, name=f"{cfg.loss.overlap}_loss")]
    return metrics


def build_model(cfg: Config) -> tuple[keras.Model, keras.Model]:
    """Build and compile ``(model, generator)`` in the current strategy scope and dtype policy.

    ``model`` is what ``fit`` trains: the generator itself, or an
    :class:`~wmhkeras.losses.adversarial.AdversarialContentModel` around it when
    ``loss.finetune_backbone`` is true. The loss (and its backbone) is built first, under float32, so
    the content loss compares features in full precision whatever ``train.precision`` says.

    The generator is built for the training sample size (static shapes: the same numbers as a fixed
    model, and kernels specialised to it). In the ``spacing`` and ``none`` modes ``best.keras`` is saved
    as its free-size copy (:func:`~wmhkeras.models.unet.free_size`), which segments slices of any size
    divisible by ``2**depth`` (``wmhkeras segment`` pads them); ``fixed`` runs keep the training size.
    The loss is built for the training sample size.
    """
    shape = input_shape(cfg)
    what = "data.patch_size" if cfg.data.sampling == "patches" else "model.input_size"
    check_spatial_size(shape[:2], cfg.model.depth, what)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        loss = make_loss(cfg, shape[:2])
    finally:
        keras.mixed_precision.set_global_policy(policy)
    generator = build_generator(cfg.model.arch, input_shape=shape, depth=cfg.model.depth,
                                base_filters=cfg.model.base_filters, bn_momentum=cfg.model.bn_momentum,
                                output_prior=cfg.model.output_prior)
    optimizer = keras.optimizers.Adam(make_learning_rate(cfg), beta_1=cfg.train.beta_1, beta_2=cfg.train.beta_2)
    if cfg.loss.finetune_backbone:
        from wmhkeras.losses.adversarial import AdversarialContentModel

        model = AdversarialContentModel(generator, loss, backbone_learning_rate=cfg.loss.backbone_learning_rate)
        model.compile(optimizer=optimizer, jit_compile=cfg.train.jit_compile)
        model(np.zeros((1, *shape), "float32"))  # build, so checkpoints can be loaded into it
    else:
        model = generator
        model.compile(optimizer=optimizer, loss=loss, metrics=make_metrics(cfg, loss),
                      jit_compile=cfg.train.jit_compile)
    return model, generator
