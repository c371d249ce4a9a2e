"""The cohort check before training, and the preprocessing of each subject into the cache.

:func:`check_cohort` reads every training and validation subject once with
:func:`~wmhkeras.data.datasets.check_subject` (missing or corrupt files, mismatched grids, missing labels
raise :class:`~wmhkeras.errors.InputError` before any training) and, given a cache, preprocesses it with
the shared :mod:`wmhkeras.data.preprocessing` functions (:func:`preprocess_subject`) into that cache.

Lesion: label value 1 (label 2, "other pathology" in the MICCAI 2017 data, is not WMH and counts as
background), measured on the mask resampled as the images are (``data.resample``: resized to
``model.input_size``, resampled to ``data.spacing`` mm, or native), the mask the model is trained on;
for ``sampling: slices`` counted inside the ``model.input_size`` canvas of each slice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from wmhkeras.config import Config
from wmhkeras.data import preprocessing as pp
from wmhkeras.data.datasets import Subject, check_headers, check_subject
from wmhkeras.data.splits import check_split
from wmhkeras.errors import InputError
from wmhkeras.io.run_folder import Split
from wmhkeras.training.cache import (
    BACKGROUND_BIT,
    BRAIN_BIT,
    BRAIN_THRESHOLD,
    HARD_BIT,
    LESION_BIT,
    MIN_BRAIN_FRACTION,
    CachedSubject,
    cache_key,
)
from wmhkeras.training.sampler import fit_canvas

log = logging.getLogger(__name__)


def preprocess_subject(cfg: Config, subject: Subject, images, label) -> tuple[CachedSubject, np.ndarray, np.ndarray]:
    """One subject's cached arrays from its checked volumes (canonical ``[X, Y, Z]``).

    Every mode goes through the shared preprocessing (:func:`~wmhkeras.data.preprocessing.preprocess_volume`)
    with the training cache's :class:`~wmhkeras.data.preprocessing.Resampling` (``data.resample``,
    unpadded): ``fixed`` resizes each slice to ``model.input_size``, ``spacing`` resamples it to
    ``data.spacing`` mm, ``none`` keeps the native grid. The lesion mask goes through the same
    resampling (binary), the brain mask is the resampled max-normalised FLAIR above
    :data:`~wmhkeras.training.cache.BRAIN_THRESHOLD`; patch labels are computed on the resampled grid.

    Returns ``(record, x, labels)``: ``x`` ``(Z, H, W, C * (2k + 1))`` float32 (``k``:
    ``data.context_slices``), ``labels`` ``(Z, H, W)`` uint8 with bit 0 = lesion and, for patches, bit 1
    = brain, bit 2 = a centre whose ``data.patch_size`` patch holds no lesion (and is brain, unless
    ``data.background`` is ``any``), and with ``data.hard_negatives`` bit 3 = such a centre on lesion-bright
    normal tissue (:func:`bright_tissue`, on the resampled max-normalised FLAIR).
    """
    channels = [v.data for v in images]
    voxel = images[0].spacing
    resampling = pp.resampling_for(cfg.data, cfg.model, multiple=1)
    x = pp.preprocess_volume(channels, resampling=resampling, voxel_size=voxel, method=cfg.data.normalisation,
                             context=cfg.data.context_slices).numpy()
    lesion = (label.data == 1).astype(np.float32)
    lesion_slices = resampling.to_model(pp.volume_to_slices(lesion), voxel, masks=True).numpy()[..., 0] > 0
    flair = pp.normalise(channels[0], "max")
    brain_native = flair.numpy() > BRAIN_THRESHOLD
    # "a slice contains brain" is measured on the native slice in every mode (a fraction of its area)
    brain_fraction = brain_native.mean(axis=(0, 1))
    hard_count = np.zeros(0, np.int64)  # with data.hard_negatives: per-slice hard-negative centres
    if cfg.data.sampling == "slices":
        labels = lesion_slices.astype(np.uint8)
        brain_count = brain_native.sum(axis=(0, 1))
        lesion_count = _canvas_lesion(cfg, subject, labels)
    else:
        flair_slices = resampling.to_model(pp.volume_to_slices(flair), voxel).numpy()[..., 0]
        brain = flair_slices > BRAIN_THRESHOLD
        brain_slices = brain & (brain_fraction >= MIN_BRAIN_FRACTION)[:, None, None]
        labels = _patch_labels(cfg, lesion_slices, brain_slices)
        if cfg.data.hard_negatives.share:
            hard = bright_tissue(flair_slices, brain_slices, lesion_slices, cfg.data.hard_negatives.brightest)
            hard &= (labels & BACKGROUND_BIT) > 0
            labels |= hard.astype(np.uint8) * HARD_BIT
            hard_count = hard.sum(axis=(1, 2)).astype(np.int64)
        brain_count = brain_slices.sum(axis=(1, 2))
        lesion_count = lesion_slices.sum(axis=(1, 2))
    record = CachedSubject(
        subject=subject.subject, site=subject.site, x_shape=tuple(int(s) for s in x.shape),
        lesion=np.asarray(lesion_count, np.int64),
        brain=np.asarray(brain_count, np.int64), brain_fraction=np.asarray(brain_fraction, np.float64),
        lesion_voxels_native=int(lesion.sum()),
        background=((labels & BACKGROUND_BIT) > 0).sum(axis=(1, 2)).astype(np.int64),
        hard=hard_count,
    )
    return record, x.astype(np.float32), labels


def _canvas_lesion(cfg: Config, subject: Subject, labels: np.ndarray) -> np.ndarray:
    """Slices mode: per-slice lesion voxels inside the ``model.input_size`` canvas (what training sees).

    In ``fixed`` mode the slice is the canvas; in ``spacing`` / ``none`` modes a slice larger than the
    canvas is centre-cropped, and lesion voxels outside the crop are never trained on (a warning).
    """
    lesion = (labels & LESION_BIT) > 0
    total = lesion.sum(axis=(1, 2))
    inside = fit_canvas(np.moveaxis(lesion, 0, -1), cfg.model.input_size).sum(axis=(0, 1))
    if inside.sum() < total.sum():
        log.warning("%s: %d of %d lesion voxels of the resampled slices (%dx%d) lie outside the training "
                    "canvas model.input_size %s and are never trained on; raise model.input_size",
                    subject.subject, int(total.sum() - inside.sum()), int(total.sum()), labels.shape[1],
                    labels.shape[2], list(cfg.model.input_size))
    return inside


def bright_tissue(flair: np.ndarray, brain: np.ndarray, lesion: np.ndarray, brightest: float) -> np.ndarray:
    """Lesion-bright normal tissue: the brain voxels (``brain`` and not ``lesion``) whose FLAIR intensity is
    among the ``brightest`` fraction of those voxels (at or above their ``1 - brightest`` quantile).

    Any monotonic rescaling of ``flair`` (max or z-score normalisation) marks the same voxels. All False when
    the scan has no normal brain voxel.
    """
    normal = brain & ~lesion
    if not normal.any():
        return np.zeros_like(normal)
    return normal & (flair >= np.quantile(flair[normal], 1.0 - brightest))


def _patch_labels(cfg: Config, lesion_slices: np.ndarray, brain_slices: np.ndarray) -> np.ndarray:
    """Patches mode: the ``(Z, H, W)`` uint8 label bits (lesion, brain, valid background centre)."""
    # A patch centred at r spans rows r - h//2 .. r - h//2 + h - 1: exactly the window of a size-h
    # maximum filter, so this marks every centre whose patch would hold a lesion voxel.
    h, w = cfg.data.patch_size
    near_lesion = ndimage.maximum_filter(lesion_slices, size=(1, h, w), mode="constant", cval=0)
    centre = ~near_lesion if cfg.data.background == "any" else brain_slices & ~near_lesion
    return (lesion_slices * LESION_BIT + brain_slices * BRAIN_BIT + centre * BACKGROUND_BIT).astype(np.uint8)


def check_cohort(cfg: Config, subjects: list[Subject], split: Split | Mapping, cache=None) -> dict[str, CachedSubject]:
    """Validate the cohort before any training; with ``cache``, also preprocess each subject into it.

    The split is checked against the cohort (:func:`~wmhkeras.data.splits.check_split`), then the header
    of every file of every subject, hold-out included (:func:`~wmhkeras.data.datasets.check_headers`: it
    parses, is 3D with a usable affine, holds its voxels, lies on the FLAIR's grid). Every training
    and validation subject is then read once with :func:`~wmhkeras.data.datasets.check_subject` (finite
    values, labels 0/1/2, a label is present); hold-out subjects are read when evaluated. A subject already in a
    :class:`~wmhkeras.training.cache.ShardCache` under the same key (same files, sizes, modification
    times and settings) was validated when it was cached and is not read again.

    Returns:
        ``{subject id: CachedSubject}`` for the training and validation subjects.

    Raises:
        InputError: an id of the split is not in ``subjects``; a file is missing or corrupt; grids
            differ; a label is missing; the training subjects contain no lesion voxel (label 1), or
            none that survives resizing to ``model.input_size``.
    """
    split = check_split(split, subjects)
    by_id = {s.subject: s for s in subjects}
    # the header pre-pass of every subject (hold-out included): a broken file stops training before any read
    check_headers([by_id[s] for s in split.train + split.validation + split.holdout], cfg.data.modalities)

    records: dict[str, CachedSubject] = {}
    used = split.train + split.validation
    for i, sid in enumerate(used):
        records[sid] = record = _check_one(cfg, by_id[sid], cache)
        log.debug("checked %s (%d/%d): %d lesion voxels", sid, i + 1, len(used), record.lesion_voxels_native)
        if (i + 1) % max(1, len(used) // 10) == 0:
            log.info("checked %d of %d subjects", i + 1, len(used))
    train_lesion = _check_training_lesions(cfg, [records[s] for s in split.train], cached=cache is not None)
    log.info("cohort checked: %d training, %d validation subjects, %d training lesion voxels",
             len(split.train), len(split.validation), train_lesion)
    return records


def _check_one(cfg: Config, subject: Subject, cache) -> CachedSubject:
    """Read and check one subject (unless ``cache`` holds it already); with ``cache``, preprocess it into it."""
    key = cache_key(cfg, subject)  # also the first check that its files exist
    record = cache.lookup(subject, key) if cache is not None else None
    if record is not None:
        return record
    images, label = check_subject(subject, cfg.data.modalities, need_label=True)
    if cache is None:
        return CachedSubject(subject.subject, subject.site, tuple(images[0].data.shape) + (len(images),),
                             np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                             int((label.data == 1).sum()))
    record, x, labels = preprocess_subject(cfg, subject, images, label)
    cache.put(record, key, x, labels)
    return record


def _check_training_lesions(cfg: Config, train: list[CachedSubject], cached: bool) -> int:
    """The training subjects' lesion voxels (label 1); InputError when there are none (native, or after
    resampling (``data.resample``) when ``cached``)."""
    train_lesion = sum(r.lesion_voxels_native for r in train)
    if train_lesion == 0:
        raise InputError(
            f"the {len(train)} training subjects contain no lesion voxel (label 1) in their label "
            "files; training needs lesions (check the label files, or the split)"
        )
    if cached and sum(int(r.lesion.sum()) for r in train) == 0:
        mode = pp.resample_mode(cfg.data.resample, cfg.data.sampling)
        where = {"fixed": f"resized to model.input_size {cfg.model.input_size}",
                 "spacing": f"resampled to data.spacing {cfg.data.spacing} mm",
                 "none": f"cropped to the model.input_size canvas {cfg.model.input_size}"}[mode]
        if mode == "spacing" and cfg.data.sampling == "slices":
            where += f" and cropped to the model.input_size canvas {cfg.model.input_size}"
        raise InputError(
            f"the training subjects' {train_lesion} lesion voxels all vanish when {where}; use a larger "
            "input size, a finer data.spacing or sampling: patches"
        )
    return train_lesion
