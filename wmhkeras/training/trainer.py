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

import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from wmhkeras.config import Config, load_run_config, save_config
from wmhkeras.data.datasets import Subject, load_dataset
from wmhkeras.data.preprocessing import resample_mode
from wmhkeras.data.splits import check_split, load_split, make_split
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.checkpoints import ResumePoint, choose_resume_point, restore
from wmhkeras.io.files import atomic_write_json
from wmhkeras.io.lock import FolderLock, check_free
from wmhkeras.io.provenance import package_versions, utc_now
from wmhkeras.io.run_folder import InitRecord, RunFolder, RunState, RunSummary, Split, staged_run_folder, trim_log
from wmhkeras.losses.backbones import weights_record
from wmhkeras.training.callbacks import RunCheckpoint, run_callbacks
from wmhkeras.training.finetune import (
    EncoderFreeze,
    assign_init_weights,
    check_freeze,
    check_init_config,
    check_init_weights,
    finetune_config,
    read_init_weights,
)
from wmhkeras.training.model_setup import (  # noqa: F401  (public here too)
    STEP_DECAY_AT,
    STEP_DECAY_FACTOR,
    build_model,
    make_learning_rate,
    make_loss,
    make_metrics,
)
from wmhkeras.training.multiworker import is_chief, make_strategy, no_empty_replica, prepare_multi_worker_fit
from wmhkeras.training.pipeline import TrainingData, build_datasets, input_shape
from wmhkeras.training.resume import first_batch, load_checkpoint

log = logging.getLogger(__name__)

#: Lesion synthesis: the fitted contrast model and the painted copies of a run.
SYNTHESIS_FILE = "synthesis.json"
#: A fine-tuning run's start: the model's record and its weights by variable path (or None).
Start = Optional[tuple[InitRecord, dict[str, np.ndarray]]]


@dataclass
class TrainResult:
    """What :func:`train` returns: the run folder, its ``summary.json``, and this session's history.

    ``epochs`` counts every epoch completed by the run (earlier sessions included when resumed);
    ``history`` holds only the epochs run by this call (Keras ``History.history``).
    """

    run_dir: Path
    epochs: int
    best_val_dice: float | None
    best_epoch: int | None
    wall_time_s: float
    summary: RunSummary = field(default_factory=RunSummary)
    history: dict = field(default_factory=dict)


# === The trainer ===


