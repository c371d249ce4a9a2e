"""Train a generator: the plain typed function behind ``wmhkeras train``.

:func:`train` loads the subjects, makes (or, on resume, reads back) the split, validates every input
*before* a run folder exists, builds the generator and the loss under the distribution strategy, then
runs Keras ``fit`` (Adam, optional learning-rate schedule, validation Dice every epoch, atomic best and
last checkpoints, optional early stopping, CSV log, TensorBoard with image summaries). The run folder
layout is described in :mod:`wmhkeras.io.run_folder`; ``docs/training.md`` is the user guide.

Training setup: Mac, Moody & Khademi, MIDL 2020, section 3.2 (Adam 1e-3, betas 0.9 / 0.999, epochs of
100 batches of 8 slices); the schedules, distribution and mixed precision are toolkit additions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from wmhkeras.config import Config, load_config, save_config
from wmhkeras.data.datasets import load_dataset
from wmhkeras.data.splits import check_split, load_split, make_split, save_split
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.files import atomic_write_json
from wmhkeras.io.provenance import package_versions, utc_now
from wmhkeras.io.run_folder import RunFolder, staged_run_folder, trim_log
from wmhkeras.losses import DiceMetric, HybridLoss, LossTermMetric, get_loss
from wmhkeras.models.unet import build_generator
from wmhkeras.training.callbacks import ImageSummary, LearningRateLogger, RunCheckpoint
from wmhkeras.training.pipeline import build_datasets

log = logging.getLogger(__name__)

#: Step schedule: the learning rate is multiplied by this factor at each boundary ...
STEP_DECAY_FACTOR = 0.1
#: ... placed at these fractions of the total number of training steps.
STEP_DECAY_AT = (0.5, 0.75)


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, ``summary.json`` as a dict, and this session's history.

    ``epochs`` counts every epoch completed by the run (earlier sessions included when resumed);
    ``history`` holds only the epochs run by this call (Keras ``History.history``).
    """

    run_dir: Path
    epochs: int
    best_val_dice: float | None
    best_epoch: int | None
    wall_time_s: float
    summary: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)


