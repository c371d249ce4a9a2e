"""Fine-tuning ablation of Mac et al. (MIDL 2020, section 5, table 2): an adversarial Siamese network.

The generator minimises the content loss while the Siamese backbone, unfrozen, maximises it with its own
Adam optimiser (learning rate 1e-5). The paper found this much worse than the frozen backbone; it is
here to reproduce that row, not for use. TensorFlow backend only (``tf.GradientTape``).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from wmhkeras import KERAS_PACKAGE
from wmhkeras.errors import ConfigError
from wmhkeras.losses.content import SiameseContentLoss


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class AdversarialContentModel(keras.Model):
    """Generator + content loss with a trainable backbone, trained as a two-player game.

    Each :meth:`train_step` runs the generator and both Siamese branches once, then applies, from the
    same loss, a descent step to the generator (``optimizer`` given to :meth:`compile`) and an ascent
    step to the backbone (``backbone_optimizer``): simultaneous gradient descent-ascent.

    Args:
        generator: segmentation model ``(batch, H, W, C) -> (batch, H, W, 1)``.
        content_loss: a :class:`SiameseContentLoss` built with ``trainable_backbone=True``; ``None``
            builds one with ImageNet VGG19 (the paper's ablation) for the generator's input size.
        backbone_learning_rate: Adam learning rate of the backbone (paper: 1e-5).

    Call ``fit`` with ``x`` images and packed ``y`` targets ``(batch, H, W, 2)``; ``compile`` takes only
    the generator's optimiser (the loss is the content loss).
    """

    def __init__(self, generator: keras.Model, content_loss: SiameseContentLoss | dict | None = None,
                 backbone_learning_rate: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if isinstance(content_loss, dict):
            content_loss = keras.saving.deserialize_keras_object(content_loss)
        if content_loss is None:
            content_loss = SiameseContentLoss(backbone="vgg19", weights="imagenet", trainable_backbone=True)
        if not isinstance(content_loss, SiameseContentLoss) or not content_loss.trainable_backbone:
            raise ConfigError("AdversarialContentModel needs a SiameseContentLoss(trainable_backbone=True); "
                              f"got {content_loss!r}")
        if float(backbone_learning_rate) <= 0:
            raise ConfigError(f"backbone_learning_rate must be > 0; got {backbone_learning_rate}")
        self.generator = generator
        self.content_loss = content_loss
        self.backbone_learning_rate = float(backbone_learning_rate)
        self.backbone = content_loss.get_backbone()
        self.backbone_optimizer = keras.optimizers.Adam(self.backbone_learning_rate)
        self.loss_tracker = keras.metrics.Mean(name="loss")

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    @property
    def metrics(self):
        return [self.loss_tracker]

    def train_step(self, data):
        x, y = data[0], data[1]
        generator_vars = self.generator.trainable_variables
        backbone_vars = self.backbone.trainable_variables
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(self.content_loss.call(y, self.generator(x, training=True)))
        grads = tape.gradient(loss, generator_vars + backbone_vars)
        self.optimizer.apply(grads[: len(generator_vars)], generator_vars)
        # The backbone ascends: it looks for features in which prediction and truth differ most.
        self.backbone_optimizer.apply([-g for g in grads[len(generator_vars):]], backbone_vars)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def test_step(self, data):
        x, y = data[0], data[1]
        loss = keras.ops.mean(self.content_loss.call(y, self.generator(x, training=False)))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}

    def get_config(self):
        return {
            **super().get_config(),
            "generator": keras.saving.serialize_keras_object(self.generator),
            "content_loss": keras.saving.serialize_keras_object(self.content_loss),
            "backbone_learning_rate": self.backbone_learning_rate,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["generator"] = keras.saving.deserialize_keras_object(config["generator"])
        return cls(**config)