def train(cfg: Config | None, out_dir: str | Path, data_path: str | Path | None = None, resume: bool = False,
          *, split: Split | Mapping | str | Path | None = None, verbose: int = 1,
          init: InitRecord | None = None) -> TrainResult:
    """Train a generator and write the run folder ``out_dir``.

    Args:
        cfg: the run config. On resume ``None`` reads ``out_dir/config.yaml``; a config given on resume
            replaces it (e.g. with more ``train.epochs``) and is written back.
        out_dir: the run folder; a new run needs it absent (or empty), a resumed run needs it written
            by an earlier call.
        data_path: dataset (manifest CSV, folder with ``manifest.csv``, BIDS dataset or MICCAI layout); default
            ``cfg.data.path``. Recorded, resolved, in ``config.yaml``.
        resume: continue from ``checkpoints/last.keras`` with its optimizer state and epoch counter,
            on the split in ``split.json``.
        split: for a new run, a given split instead of a new one: a :class:`Split` (or a mapping of
            ``train``, ``validation``, ``holdout`` subject ids), or a ``split.json`` (e.g. another run's).
        verbose: Keras ``fit`` verbosity (1: progress bar, or one line per epoch when standard output is not a
            terminal or a notebook; 2: one line per epoch; 0: silent).
        init: start a new run from this model's weights (:func:`wmhkeras.inference.sources.init_record`;
            :mod:`wmhkeras.training.finetune`): its settings are checked against ``cfg`` and its weights
            against ``cfg``'s generator before the data is read; the run trains at ``finetune.learning_rate``,
            with the encoder frozen for ``finetune.freeze_encoder_epochs`` epochs, and records the model in
            ``init.json``.

    Returns:
        :class:`TrainResult` (the summary is also in ``out_dir/summary.json``).

    Raises:
        InputError / ConfigError / WeightsError: bad data, split, config, backbone weights or starting model
            (``init``), raised before a new run folder is created (none is left behind).
        FolderInUseError: another process trains in ``out_dir`` (:mod:`wmhkeras.io.lock`; the chief holds
            the run folder's lock from here to the end, ``--resume`` included).
    """
    run = RunFolder(Path(out_dir).resolve())
    cfg = _run_config(cfg, run, data_path, resume=resume, given=split is not None or init is not None)
    if init is not None:
        check_init_config(cfg, init)
        cfg = finetune_config(cfg, init)
    check_freeze(cfg, finetuning=init is not None or resume and run.init.is_file())
    # MultiWorkerMirroredStrategy must exist before TensorFlow runs any op in this process.
    strategy = make_strategy(cfg.train.distribution)
    chief = is_chief(strategy)
    previous_policy = keras.mixed_precision.global_policy()
    try:
        with _holding(run, resume=resume, chief=chief):
            start = None
            if init is not None:  # before the seed: the check's throwaway model draws no training randomness
                start = (init, read_init_weights(init))
                check_init_weights(cfg, start[1], init, input_shape(cfg))
            keras.utils.set_random_seed(cfg.train.seed)
            subjects = load_dataset(cfg.data.path)
            split = _run_split(cfg, run, subjects, split, resume=resume)
            if not chief:
                return _run_as_worker(cfg, strategy, subjects, split, run, resume=resume, start=start)
            if resume:
                return _run(cfg, strategy, subjects, split, read=run, write=run, resume=True, chief=True,
                            verbose=verbose)
            return _run_new(cfg, strategy, subjects, split, run, verbose=verbose, start=start)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _run_new(cfg: Config, strategy, subjects: list[Subject], split: Split, run: RunFolder, *, verbose: int,
             start: Start) -> TrainResult:
    """A new run, written into a staged folder renamed onto ``run`` once every input is valid and the model
    is built (``commit``)."""
    with staged_run_folder(run.path) as staged, FolderLock(staged.path, "train") as lock:
        def commit() -> Path:
            check_free(run.path, "choose another --out")
            return lock.moved(staged.commit())

        return _run(cfg, strategy, subjects, split, read=run, write=RunFolder(staged.path), resume=False,
                    chief=True, verbose=verbose, commit=commit, start=start)


@contextlib.contextmanager
def _holding(run: RunFolder, resume: bool, chief: bool) -> Iterator[None]:
    """The chief of a resume holds the run folder's lock; a new run refuses a folder another process trains
    in, and holds the lock of its staged folder, which becomes the run folder's when it is committed.
    Other multi-worker tasks take no lock (they write into scratch folders)."""
    if not chief:
        yield
    elif resume:
        with FolderLock(run.path, "train --resume", hint="wait for it to finish, or stop it before resuming"):
            yield
    else:
        check_free(run.path, "choose another --out")
        yield


def _run_config(cfg: Config | None, run: RunFolder, data_path, *, resume: bool, given: bool) -> Config:
    """The config of the run (read back on resume when not given), with ``data.path`` resolved; on resume,
    ``given`` (a split or an ``init`` model) is refused (:meth:`RunFolder.check_resume`)."""
    if resume:
        run.check_resume(given=given)
        if cfg is None:
            cfg = load_run_config(run.config)
    elif cfg is None:
        raise ConfigError("train: a config is needed for a new run (only --resume reads it from the run folder)")
    data = data_path or cfg.data.path
    if data is None:
        raise InputError("no dataset given: set data.path in the config or pass --data PATH")
    return replace(cfg, data=replace(cfg.data, path=str(Path(data).resolve())))


