"""Fine-tuning: a training that starts from a trained model's weights (``wmhkeras train --init MODEL``).

What the model is and where its weights are is read without TensorFlow by
:func:`wmhkeras.inference.sources.init_record` (an :class:`~wmhkeras.io.run_folder.InitRecord`, written
into the run folder as ``init.json``). Here:

- :func:`check_init_config`: the weights must mean the same thing in the new config (modalities, channels,
  context slices, resampling, normalisation, architecture and width); refused in one line before any work;
- :func:`read_init_weights` / :func:`check_init_weights`: the weights read by variable name (a ``.keras``
  file through the safe loader, an exported SavedModel through TensorFlow), checked against the new
  config's generator before the data is read, and assigned once the model is built
  (:func:`assign_init_weights`);
- :class:`EncoderFreeze`: the encoder frozen for the first ``finetune.freeze_encoder_epochs`` epochs.

The learning rate of a fine-tuning run is ``finetune.learning_rate`` (:func:`finetune_config`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Optional

import keras
import numpy as np

from wmhkeras.config import Config, config_from_dict
from wmhkeras.data.preprocessing import resample_mode
from wmhkeras.errors import ConfigError, InputError, WmhError
from wmhkeras.io.run_folder import InitRecord
from wmhkeras.models.unet import build_generator

log = logging.getLogger(__name__)

#: Layers of the encoder (frozen by ``finetune.freeze_encoder_epochs``): the contracting path's levels
#: ``enc0`` ... ``enc{depth-1}`` of :func:`wmhkeras.models.unet.build_generator`, not the bottleneck.
ENCODER_PREFIX = "enc"
#: What decides the meaning of a generator's weights (its input and its layers), by config key.
WEIGHT_KEYS = ("data.modalities", "data.context_slices", "data.normalisation", "data.resample", "data.spacing",
               "model.input_size", "model.arch", "model.depth", "model.base_filters")


def weight_settings(cfg: Config) -> dict:
    """The settings of ``cfg`` that give its generator's weights their meaning (:data:`WEIGHT_KEYS`); the
    resampling as it takes effect (``data.spacing`` only in ``spacing`` mode, ``model.input_size`` only in
    ``fixed`` mode, where slices are resized to it)."""
    mode = resample_mode(cfg.data.resample, cfg.data.sampling)
    settings = {"data.modalities": list(cfg.data.modalities), "data.context_slices": cfg.data.context_slices,
                "data.normalisation": cfg.data.normalisation, "data.resample": mode,
                "model.arch": cfg.model.arch, "model.depth": cfg.model.depth,
                "model.base_filters": cfg.model.base_filters}
    if mode == "spacing":
        settings["data.spacing"] = [float(s) for s in cfg.data.spacing]
    if mode == "fixed":
        settings["model.input_size"] = [int(s) for s in cfg.model.input_size]
    return settings


def init_settings(record: InitRecord) -> dict:
    """:func:`weight_settings` of the model ``record`` names: from its training config when it has one that
    this version reads, else the preprocessing its source records (architecture and width are then
    checked on the weights themselves, :func:`check_init_weights`); ``{}`` when nothing is recorded."""
    if record.config is not None:
        try:
            return weight_settings(config_from_dict(record.config))
        except ConfigError as err:
            log.info("%s: its training config is not readable here (%s); comparing its preprocessing", record.name, err)
    s = record.settings
    if not s:
        return {}
    settings = {"data.modalities": list(s["modalities"]), "data.context_slices": s["context_slices"],
                "data.normalisation": s["normalisation"], "data.resample": s["resample"]}
    if s["resample"] == "spacing":
        settings["data.spacing"] = [float(v) for v in s["spacing"]]
    if s["resample"] == "fixed":
        settings["model.input_size"] = [int(v) for v in s["input_size"]]
    return settings


def check_init_config(cfg: Config, record: InitRecord) -> None:
    """Refuse, in one line, a config whose weights would mean something else than the model's.

    Raises:
        ConfigError: every key of :data:`WEIGHT_KEYS` that differs, with both values.
    """
    theirs, ours = init_settings(record), weight_settings(cfg)
    if not theirs:
        log.warning("--init %s: a .keras file outside a run folder records no preprocessing; its normalisation, "
                    "resampling and context slices are taken to be this config's (only the weights' shapes are "
                    "checked)", record.name)
    differ = [k for k in WEIGHT_KEYS if k in theirs and theirs[k] != ours.get(k)]
    if differ:
        shown = "; ".join(f"{k} {_shown(theirs.get(k))} in the model, {_shown(ours.get(k))} in this config" for k in differ)
        raise ConfigError(f"--init {record.name}: the config disagrees with the model on what its weights mean: "
                          f"{shown}. Use the model's settings (wmhkeras models show NAME, or the run's config.yaml), "
                          "or train from scratch without --init")


def _shown(value) -> str:
    return "(not used)" if value is None else str(value)


def finetune_config(cfg: Config, record: InitRecord) -> Config:
    """``cfg`` with the learning rate of fine-tuning (``finetune.learning_rate``) as ``train.learning_rate``,
    so the run's saved config says what ran and ``--resume`` keeps it."""
    if cfg.train.learning_rate != cfg.finetune.learning_rate:
        log.info("fine-tuning from %s: learning rate %g (finetune.learning_rate; train.learning_rate %g is for "
                 "training from scratch)", record.name, cfg.finetune.learning_rate, cfg.train.learning_rate)
    return replace(cfg, train=replace(cfg.train, learning_rate=cfg.finetune.learning_rate))


