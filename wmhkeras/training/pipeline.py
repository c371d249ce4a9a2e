"""The training input pipeline: validated cohort -> preprocessed cache -> sampled, augmented batches.

Stages (details and the reasons for each choice in ``docs/data_pipeline.md``), one module each:

1. :func:`~wmhkeras.training.cohort.check_cohort` reads every training and validation subject once
   (missing or corrupt files, mismatched grids, missing labels raise
   :class:`~wmhkeras.errors.InputError` before any training) and preprocesses it into a cache
   (:mod:`wmhkeras.training.cache`): RAM (``memory``) or per-subject ``.npy`` shards on disk
   (``shards``), read back with ``os.pread`` so the process holds only the batches in flight, whatever
   the cohort size.
2. A seeded :class:`~wmhkeras.training.sampler.Sampler` draws each batch from ``(seed, batch index)``
   alone, so batch ``b`` is the same on every run with the same seed, whatever the parallelism of
   ``tf.data``.
3. :class:`~wmhkeras.training.augment.Augmenter` rotates / flips image and mask together and changes
   intensities, then the target is packed (:func:`pack`).

Validation and the TensorBoard preview read fixed samples in order (:mod:`wmhkeras.training.validation`).
This module assembles the ``tf.data`` datasets (:func:`build_datasets`).

Shapes: ``x`` ``(batch, H, W, C)`` float32, C = number of modalities (FLAIR first) times ``2k + 1`` with
``k = data.context_slices`` (2.5D, modality-major: :func:`~wmhkeras.data.preprocessing.add_context`);
``y`` ``(batch, H, W, 2)`` float32, channel 0 the (soft) mask, channel 1 the FLAIR of the slice itself
(:func:`~wmhkeras.training.validation.flair_channel`) of the augmented ``x``. ``H, W`` =
``model.input_size`` for slices (the canvas each resampled slice is centred on), ``data.patch_size`` for
patches (cut from the resampled slices).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from wmhkeras.config import Config
from wmhkeras.data import preprocessing as pp
from wmhkeras.data.datasets import Subject
from wmhkeras.data.splits import check_split
from wmhkeras.io.run_folder import Split
from wmhkeras.training import lesion_synthesis
from wmhkeras.training.augment import Augmenter
from wmhkeras.training.cache import CachedSubject, ShardCache, open_cache
from wmhkeras.training.cohort import check_cohort
from wmhkeras.training.sampler import Sampler
from wmhkeras.training.validation import flair_channel, preview_batch, read_entries, validation_table

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """What :func:`build_datasets` returns.

    ``train``: infinite ``tf.data.Dataset`` of ``(x, y)`` batches (``x`` ``(batch, H, W, C)``, ``y``
    ``(batch, H, W, 2)``: soft mask, augmented FLAIR). ``validation``: finite, deterministic ``(x, y)``
    batches over every brain slice (patches mode: every brain tile) of the validation subjects, hard
    labels; ``None`` without validation subjects. ``sites``: the sites of the training subjects.
    ``cache_mode``: ``memory`` or ``shards``. ``preview``: ``(x, y)`` NumPy arrays, up to 8 validation
    slices with lesion (training slices when no validation subject has lesion), hard labels, unaugmented;
    never None.
    """

    train: tf.data.Dataset
    validation: Optional[tf.data.Dataset]
    train_subjects: list[str]
    validation_subjects: list[str]
    sites: list[str]
    cache_mode: str
    preview: tuple[np.ndarray, np.ndarray]
    #: ``(H, W, C)`` of the model input.
    input_shape: tuple[int, int, int] = (0, 0, 0)
    #: Number of batches in one pass over ``validation`` (0 without validation).
    validation_batches: int = 0
    #: The shard folder (``shards`` mode), else None.
    cache_dir: Optional[Path] = None
    #: Counts for the run log: subjects, slices, lesion / brain slices per split and site, cache bytes.
    stats: dict = field(default_factory=dict)
    #: Lesion synthesis: the contrast model and the painted copies (``synthesis.json``); None when off.
    synthesis: Optional[dict] = None


def input_shape(cfg: Config) -> tuple[int, int, int]:
    """``(height, width, channels)`` of the training samples: whole slices (on the ``model.input_size``
    canvas) or patches; channels = modalities x ``(2 * data.context_slices + 1)``."""
    size = cfg.data.patch_size if cfg.data.sampling == "patches" else cfg.model.input_size
    return (int(size[0]), int(size[1]), pp.input_channels(len(cfg.data.modalities), cfg.data.context_slices))


def pack(x, mask, flair: int = 0):
    """``y`` ``(batch, H, W, 2)``: channel 0 the mask, channel 1 channel ``flair`` of ``x`` (the FLAIR of
    the slice itself: :func:`~wmhkeras.training.validation.flair_channel`)."""
    return tf.concat([mask, x[..., flair:flair + 1]], axis=-1)


def build_datasets(cfg: Config, subjects: list[Subject], split: Split | Mapping,
                   cache_dir: str | Path | None = None, first_batch: int = 0) -> TrainingData:
    """Check the cohort, preprocess it once and return the training and validation datasets.

    Args:
        cfg: the run config (``data``, ``model.input_size``, ``augment``, ``train.batch_size``/``seed``).
        subjects: the cohort; ``split``: a :class:`~wmhkeras.io.run_folder.Split` (or a mapping of
            ``train``, ``validation``, ``holdout`` id lists), checked against the cohort.
        cache_dir: the shard folder for ``shards`` mode (reused across runs with the same inputs);
            None puts the shards in a temporary folder removed at exit.
        first_batch: index of the first training batch: a resumed run continues with the batch of its
            next optimizer step, as if it had not stopped.

    Returns:
        :class:`TrainingData`. The first training batch depends only on the config and ``train.seed``.
    """
    split = check_split(split, subjects)
    by_id = {s.subject: s for s in subjects}
    synthesis = cfg.data.lesion_synthesis
    train_subjects = [by_id[s] for s in split.train]
    donors = lesion_synthesis.check_inputs(cfg, train_subjects) if synthesis.enabled else []  # before any reading
    # the painted copies are cached too: each counts as its subject in the cache's size estimate
    copies = [by_id[s] for s, _ in lesion_synthesis.plan(cfg, split.train, donors)] if donors else []
    cache = open_cache(cfg, [by_id[s] for s in split.train + split.validation] + copies, cache_dir)
    augmenter = Augmenter(cfg.augment, cfg.train.seed, cfg.data.normalisation,  # refuses bad settings before reading
                          context=cfg.data.context_slices)
    records = check_cohort(cfg, subjects, split, cache=cache)
    train_records = [records[s] for s in split.train]
    val_records = [records[s] for s in split.validation]
    painted, report = lesion_synthesis.synthesise(cfg, train_subjects, cache) if donors else ([], None)

    sampler = Sampler(cfg, cache, train_records + painted, cfg.train.seed)
    train = _train_dataset(cfg, sampler, augmenter, first_batch)
    table = validation_table(cfg, cache, val_records) if val_records else np.zeros((0, 4), np.int64)
    validation, n_val_batches = _validation_dataset(cfg, cache, val_records, table)
    stats = _stats(train_records, val_records, len(table), cache.nbytes, painted)
    log.info("training data: %s", stats)
    return TrainingData(
        train=train, validation=validation, train_subjects=list(split.train),
        validation_subjects=list(split.validation), sites=sorted({r.site for r in train_records}),
        cache_mode=cache.mode, preview=preview_batch(cfg, cache, val_records, train_records, painted),
        input_shape=input_shape(cfg), validation_batches=n_val_batches,
        cache_dir=cache.folder if isinstance(cache, ShardCache) else None, stats=stats, synthesis=report,
    )


def _deterministic() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options


def _train_dataset(cfg: Config, sampler: Sampler, augmenter: Augmenter, first_batch: int = 0) -> tf.data.Dataset:
    """Infinite from batch ``first_batch``, batch ``b`` a pure function of ``(seed, b)``: sampled, augmented,
    soft-labelled, packed."""
    height, width, channels = input_shape(cfg)
    batch = cfg.train.batch_size
    smoothing = cfg.data.label_smoothing
    flair = flair_channel(cfg)

    def train_batch(b):
        x, mask = tf.numpy_function(sampler.batch, [b], (tf.float32, tf.float32), stateful=False)
        x = tf.ensure_shape(x, (batch, height, width, channels))
        mask = tf.ensure_shape(mask, (batch, height, width, 1))
        x, mask = augmenter(x, mask, b)
        target = pp.soft_labels(mask, *smoothing) if smoothing is not None else mask
        return x, pack(x, target, flair)

    return (tf.data.Dataset.counter(start=int(first_batch))
            .map(train_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE).with_options(_deterministic()))


def _validation_dataset(cfg: Config, cache, records: list[CachedSubject],
                        table: np.ndarray) -> tuple[Optional[tf.data.Dataset], int]:
    """Finite, in subject / slice order, hard labels: ``(dataset or None, number of batches)``."""
    if not records:
        return None, 0
    height, width, channels = input_shape(cfg)
    flair = flair_channel(cfg)
    batch = cfg.train.batch_size
    n_batches = int(np.ceil(len(table) / batch))
    if not n_batches:
        log.warning("the validation subjects have no slice with brain: training without validation")
        return None, 0

    def read_val(v):
        rows = table[int(v) * batch:(int(v) + 1) * batch]
        return read_entries(cfg, cache, records, [tuple(int(a) for a in row) for row in rows])

    def val_batch(v):
        x, mask = tf.numpy_function(read_val, [v], (tf.float32, tf.float32), stateful=False)
        x = tf.ensure_shape(x, (None, height, width, channels))
        mask = tf.ensure_shape(mask, (None, height, width, 1))
        return x, pack(x, mask, flair)

    dataset = (tf.data.Dataset.range(n_batches)
               .map(val_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE).with_options(_deterministic()))
    return dataset, n_batches


def _stats(train: list[CachedSubject], validation: list[CachedSubject], validation_samples: int,
           cache_bytes: int, painted: list[CachedSubject] = ()) -> dict:
    """Counts for the run log and ``summary.json`` (``data``)."""
    extra = {"painted_volumes": len(painted),
             "painted_lesion_voxels": int(sum(int(r.lesion.sum()) for r in painted))} if painted else {}
    return {
        "train_subjects": len(train), "validation_subjects": len(validation),
        "train_slices": sum(r.x_shape[0] for r in train),
        "train_lesion_slices": int(sum(int((r.lesion > 0).sum()) for r in train)),
        "train_brain_slices": int(sum(int(r.has_brain.sum()) for r in train)),
        "train_lesion_voxels": int(sum(int(r.lesion.sum()) for r in train)),
        "validation_samples": int(validation_samples),
        "sites": {s: sum(r.site == s for r in train) for s in sorted({r.site for r in train})},
        "cache_bytes": int(cache_bytes),
        **extra,
    }