def _run_split(cfg: Config, run: RunFolder, subjects: list[Subject], split, *, resume: bool) -> Split:
    """The run's split, checked against the cohort: its own ``split.json`` on resume, else the given one,
    else a new one (``data.split`` fractions, ``train.seed``)."""
    if resume:
        return load_split(run.split, subjects)
    if split is None:
        return make_split(subjects, cfg.data.split, cfg.train.seed)
    if isinstance(split, (Split, Mapping)):
        return check_split(split, subjects)
    return load_split(split, subjects)


def _run_as_worker(cfg: Config, strategy, subjects: list[Subject], split: Split, run: RunFolder, *,
                   resume: bool, start: Start = None) -> TrainResult:
    """A non-chief multi-worker task: train alongside the chief, writing into a scratch folder.

    Other workers take part in every step and write the same files, to a scratch folder: Keras creates
    a variable each time it saves a model (a collective op under MultiWorkerMirroredStrategy), so all
    workers must save together, as TF's guide asks.
    """
    scratch = Path(tempfile.mkdtemp(prefix="wmhkeras-worker-"))
    try:
        result = _run(cfg, strategy, subjects, split, read=run, write=RunFolder(scratch), resume=resume,
                      chief=False, verbose=0, start=start)
        return replace(result, run_dir=run.path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(cfg: Config, strategy, subjects: list[Subject], split: Split, *, read: RunFolder, write: RunFolder,
         resume: bool, chief: bool, verbose: int, commit=None, start: Start = None) -> TrainResult:
    """Build datasets and model (with ``start``'s weights), then (after ``commit`` renames the staged folder) fit."""
    t = cfg.train
    replicas = _check_replicas(cfg, strategy.num_replicas_in_sync)
    point = choose_resume_point(read) if resume else ResumePoint(RunState())
    first = first_batch(point, t.steps_per_epoch)
    data = build_datasets(cfg, subjects, split, cache_dir=cfg.data.cache_dir, first_batch=first)
    keras.mixed_precision.set_global_policy(t.precision)
    with strategy.scope():
        model, generator = build_model(cfg)
        initial_epoch, state, steps_done = load_checkpoint(model, point, t.steps_per_epoch)
        if start is not None:
            assign_init_weights(generator, start[1], start[0])
    if steps_done > first:  # a state without checksums, one epoch behind its checkpoint
        data.train = data.train.skip(steps_done - first)
    validation = data.validation
    if validation is not None and replicas > 1:
        validation = no_empty_replica(validation, data.stats["validation_samples"], t.batch_size, replicas)
    if initial_epoch >= t.epochs:
        raise ConfigError(f"train.epochs: {t.epochs} epochs are already done in {read.path}; "
                          f"raise it (e.g. --set train.epochs={t.epochs + 10}) to train longer")
    if resume and chief:  # the files of the chosen state back under their own names
        restore(read, point)
    _write_run_files(cfg, write, split, resume=resume, initial_epoch=initial_epoch, init=start and start[0])
    if data.synthesis is not None:
        atomic_write_json(write.path / SYNTHESIS_FILE, data.synthesis)
    if commit is not None:  # every input is valid and the model is built: the run folder may exist now
        write = RunFolder(commit())

    base = _summary_base(cfg, write, data, split, replicas, started=state.started or utc_now())
    free = resample_mode(cfg.data.resample, cfg.data.sampling) != "fixed"  # best.keras: see inference_model
    checkpoint = RunCheckpoint(write, generator, monitor=_monitor(cfg, data), state=state, summary_base=base,
                               free_size=free)
    callbacks = run_callbacks(cfg, checkpoint, generator, data.preview, resume=resume, chief=chief, state=state)
    if cfg.finetune.freeze_encoder_epochs and (start is not None or read.init.is_file()):
        callbacks.insert(0, EncoderFreeze(generator, cfg.finetune.freeze_encoder_epochs))
    log.info("training %s with the %s loss: epochs %d-%d of %d steps, global batch %d over %d replica(s)",
             cfg.model.arch, cfg.loss.name, initial_epoch + 1, t.epochs, t.steps_per_epoch, t.batch_size, replicas)
    if t.distribution == "multi_worker":
        with strategy.scope():
            prepare_multi_worker_fit(model, data.preview)
    start = time.monotonic()
    with strategy.scope():
        history = model.fit(data.train, epochs=t.epochs, initial_epoch=initial_epoch,
                            steps_per_epoch=t.steps_per_epoch,
                            validation_data=validation, validation_steps=t.validation_steps,
                            callbacks=callbacks, shuffle=False,  # a redrawn bar only on a terminal or notebook
                            verbose=2 if verbose == 1 and not (sys.stdout.isatty() or "ipykernel" in sys.modules) else verbose)
    log.info("trained %d epoch(s) in %.1f s this session", len(history.epoch), time.monotonic() - start)
    return _finish(checkpoint, t.epochs, history)


def _check_replicas(cfg: Config, replicas: int) -> int:
    """``replicas``, once ``train.batch_size`` (the global batch) is checked against it."""
    batch = cfg.train.batch_size
    if batch < replicas:
        raise ConfigError(f"train.batch_size: {batch} is the global batch; it must be at least the "
                          f"number of replicas ({replicas})")
    if batch % replicas:
        log.warning("train.batch_size %d does not divide by %d replicas; replicas get unequal batches",
                    batch, replicas)
    return replicas


def _write_run_files(cfg: Config, run: RunFolder, split: Split, *, resume: bool, initial_epoch: int,
                     init: InitRecord | None = None) -> None:
    """``config.yaml``, ``split.json`` (new run), ``init.json`` (a run started from a model),
    ``versions.json`` (with the backbone's weights and their sha256 when the loss uses one); on resume
    ``log.csv`` trimmed to the epochs of the checkpoint."""
    run.checkpoints.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)
    if not resume:
        run.write_split(split)
    if init is not None:
        run.write_init(init)
    versions: dict = package_versions()
    lo = cfg.loss
    if lo.uses_backbone:
        versions["backbone"] = weights_record(lo.backbone, lo.weights, lo.layers)
    atomic_write_json(run.versions, versions)
    if resume:
        trim_log(run.log, initial_epoch)


