"""Training callbacks: atomic checkpoints with an epoch counter, learning-rate logging, image summaries.

Keras' own ``ModelCheckpoint`` writes straight onto the final file name, so a process killed while
saving leaves a truncated ``.keras`` file that looks valid by name. :class:`RunCheckpoint` saves to a
temporary file beside it, keeps the previous file as ``*.prev`` and renames, then commits the epoch in
``checkpoints/state.json`` (with the checksums of the files it describes), the state that
``wmhkeras train --resume`` continues from: the order and the resume rules are in
:mod:`wmhkeras.io.checkpoints`. :class:`RunEarlyStopping` keeps its patience count in that state.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import replace

import keras
import numpy as np
import tensorflow as tf

from wmhkeras.config import Config
from wmhkeras.evaluation.reports import as_float
from wmhkeras.io.checkpoints import KILL_ENV, commit_state, kill_point, save_keeping_previous
from wmhkeras.io.provenance import utc_now
from wmhkeras.io.run_folder import RunFolder, RunState, RunSummary
from wmhkeras.models.unet import free_size

log = logging.getLogger(__name__)


def inference_model(generator: keras.Model, free: bool = True) -> keras.Model:
    """An uncompiled view of ``generator``; with ``free``, its free-size copy
    (:func:`~wmhkeras.models.unet.free_size`).

    Saved as ``best.keras``: it carries no optimizer and no loss, so it loads with
    ``keras.saving.load_model(path)`` without the content loss's backbone weights. Runs that resample
    to the native grid or a spacing save it free (it segments slices of any size divisible by
    ``2**depth``); ``fixed`` runs keep the training size, which tells any reader of the bare file that
    slices are resized to it.
    """
    view = keras.Model(generator.inputs, generator.outputs, name=generator.name)
    return free_size(view) if free else view


class RunCheckpoint(keras.callbacks.Callback):
    """Save ``last.keras`` every epoch and ``best.keras`` on improvement, atomically; keep ``state.json``.

    ``state.json`` (a :class:`~wmhkeras.io.run_folder.RunState`, written after the checkpoint it
    describes: the commit of the epoch, :mod:`wmhkeras.io.checkpoints`)::

        {"epochs": 3,               # epochs completed and saved in last.keras (1-based count)
         "iterations": 300,         # optimizer steps in last.keras (checked on resume)
         "running_epoch": 4,        # the epoch in progress (null once training has ended)
         "best": 0.61, "best_epoch": 2, "monitor": "val_dice", "wall_time_s": 123.4, "updated": ...,
         "last_sha256": "...", "best_sha256": "...",  # the files this state describes
         "early_stopping": {"wait": 1, "best": 0.61}}  # with train.early_stopping_patience

    It runs after every other callback of the epoch (``log.csv``, TensorBoard): what they wrote for an
    epoch that is not committed is redone on resume (``log.csv`` rows are trimmed).

    Each epoch also rewrites ``summary.json`` (a :class:`~wmhkeras.io.run_folder.RunSummary`):
    ``summary_base`` with these counters filled in, so a killed run still has a readable summary of
    what it completed.

    Args:
        run: the run folder.
        generator: the segmentation model saved as ``best.keras`` (an uncompiled view of it).
        monitor: log key to maximise (``'val_dice'``) or minimise (a key ending in ``'loss'``).
        state: the state read back on resume (None or an empty ``RunState()`` for a new run).
        summary_base: the run's fixed fields (config, data, distribution, ``started``), copied into
            every summary.
    """

    def __init__(self, run: RunFolder, generator: keras.Model, monitor: str = "val_dice",
                 state: RunState | None = None, summary_base: RunSummary | None = None, free_size: bool = True):
        super().__init__()
        self.run = run
        self.generator = generator
        self.free_size = free_size
        self.monitor = monitor
        self.mode = "min" if monitor.endswith("loss") else "max"
        state = state or RunState()
        self.epochs = int(state.epochs)
        self.best = state.best
        self.best_epoch = state.best_epoch
        self.previous_wall = float(state.wall_time_s or 0.0)
        self.last_sha256, self.best_sha256 = state.last_sha256, state.best_sha256
        self.early_stopping: RunEarlyStopping | None = None  # set by the trainer when there is one
        self.summary_base = summary_base or RunSummary()
        self.started = time.monotonic()
        self.last_logs: dict = {}

    # === Counters ===

    def wall_time_s(self) -> float:
        return round(self.previous_wall + time.monotonic() - self.started, 2)

    def state(self, running_epoch: int | None) -> RunState:
        return RunState(
            epochs=self.epochs,
            iterations=int(self.model.optimizer.iterations.numpy()) if self.model else None,
            running_epoch=running_epoch,
            monitor=self.monitor,
            best=self.best,
            best_epoch=self.best_epoch,
            wall_time_s=self.wall_time_s(),
            started=self.summary_base.started,
            updated=utc_now(),
            last_sha256=self.last_sha256,
            best_sha256=self.best_sha256,
            early_stopping=self.early_stopping.saved_state() if self.early_stopping is not None else None,
        )

    def summary(self, finished: bool, stopped_early: bool | None = None) -> RunSummary:
        """The summary of the run so far: ``summary_base`` with the counters and the last epoch's logs."""
        return replace(
            self.summary_base,
            epochs=self.epochs,
            # None when best.keras is chosen by another quantity (no validation set, adversarial model)
            best_val_dice=self.best if self.monitor == "val_dice" else None,
            best_epoch=self.best_epoch,
            monitor=self.monitor,
            best=self.best,
            wall_time_s=self.wall_time_s(),
            last_epoch_logs={k: _log_value(v) for k, v in self.last_logs.items()},
            finished=finished,
            stopped_early=stopped_early,
            updated=utc_now(),
        )

    def _improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    # === Keras hooks ===

    def on_train_begin(self, logs=None):
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.run.write_state(self.state(running_epoch=epoch + 1))

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self.last_logs = logs
        self.epochs = epoch + 1
        if logs.get(self.monitor) is None:
            log.warning("checkpoint: %r is not in the epoch logs (%s); best.keras is not updated",
                        self.monitor, ", ".join(sorted(logs)))
        value = _log_value(logs.get(self.monitor))
        improved = self._improved(value)
        if improved:
            self.best, self.best_epoch = value, self.epochs
        run = self.run
        self.last_sha256 = save_keeping_previous(run.last, run.last_prev, self.model.save, "checkpoint", self.epochs)
        if improved:
            best = inference_model(self.generator, self.free_size)
            self.best_sha256 = save_keeping_previous(run.best, run.best_prev, best.save, "best", self.epochs)
            log.info("epoch %d: %s improved to %.4f, saved %s", self.epochs, self.monitor, value, run.best)
        # The commit: a kill before it leaves the state of the previous epoch, whose files are kept as *.prev.
        commit_state(run, self.state(running_epoch=None))
        run.write_summary(self.summary(finished=False))


class RunEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' ``EarlyStopping`` whose count of epochs without improvement survives ``--resume``.

    ``saved``: the ``early_stopping`` entry of the resumed ``state.json`` (``{"wait", "best"}``), restored
    when training begins; :class:`RunCheckpoint` records :meth:`saved_state` at every commit.
    """

    def __init__(self, saved: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.saved = dict(saved or {})

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.wait = int(self.saved.get("wait") or 0)
        self.best = self.saved.get("best")

    def saved_state(self) -> dict:
        return {"wait": int(self.wait), "best": None if self.best is None else float(self.best)}


class MidEpochKill(keras.callbacks.Callback):
    """Test hook (:func:`~wmhkeras.io.checkpoints.kill_point` ``mid-epoch``): SIGKILL in the middle of
    an epoch's batches. Added by :func:`fault_hooks` only when ``WMHKERAS_TEST_KILL_AT`` is set."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if batch == max(0, int(self.params.get("steps") or 1) // 2 - 1):
            kill_point("mid-epoch", self.epoch)


def fault_hooks() -> list[keras.callbacks.Callback]:
    """The callbacks of the test hook: none unless ``WMHKERAS_TEST_KILL_AT`` asks for ``mid-epoch``."""
    return [MidEpochKill()] if os.environ.get(KILL_ENV, "").startswith("mid-epoch:") else []