# === Building blocks ===


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy for ``train.distribution``.

    ``none``: the default (one device). ``mirrored``: ``MirroredStrategy`` over all GPUs, or over all
    logical CPU devices when there is no GPU and more than one CPU device is configured.
    ``multi_worker``: ``MultiWorkerMirroredStrategy`` configured by the ``TF_CONFIG`` environment
    variable; it must be created before TensorFlow runs any op in the process.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.distribution: 'multi_worker' needs the TF_CONFIG environment variable "
                              "(cluster and task of each worker); see docs/training.md")
        try:
            tf_config = json.loads(os.environ["TF_CONFIG"])
            tf_config["cluster"], tf_config["task"]  # noqa: B018 - presence check
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"TF_CONFIG: not a JSON object with 'cluster' and 'task' ({err})") from None
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as err:  # collective ops configured after the runtime started
            raise ConfigError(f"train.distribution: 'multi_worker' must start in a fresh process ({err})") from None
    raise ConfigError(f"train.distribution: {name!r} is not allowed; use one of 'none', 'mirrored', 'multi_worker'")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder (always, except on non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


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


def input_shape(cfg: Config) -> tuple[int, int, int]:
    """``(height, width, channels)`` of the training samples: whole slices or patches."""
    size = cfg.data.patch_size if cfg.data.sampling == "patches" else cfg.model.input_size
    return (int(size[0]), int(size[1]), len(cfg.data.modalities))


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
    """
    shape = input_shape(cfg)
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


def load_checkpoint(model: keras.Model, run: RunFolder, steps_per_epoch: int) -> tuple[int, dict]:
    """Load ``last.keras`` (weights and optimizer state) into ``model``; return ``(epochs done, state)``.

    The epoch counter comes from ``state.json`` when its ``iterations`` match the checkpoint's
    optimizer; otherwise (killed between the two writes) from ``iterations // steps_per_epoch``.
    """
    state = run.read_state()
    if not run.last.is_file():
        log.warning("%s: no completed epoch to resume from; starting at epoch 1", run.path)
        return 0, {}
    optimizers = [model.optimizer] + [o for o in [getattr(model, "backbone_optimizer", None)] if o is not None]
    optimizers[0].build(getattr(model, "generator", model).trainable_variables)
    if len(optimizers) > 1:
        optimizers[1].build(model.backbone.trainable_variables)
    try:
        model.load_weights(run.last)
    except (ValueError, OSError, KeyError) as err:
        raise InputError(f"{run.last}: cannot load the checkpoint ({err})") from None
    iterations = int(model.optimizer.iterations.numpy())
    if state.get("iterations") == iterations:
        epochs = int(state["epochs"])
    else:
        epochs = iterations // steps_per_epoch
        log.warning("%s does not match %s; continuing after epoch %d (%d steps done)",
                    run.state, run.last, epochs, iterations)
        state = {**state, "epochs": epochs, "iterations": iterations}
    return epochs, state


def _no_empty_replica(dataset: tf.data.Dataset, samples: int, batch_size: int, replicas: int) -> tf.data.Dataset:
    """Drop the last ``r`` validation samples when the final batch of ``r < replicas`` would leave a
    replica an empty batch (Keras' batch normalisation fails on it); at most ``replicas - 1`` are lost."""
    rest = samples % batch_size
    if rest == 0 or rest >= replicas:
        return dataset
    log.warning("validation: leaving out the last %d of %d samples so that each of the %d replicas gets a "
                "non-empty last batch", rest, samples, replicas)
    return dataset.unbatch().take(samples - rest).batch(batch_size)


def _prepare_multi_worker_fit(model: keras.Model, example_batch) -> None:
    """Work around keras-team/keras#20585 (Keras 3 ``fit`` fails under ``MultiWorkerMirroredStrategy``).

    Two steps of Keras 3.15's TF trainer fail across workers:

    - before the first epoch it builds the metrics and loss from one batch that it first averages
      across replicas with ``strategy.reduce``, which rejects the nested ``(x, y)`` batch ("Attempt to
      convert a value (PerReplica...)"). We build that state here from a local batch, in the strategy
      scope, and let the model take its strategy from the scope ``fit`` runs in, which skips that step;
    - it averages each step's scalar logs with ``strategy.reduce("MEAN", v, axis=0)``, which fails on
      scalars ("Invalid reduction dimension 0"). The train and test steps of this model instance return
      their logs as shape ``(1,)`` instead, which that call averages into the scalar Keras expects.
      Epoch-level logs come from the metric variables, summed over all workers, as on one device.
    """
    x, y = (tf.convert_to_tensor(v) for v in example_batch)
    model._symbolic_build(data_batch=(x, y))
    model._distribute_strategy = None

    def as_vectors(step):
        def wrapped(data):
            return {key: keras.ops.reshape(value, (1,)) for key, value in step(data).items()}

        return wrapped

    model.train_step = as_vectors(model.train_step)
    model.test_step = as_vectors(model.test_step)


# === The trainer ===


def train(cfg: Config | None, out_dir: str | Path, data_path: str | Path | None = None, resume: bool = False,
          *, split: dict | str | Path | None = None, verbose: int = 1) -> TrainResult:
    """Train a generator and write the run folder ``out_dir``.

    Args:
        cfg: the run config. On resume ``None`` reads ``out_dir/config.yaml``; a config given on resume
            replaces it (e.g. with more ``train.epochs``) and is written back.
        out_dir: the run folder; a new run needs it absent (or empty), a resumed run needs it written
            by an earlier call.
        data_path: dataset (manifest CSV, folder with ``manifest.csv``, or MICCAI layout); default
            ``cfg.data.path``. Recorded, resolved, in ``config.yaml``.
        resume: continue from ``checkpoints/last.keras`` with its optimizer state and epoch counter,
            on the split in ``split.json``.
        split: for a new run, a given split instead of a new one: a mapping of ``train``,
            ``validation``, ``holdout`` subject ids, or a ``split.json`` (e.g. another run's).
        verbose: Keras ``fit`` verbosity (1: progress bar, 2: one line per epoch, 0: silent).

    Returns:
        :class:`TrainResult` (the summary is also in ``out_dir/summary.json``).

    Raises:
        InputError / ConfigError / WeightsError: bad data, split, config or backbone weights, raised
            before a new run folder is created (none is left behind).
    """
    out_dir = Path(out_dir).resolve()
    run = RunFolder(out_dir)
    if resume:
        if split is not None:
            raise ConfigError("train: a resumed run keeps its own split.json; do not pass a split")
        run.check_resumable()
        if cfg is None:
            cfg = load_config(run.config)
    elif cfg is None:
        raise ConfigError("train: a config is needed for a new run (only --resume reads it from the run folder)")
    data = data_path or cfg.data.path
    if data is None:
        raise InputError("no dataset given: set data.path in the config or pass --data PATH")
    cfg = replace(cfg, data=replace(cfg.data, path=str(Path(data).resolve())))

    # MultiWorkerMirroredStrategy must exist before TensorFlow runs any op in this process.
    strategy = make_strategy(cfg.train.distribution)
    chief = is_chief(strategy)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        keras.utils.set_random_seed(cfg.train.seed)
        subjects = load_dataset(cfg.data.path)
        if resume:
            split = load_split(run.split, subjects)
        elif split is None:
            split = make_split(subjects, cfg.data.split, cfg.train.seed)
        elif isinstance(split, dict):
            split = check_split(split, subjects)
        else:
            split = load_split(split, subjects)
        if not chief:
            # Other workers take part in every step and write the same files, to a scratch folder:
            # Keras creates a variable each time it saves a model (a collective op under
            # MultiWorkerMirroredStrategy), so all workers must save together, as TF's guide asks.
            scratch = Path(tempfile.mkdtemp(prefix="wmhkeras-worker-"))
            try:
                result = _run(cfg, strategy, subjects, split, read=run, write=RunFolder(scratch),
                              resume=resume, chief=False, verbose=0)
                return replace(result, run_dir=out_dir)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        if resume:
            return _run(cfg, strategy, subjects, split, read=run, write=run, resume=True, chief=True,
                        verbose=verbose)
        with staged_run_folder(out_dir) as staged:
            return _run(cfg, strategy, subjects, split, read=run, write=RunFolder(staged.path), resume=False,
                        chief=True, verbose=verbose, commit=staged.commit)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run(cfg: Config, strategy, subjects, split, *, read: RunFolder, write: RunFolder, resume: bool,
         chief: bool, verbose: int, commit=None) -> TrainResult:
    """Build datasets and model, then (after ``commit`` renames the staged folder) fit."""
    t = cfg.train
    replicas = strategy.num_replicas_in_sync
    if t.batch_size < replicas:
        raise ConfigError(f"train.batch_size: {t.batch_size} is the global batch; it must be at least the "
                          f"number of replicas ({replicas})")
    if t.batch_size % replicas:
        log.warning("train.batch_size %d does not divide by %d replicas; replicas get unequal batches",
                    t.batch_size, replicas)
    data = build_datasets(cfg, subjects, split, cache_dir=cfg.data.cache_dir)
    validation = data.validation
    if validation is not None and replicas > 1:
        validation = _no_empty_replica(validation, data.stats["validation_samples"], t.batch_size, replicas)
    keras.mixed_precision.set_global_policy(t.precision)
    with strategy.scope():
        model, generator = build_model(cfg)
        initial_epoch, state = load_checkpoint(model, read, t.steps_per_epoch) if resume else (0, {})
    if initial_epoch >= t.epochs:
        raise ConfigError(f"train.epochs: {t.epochs} epochs are already done in {read.path}; "
                          f"raise it (e.g. --set train.epochs={t.epochs + 10}) to train longer")
    if commit is not None:  # every input is valid and the model is built: the run folder may exist now
        write = RunFolder(commit())
    run = write
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    if not resume:
        save_split(split, run.split)
    atomic_write_json(run.versions, package_versions())
    if resume:
        trim_log(run.log, initial_epoch)

    # The adversarial model reports only its loss; without a validation set, training metrics decide.
    has_dice = not cfg.loss.finetune_backbone
    if data.validation is not None:
        monitor = "val_dice" if has_dice else "val_loss"
    else:
        monitor = "dice" if has_dice else "loss"
    if monitor != "val_dice":
        log.warning("best.keras is chosen by %s (no validation Dice available)", monitor)
    summary_base = {
        "run_dir": str(run.path),
        "loss": cfg.loss.name,
        "arch": cfg.model.arch,
        "subjects": {"train": len(data.train_subjects), "validation": len(data.validation_subjects),
                     "holdout": len(split.get("holdout", []))},
        "sites": list(data.sites),
        "cache": data.cache_mode,
        "data": data.stats,
        "epochs_planned": t.epochs,
        "steps_per_epoch": t.steps_per_epoch,
        "global_batch_size": t.batch_size,
        "replicas": replicas,
        "distribution": t.distribution,
        "precision": t.precision,
        "started": state.get("started", utc_now()),
    }
    checkpoint = RunCheckpoint(run, generator, monitor=monitor, state=state, summary_base=summary_base)
    callbacks: list[keras.callbacks.Callback] = [LearningRateLogger(), checkpoint]
    if t.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=checkpoint.mode,
                                                       patience=t.early_stopping_patience, verbose=1))
    callbacks += [
        keras.callbacks.CSVLogger(str(run.log), append=resume),
        keras.callbacks.TensorBoard(log_dir=str(run.tensorboard), write_graph=False, update_freq="epoch"),
    ]
    if chief:
        callbacks.append(ImageSummary(generator, data.preview, run.tensorboard / "images",
                                      every=t.image_summary_every, epochs=t.epochs))
    log.info("training %s with the %s loss: epochs %d-%d of %d steps, global batch %d over %d replica(s)",
             cfg.model.arch, cfg.loss.name, initial_epoch + 1, t.epochs, t.steps_per_epoch, t.batch_size, replicas)
    if t.distribution == "multi_worker":
        with strategy.scope():
            _prepare_multi_worker_fit(model, data.preview)
    start = time.monotonic()
    with strategy.scope():
        history = model.fit(data.train, epochs=t.epochs, initial_epoch=initial_epoch,
                            steps_per_epoch=t.steps_per_epoch,
                            validation_data=validation, validation_steps=t.validation_steps,
                            callbacks=callbacks, verbose=verbose, shuffle=False)
    stopped_early = checkpoint.epochs < t.epochs
    summary = checkpoint.summary(finished=True, stopped_early=stopped_early)
    run.write_state(checkpoint.state(running_epoch=None))
    run.write_summary(summary)
    log.info("trained %d epoch(s) in %.1f s this session", len(history.epoch), time.monotonic() - start)
    return TrainResult(run_dir=run.path, epochs=checkpoint.epochs, best_val_dice=summary["best_val_dice"],
                       best_epoch=checkpoint.best_epoch, wall_time_s=summary["wall_time_s"],
                       summary=summary, history=dict(history.history))