def _monitor(cfg: Config, data: TrainingData) -> str:
    """The log key that chooses ``best.keras`` (and early stopping)."""
    # The adversarial model reports only its loss; without a validation set, training metrics decide.
    has_dice = not cfg.loss.finetune_backbone
    if data.validation is not None:
        monitor = "val_dice" if has_dice else "val_loss"
    else:
        monitor = "dice" if has_dice else "loss"
    if monitor != "val_dice":
        log.warning("best.keras is chosen by %s (no validation Dice available)", monitor)
    return monitor


def _summary_base(cfg: Config, run: RunFolder, data: TrainingData, split: Split, replicas: int,
                  started: str) -> RunSummary:
    """The fields of ``summary.json`` fixed for the whole run; the callback fills in the counters."""
    t = cfg.train
    return RunSummary(
        run_dir=str(run.path), loss=cfg.loss.name, arch=cfg.model.arch, subjects=split.counts(),
        sites=list(data.sites), cache=data.cache_mode, data=data.stats, epochs_planned=t.epochs,
        steps_per_epoch=t.steps_per_epoch, global_batch_size=t.batch_size, replicas=replicas,
        distribution=t.distribution, precision=t.precision, started=started,
    )


def _finish(checkpoint: RunCheckpoint, epochs_planned: int, history: keras.callbacks.History) -> TrainResult:
    """Write the final ``state.json`` and ``summary.json``; the :class:`TrainResult`."""
    summary = checkpoint.summary(finished=True, stopped_early=checkpoint.epochs < epochs_planned)
    run = checkpoint.run
    run.write_state(checkpoint.state(running_epoch=None))
    run.write_summary(summary)
    return TrainResult(run_dir=run.path, epochs=checkpoint.epochs, best_val_dice=summary.best_val_dice,
                       best_epoch=checkpoint.best_epoch, wall_time_s=summary.wall_time_s, summary=summary,
                       history=dict(history.history))