def check_freeze(cfg: Config, finetuning: bool) -> None:
    """Freezing the encoder keeps what a starting model learnt; a run from random weights has none.

    Raises:
        ConfigError: ``finetune.freeze_encoder_epochs`` above 0 without a model to start from.
    """
    if cfg.finetune.freeze_encoder_epochs and not finetuning:
        raise ConfigError(f"finetune.freeze_encoder_epochs: {cfg.finetune.freeze_encoder_epochs} freezes the encoder "
                          "of the model given by --init MODEL, but this run starts from random weights; pass "
                          "--init MODEL, or set it to 0")


# === Weights ===


def read_init_weights(record: InitRecord) -> dict[str, np.ndarray]:
    """The generator's weights of the model ``record`` names, by variable path (``enc0_init/kernel``).

    Raises:
        InputError: the file or folder cannot be loaded, or holds no generator weights.
    """
    try:
        weights = _saved_model_weights(record) if record.format == "saved_model" else _keras_weights(record)
    except WmhError:
        raise
    except Exception as exc:  # TensorFlow and Keras raise many types for files that are not models
        raise InputError(f"--init {record.name}: cannot read the weights of {record.path} "
                         f"({exc.__class__.__name__}: {' '.join(str(exc).split())[:200]})") from None
    if not weights:
        raise InputError(f"--init {record.name}: {record.path} holds no weights")
    log.info("--init %s: %d weight arrays from %s (sha256 %s)", record.name, len(weights), record.path, record.sha256)
    return weights


def _keras_weights(record: InitRecord) -> dict[str, np.ndarray]:
    from wmhkeras.registration import load_model

    model = load_model(record.path, compile=False)
    if isinstance(getattr(model, "generator", None), keras.Model):  # a training wrapper (adversarial ablation)
        model = model.generator
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def _saved_model_weights(record: InitRecord) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(record.path)
    # keras.export.ExportArchive (wmhkeras export) keeps every variable of the model, named by its Keras path.
    variables = getattr(loaded, "_all_variables", None)
    if variables is None:
        raise InputError(f"--init {record.name}: {record.path} does not list its variables (not a SavedModel "
                         "written by wmhkeras export)")
    return {v.name.removesuffix(":0"): v.numpy() for v in variables}


def _mismatch(expected: dict[str, tuple], weights: dict[str, np.ndarray]) -> Optional[str]:
    """What keeps ``weights`` from a generator whose variables have the shapes ``expected``, or None."""
    missing = [p for p in expected if p not in weights]
    extra = [p for p in weights if p not in expected]
    shapes = [p for p in expected if p in weights and tuple(weights[p].shape) != expected[p]]
    problems = []
    if shapes:
        p = shapes[0]
        problems.append(f"{len(shapes)} weight(s) of other shapes (e.g. {p}: {tuple(weights[p].shape)} in the model, "
                        f"{expected[p]} in this config)")
    if missing:
        problems.append(f"{len(missing)} weight(s) this config's model has and the model lacks (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} weight(s) of the model this config's model lacks (e.g. {extra[0]})")
    return "; ".join(problems) or None


def _refuse(record: InitRecord, problem: str) -> ConfigError:
    return ConfigError(f"--init {record.name}: its weights do not fit this config's model: {problem}. "
                       "model.arch, model.depth, model.base_filters, data.modalities and data.context_slices decide them")


def check_init_weights(cfg: Config, weights: dict[str, np.ndarray], record: InitRecord, shape: tuple) -> None:
    """Check ``weights`` against the generator ``cfg`` builds for samples of ``shape`` (a throwaway copy,
    built before any data is read).

    Raises:
        ConfigError: a weight is missing, left over or of another shape (the first named).
    """
    m = cfg.model
    generator = build_generator(m.arch, input_shape=shape, depth=m.depth, base_filters=m.base_filters)
    problem = _mismatch({v.path: tuple(v.shape) for v in generator.weights}, weights)
    if problem:
        raise _refuse(record, problem)


def assign_init_weights(generator: keras.Model, weights: dict[str, np.ndarray], record: InitRecord) -> None:
    """Set every weight of ``generator`` from ``weights`` (by variable path).

    Raises:
        ConfigError: the weights do not fit (:func:`check_init_weights` said so already, before any work).
    """
    problem = _mismatch({v.path: tuple(v.shape) for v in generator.weights}, weights)
    if problem:
        raise _refuse(record, problem)
    for variable in generator.weights:
        variable.assign(weights[variable.path])
    log.info("fine-tuning from %s: %d weights loaded", record.name, len(generator.weights))


# === Freezing the encoder ===


def encoder_layers(generator: keras.Model) -> list[keras.layers.Layer]:
    """The layers of the generator's contracting path (names ``enc<level>_...``)."""
    return [layer for layer in generator.layers if layer.name.startswith(ENCODER_PREFIX)]


class EncoderFreeze(keras.callbacks.Callback):
    """Keep the generator's encoder frozen (weights, and BatchNorm statistics: a frozen BatchNorm runs in
    inference mode) during the first ``epochs`` epochs, then train it.

    The optimizer is built for every weight before ``fit`` starts its first epoch, so the encoder's
    weights keep their slots while frozen and a resumed run finds the same optimizer; the train step is
    rebuilt when the set of trained weights changes.
    """

    def __init__(self, generator: keras.Model, epochs: int):
        super().__init__()
        self.generator, self.epochs = generator, epochs
        self.layers = encoder_layers(generator)
        self.frozen = False

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer  # built lazily by the first step otherwise: for the trained weights only
        if not optimizer.built:
            optimizer.build(self.generator.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        frozen = epoch < self.epochs
        if frozen == self.frozen:
            return
        for layer in self.layers:
            layer.trainable = not frozen
        self.frozen = frozen
        self.model.make_train_function(force=True)
        log.info("epoch %d: encoder (%d layers) %s", epoch + 1, len(self.layers), "frozen" if frozen else "trained")