class LearningRateLogger(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into the epoch logs (for ``log.csv``).

    Placed before ``CSVLogger`` in the callback list; TensorBoard logs it on its own as well.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def run_callbacks(cfg: Config, checkpoint: RunCheckpoint, generator: keras.Model, preview, *, resume: bool,
               chief: bool, state: RunState) -> list[keras.callbacks.Callback]:
    """The callbacks of ``fit``: learning-rate logging, ``log.csv``, TensorBoard, (chief) images, early
    stopping, and last the checkpoint, whose commit ends the epoch (:class:`RunCheckpoint`); ``state``: the
    resumed state (early stopping continues its count)."""
    t, run = cfg.train, checkpoint.run
    callbacks: list[keras.callbacks.Callback] = [
        LearningRateLogger(),
        keras.callbacks.CSVLogger(str(run.log), append=resume),
        keras.callbacks.TensorBoard(log_dir=str(run.tensorboard), write_graph=False, update_freq="epoch"),
    ]
    if chief:
        callbacks.append(ImageSummary(generator, preview, run.tensorboard / "images",
                                      every=t.image_summary_every, epochs=t.epochs))
    if t.early_stopping_patience:
        checkpoint.early_stopping = RunEarlyStopping(state.early_stopping, monitor=checkpoint.monitor,
                                                     mode=checkpoint.mode, patience=t.early_stopping_patience,
                                                     verbose=1)
        callbacks.append(checkpoint.early_stopping)
    return [*callbacks, checkpoint, *fault_hooks()]


def overlay(images, truth, prediction, threshold: float = 0.5, alpha: float = 0.6) -> np.ndarray:
    """Grey FLAIR slices with the ground truth in green and the prediction in red (overlap: yellow).

    Args:
        images: ``(batch, H, W, C)`` in ``[0, 1]``; channel 0 (FLAIR) is shown.
        truth: ``(batch, H, W, 1 or 2)`` packed target; channel 0 thresholded at ``threshold``.
        prediction: ``(batch, H, W, 1)`` probabilities, thresholded at ``threshold``.
        alpha: opacity of the colour over the image.

    Returns:
        ``(batch, H, W, 3)`` float32 RGB in ``[0, 1]``, the input of ``tf.summary.image``.
    """
    grey = np.clip(np.asarray(images, np.float32)[..., :1], 0.0, 1.0)
    rgb = np.repeat(grey, 3, axis=-1)
    t = (np.asarray(truth)[..., :1] >= threshold).astype(np.float32)
    p = (np.asarray(prediction)[..., :1] >= threshold).astype(np.float32)
    colour = np.concatenate([p, t, np.zeros_like(t)], axis=-1)  # R = prediction, G = truth
    shown = np.maximum(t, p)
    return (rgb * (1.0 - alpha * shown) + alpha * colour * shown).astype(np.float32)


class ImageSummary(keras.callbacks.Callback):
    """Every ``every`` epochs (and after the last), write preview slices with truth and prediction.

    Images go to ``log_dir`` (``RUN_DIR/tensorboard/images``) under the tag ``preview`` at step
    ``epoch + 1``: the FLAIR slice in grey, the ground truth green, the prediction red, both yellow.

    Args:
        generator: the segmentation model.
        preview: a fixed ``(x, y)`` batch, ``x`` ``(batch, H, W, C)``, ``y`` ``(batch, H, W, 2)`` (mask and
            the FLAIR of the slice, which is shown).
        log_dir: folder of the event file.
        every: period in epochs; 0 turns the summaries off.
        epochs: the last epoch of the run (always summarised).
    """

    def __init__(self, generator: keras.Model, preview, log_dir, every: int, epochs: int):
        super().__init__()
        self.generator = generator
        self.x, self.y = (np.asarray(v) for v in preview)
        self.log_dir = str(log_dir)
        self.every = int(every)
        self.epochs = int(epochs)
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        if self.every <= 0 or (done % self.every and done != self.epochs):
            return
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        prediction = self.generator(self.x, training=False)
        # y's channel 1 is the FLAIR of the slice itself (x's first channel is slice z - k with 2.5D context)
        images = overlay(self.y[..., 1:2], self.y, keras.ops.convert_to_numpy(prediction))
        with self.writer.as_default():
            tf.summary.image("preview", images, step=done, max_outputs=len(images),
                             description="FLAIR; ground truth green, prediction red, overlap yellow")
        kill_point("tensorboard", done)
        self.writer.flush()

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _log_value(value) -> float:
    """An epoch-log value as a float (:func:`~wmhkeras.evaluation.reports.as_float`: None -> NaN).

    Keras has already made every value it could a Python float; one it could not (a non-scalar
    metric) is NaN here too rather than an error at the end of an epoch. NaN is written as null.
    """
    try:
        return as_float(value)
    except (TypeError, ValueError):
        return math.nan
