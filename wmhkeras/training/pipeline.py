"""The training input pipeline: validated cohort -> preprocessed cache -> sampled, augmented batches.

Stages (details and the reasons for each choice in ``docs/data_pipeline.md``):

1. :func:`check_cohort` reads every training and validation subject once with
   :func:`~wmhkeras.data.datasets.check_subject` (missing or corrupt files, mismatched grids, missing labels
   raise :class:`~wmhkeras.errors.InputError` before any training) and preprocesses it with the shared
   :mod:`wmhkeras.data.preprocessing` functions into a cache: RAM (``memory``) or per-subject ``.npy``
   shards on disk (``shards``), read back with ``os.pread`` so the process holds only the batches in
   flight, whatever the cohort size.
2. A seeded sampler draws each batch from ``(seed, batch index)`` alone: for each sample whether it
   holds lesion (probability ``data.lesion_fraction``), the site (with ``balance_sites``), the subject
   and slice, and for patches the centre. Batch ``b`` is therefore the same on every run with the same
   seed, whatever the parallelism of ``tf.data``.
3. :class:`~wmhkeras.training.augment.Augmenter` rotates / flips image and mask together and changes
   intensities, then the target is packed: ``y = (batch, H, W, 2)``, channel 0 the (soft) mask,
   channel 1 the FLAIR channel of the augmented ``x``.

Definitions:

* lesion: label value 1 (label 2, "other pathology" in the MICCAI 2017 data, is not WMH and counts as
  background); for ``sampling: slices`` measured on the mask resized to ``model.input_size`` (the mask
  the model is trained on), for ``patches`` at native resolution.
* brain: voxels whose max-normalised FLAIR exceeds :data:`BRAIN_THRESHOLD` (0.1, as the z-score
  normalisation's brain mask); a slice "contains brain" when at least :data:`MIN_BRAIN_FRACTION` of
  its voxels are brain, which excludes empty slices with only noise specks. On data that is not
  skull-stripped this is the head, not only the brain: what it excludes is empty air.

Shapes: ``x`` ``(batch, H, W, C)`` float32, C = number of modalities (FLAIR first); ``y`` ``(batch, H,
W, 2)`` float32. ``H, W`` = ``model.input_size`` for slices, ``data.patch_size`` for patches.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
import tensorflow as tf
from scipy import ndimage

from wmhkeras.config import Config
from wmhkeras.data import preprocessing as pp
from wmhkeras.data.datasets import Subject, check_subject
from wmhkeras.data.splits import SPLIT_KEYS
from wmhkeras.errors import InputError
from wmhkeras.io.files import atomic_path, atomic_write_json
from wmhkeras.training.augment import Augmenter

log = logging.getLogger(__name__)

#: A voxel is brain when its max-normalised FLAIR is above this (as ``normalise(..., 'zscore')``).
BRAIN_THRESHOLD = 0.1
#: A slice contains brain when at least this fraction of its voxels is brain.
MIN_BRAIN_FRACTION = 0.01
#: Largest number of slices in the TensorBoard preview batch.
PREVIEW_SIZE = 8
#: Bumped whenever the cached arrays would change for the same inputs and settings.
CACHE_VERSION = 1
#: Bits of the stored uint8 label slices: lesion, brain, and (patches) a valid background patch centre.
LESION_BIT, BRAIN_BIT, BACKGROUND_BIT = 1, 2, 4

# Sample categories drawn by the sampler.
_LESION, _OTHER, _UNIFORM = 0, 1, 2


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


# === Per-subject records and caches ===


@dataclass
class SubjectRecord:
    """One preprocessed subject: ``x`` ``(Z, H, W, C)`` float32 and labels ``(Z, H, W)`` uint8 (bits).

    ``lesion``/``brain``/``background``: per-slice voxel counts at the stored resolution (brain counts at
    native resolution in slices mode, where they only decide which slices contain brain; background:
    patches mode, the voxels that can centre a lesion-free background patch).
    """

    subject: str
    site: str
    x_shape: tuple[int, int, int, int]
    lesion: np.ndarray
    brain: np.ndarray
    brain_fraction: np.ndarray
    lesion_voxels_native: int
    background: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def has_brain(self) -> np.ndarray:
        return self.brain_fraction >= MIN_BRAIN_FRACTION

    def meta(self) -> dict:
        return {
            "subject": self.subject, "site": self.site, "x_shape": list(self.x_shape),
            "lesion": self.lesion.tolist(), "brain": self.brain.tolist(),
            "brain_fraction": self.brain_fraction.tolist(), "lesion_voxels_native": self.lesion_voxels_native,
            "background": self.background.tolist(),
        }

    @classmethod
    def from_meta(cls, m: dict) -> SubjectRecord:
        return cls(m["subject"], m["site"], tuple(m["x_shape"]), np.asarray(m["lesion"], np.int64),
                   np.asarray(m["brain"], np.int64), np.asarray(m["brain_fraction"], np.float64),
                   int(m["lesion_voxels_native"]), np.asarray(m["background"], np.int64))


class MemoryCache:
    """Preprocessed subjects kept in RAM."""

    mode = "memory"

    def __init__(self):
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def lookup(self, subject: Subject, key: str) -> Optional[SubjectRecord]:
        return None

    def put(self, record: SubjectRecord, key: str, x: np.ndarray, labels: np.ndarray) -> None:
        self._arrays[record.subject] = (x, labels)

    def read(self, subject: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        x, labels = self._arrays[subject]
        return x[k], labels[k]

    def read_labels(self, subject: str, k: int) -> np.ndarray:
        return self._arrays[subject][1][k]

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes + y.nbytes for x, y in self._arrays.values())


class ShardCache:
    """Preprocessed subjects as ``<folder>/<subject>-<key>/{x,labels}.npy`` + ``meta.json`` on disk.

    A subject is preprocessed once: the key hashes its files (path, size, modification time) and the
    preprocessing settings, so a later run with the same inputs reuses the shards without reading the
    NIfTI files again. Slices are read with ``os.pread`` at their offset in the ``.npy`` file: nothing
    stays mapped in the process (a memory map would count every slice it has touched in the RSS); the
    operating system's page cache keeps hot shards fast.
    """

    mode = "shards"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, dict[str, tuple[Path, int, tuple, np.dtype]]] = {}

    def _dir(self, subject: str, key: str) -> Path:
        return self.folder / f"{re.sub(r'[^A-Za-z0-9._-]', '_', subject)}-{key[:16]}"

    def lookup(self, subject: Subject, key: str) -> Optional[SubjectRecord]:
        meta_path = self._dir(subject.subject, key) / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key:
                return None
            record = SubjectRecord.from_meta(meta)
            self._register(record.subject, self._dir(subject.subject, key))
        except (OSError, ValueError, KeyError):
            log.warning("%s: unreadable shard, preprocessing %s again", meta_path.parent, subject.subject)
            return None
        return record

    def put(self, record: SubjectRecord, key: str, x: np.ndarray, labels: np.ndarray) -> None:
        folder = self._dir(record.subject, key)
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("x", x), ("labels", labels)):
            with atomic_path(folder / f"{name}.npy") as tmp:
                np.save(tmp, np.ascontiguousarray(array))
        atomic_write_json(folder / "meta.json", {"key": key, **record.meta()})  # last: marks it complete
        self._register(record.subject, folder)

    def _register(self, subject: str, folder: Path) -> None:
        files = {}
        for name in ("x", "labels"):
            path = folder / f"{name}.npy"
            header = np.load(path, mmap_mode="r")  # parses the header only; closed below
            files[name] = (path, int(header.offset), header.shape[1:], header.dtype)
            del header
        self._files[subject] = files

    def _pread(self, subject: str, name: str, k: int) -> np.ndarray:
        path, offset, shape, dtype = self._files[subject][name]
        size = int(np.prod(shape)) * dtype.itemsize
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, size, offset + k * size)
        finally:
            os.close(fd)
        return np.frombuffer(data, dtype).reshape(shape)

    def read(self, subject: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._pread(subject, "x", k), self._pread(subject, "labels", k)

    def read_labels(self, subject: str, k: int) -> np.ndarray:
        return self._pread(subject, "labels", k)

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for f in self._files.values() for p, *_ in f.values())


# === Cohort check and preprocessing ===


def _subject_files(cfg: Config, subject: Subject) -> list[Path]:
    return [subject.modality(m) for m in cfg.data.modalities] + ([subject.label] if subject.label else [])


def _cache_key(cfg: Config, subject: Subject) -> str:
    files = []
    for path in _subject_files(cfg, subject):
        try:
            st = Path(path).stat()
        except OSError:
            raise InputError(f"{path}: file not found (subject {subject.subject})") from None
        files.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    d = cfg.data
    settings = {
        "version": CACHE_VERSION, "subject": subject.subject, "site": subject.site, "files": files,
        "modalities": d.modalities, "normalisation": d.normalisation, "sampling": d.sampling,
        "size": cfg.model.input_size if d.sampling == "slices" else [d.patch_size, d.background],
        "brain": [BRAIN_THRESHOLD, MIN_BRAIN_FRACTION],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def preprocess_subject(cfg: Config, subject: Subject, images, label) -> tuple[SubjectRecord, np.ndarray, np.ndarray]:
    """One subject's cached arrays from its checked volumes (canonical ``[X, Y, Z]``).

    Returns ``(record, x, labels)``: ``x`` ``(Z, H, W, C)`` float32 (resized to ``model.input_size`` for
    slices, native in-plane size for patches), ``labels`` ``(Z, H, W)`` uint8 with bit 0 = lesion and,
    for patches, bit 1 = brain, bit 2 = a centre whose ``data.patch_size`` patch holds no lesion (and
    is brain, unless ``data.background`` is ``any``).
    """
    channels = [v.data for v in images]
    lesion = (label.data == 1).astype(np.float32)
    brain = pp.normalise(channels[0], "max").numpy() > BRAIN_THRESHOLD
    brain_fraction = brain.mean(axis=(0, 1))
    if cfg.data.sampling == "slices":
        size = tuple(cfg.model.input_size)
        x = pp.preprocess_volume(channels, size, cfg.data.normalisation).numpy()
        labels = pp.resize_masks(pp.volume_to_slices(lesion), size).numpy()[..., 0].astype(np.uint8)
        brain_count = brain.sum(axis=(0, 1))
    else:
        stacked = tf.stack([pp.normalise(c, cfg.data.normalisation) for c in channels], axis=-1)
        x = pp.volume_to_slices(stacked).numpy()
        brain_slices = np.transpose(brain, (2, 0, 1)) & (brain_fraction >= MIN_BRAIN_FRACTION)[:, None, None]
        lesion_slices = np.transpose(lesion, (2, 0, 1)) > 0
        # A patch centred at r spans rows r - h//2 .. r - h//2 + h - 1: exactly the window of a size-h
        # maximum filter, so this marks every centre whose patch would hold a lesion voxel.
        h, w = cfg.data.patch_size
        near_lesion = ndimage.maximum_filter(lesion_slices, size=(1, h, w), mode="constant", cval=0)
        centre = ~near_lesion if cfg.data.background == "any" else brain_slices & ~near_lesion
        labels = (lesion_slices * LESION_BIT + brain_slices * BRAIN_BIT + centre * BACKGROUND_BIT).astype(np.uint8)
        brain_count = brain_slices.sum(axis=(1, 2))
    record = SubjectRecord(
        subject=subject.subject, site=subject.site, x_shape=tuple(int(s) for s in x.shape),
        lesion=((labels & LESION_BIT) > 0).sum(axis=(1, 2)).astype(np.int64),
        brain=np.asarray(brain_count, np.int64), brain_fraction=np.asarray(brain_fraction, np.float64),
        lesion_voxels_native=int(lesion.sum()),
        background=((labels & BACKGROUND_BIT) > 0).sum(axis=(1, 2)).astype(np.int64),
    )
    return record, x.astype(np.float32), labels


def check_cohort(cfg: Config, subjects: list[Subject], split: dict, cache=None) -> dict[str, SubjectRecord]:
    """Validate the cohort before any training; with ``cache``, also preprocess each subject into it.

    Every training and validation subject is read once with :func:`~wmhkeras.data.datasets.check_subject`
    (files exist and parse, all on the FLAIR's grid, a label is present); hold-out subjects only need
    their files to exist here (they are read when evaluated). A subject already in a
    :class:`ShardCache` under the same key (same files, sizes, modification times and settings) was
    validated when it was cached and is not read again.

    Returns:
        ``{subject id: SubjectRecord}`` for the training and validation subjects.

    Raises:
        InputError: an id of the split is not in ``subjects``; a file is missing or corrupt; grids
            differ; a label is missing; the training subjects contain no lesion voxel (label 1), or
            none that survives resizing to ``model.input_size``.
    """
    by_id = {s.subject: s for s in subjects}
    for key in SPLIT_KEYS:
        unknown = [sid for sid in split.get(key, []) if sid not in by_id]
        if unknown:
            raise InputError(f"split: {key} lists {len(unknown)} subject(s) not in the dataset, e.g. {unknown[0]!r}")
    if not split.get("train"):
        raise InputError("split: the training set is empty")
    for sid in split.get("holdout", []):
        for path in _subject_files(cfg, by_id[sid]):
            if not Path(path).is_file():
                raise InputError(f"{path}: file not found (hold-out subject {sid})")

    records: dict[str, SubjectRecord] = {}
    used = list(split["train"]) + list(split.get("validation", []))
    for i, sid in enumerate(used):
        subject = by_id[sid]
        key = _cache_key(cfg, subject)
        record = cache.lookup(subject, key) if cache is not None else None
        if record is None:
            images, label = check_subject(subject, cfg.data.modalities, need_label=True)
            if cache is None:
                record = SubjectRecord(sid, subject.site, tuple(images[0].data.shape) + (len(images),),
                                       np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                                       int((label.data == 1).sum()))
            else:
                record, x, labels = preprocess_subject(cfg, subject, images, label)
                cache.put(record, key, x, labels)
            del images, label
        records[sid] = record
        log.debug("checked %s (%d/%d): %d lesion voxels", sid, i + 1, len(used), record.lesion_voxels_native)
        if (i + 1) % max(1, len(used) // 10) == 0:
            log.info("checked %d of %d subjects", i + 1, len(used))

    train_lesion = sum(records[s].lesion_voxels_native for s in split["train"])
    if train_lesion == 0:
        raise InputError(
            f"the {len(split['train'])} training subjects contain no lesion voxel (label 1) in their label "
            "files; training needs lesions (check the label files, or the split)"
        )
    if cache is not None and sum(int(records[s].lesion.sum()) for s in split["train"]) == 0:
        raise InputError(
            f"the training subjects' {train_lesion} lesion voxels all vanish when resized to "
            f"model.input_size {cfg.model.input_size}; use a larger input size or sampling: patches"
        )
    log.info("cohort checked: %d training, %d validation subjects, %d training lesion voxels",
             len(split["train"]), len(split.get("validation", [])), train_lesion)
    return records


def estimate_cache_bytes(cfg: Config, subjects: list[Subject]) -> int:
    """Bytes of preprocessed data for ``subjects``, from the NIfTI headers only (no voxel is read)."""
    channels = len(cfg.data.modalities)
    total = 0
    for s in subjects:
        try:
            img = nib.load(str(s.flair))
        except Exception as exc:
            raise InputError(f"{s.flair}: not a readable NIfTI file ({exc.__class__.__name__}: {exc})") from None
        shape = img.shape[:3]
        axes = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)
        canonical = [0, 0, 0]
        for native_axis, out_axis in enumerate(axes):
            canonical[out_axis] = shape[native_axis]
        if cfg.data.sampling == "slices":
            h, w = cfg.model.input_size
            total += canonical[2] * h * w * (4 * channels + 1)
        else:
            total += int(np.prod(canonical)) * (4 * channels + 1)
    return total


# === Sampling ===


class _Pool:
    """Weighted ``(subject, slice)`` entries, optionally grouped by site (sites equally likely).

    A draw picks an entry with probability proportional to its weight, and an offset uniform in
    ``[0, weight)``: with weights = voxel counts, the offset-th voxel of the slice is a voxel drawn
    uniformly from the whole pool.
    """

    def __init__(self, rec, k, weight, site, balance_sites: bool):
        self.rec = np.asarray(rec, np.int64)
        self.k = np.asarray(k, np.int64)
        self.weight = np.asarray(weight, np.int64)
        keep = self.weight > 0
        self.rec, self.k, self.weight, site = self.rec[keep], self.k[keep], self.weight[keep], np.asarray(site)[keep]
        groups = sorted(set(site.tolist())) if balance_sites else [None]
        self.groups = []
        for g in groups:
            idx = np.flatnonzero(site == g) if g is not None else np.arange(len(self.rec))
            if len(idx):
                self.groups.append((idx, np.cumsum(self.weight[idx])))

    def __len__(self) -> int:
        return len(self.rec)

    def draw(self, rng: np.random.Generator, n: int):
        group = rng.integers(len(self.groups), size=n)
        pick = np.zeros(n, np.int64)
        offset = np.zeros(n, np.int64)
        for g, (idx, cum) in enumerate(self.groups):
            sel = np.flatnonzero(group == g)
            r = rng.integers(cum[-1], size=len(sel))
            j = np.searchsorted(cum, r, side="right")
            pick[sel] = idx[j]
            offset[sel] = r - (cum[j] - self.weight[idx[j]])
        return self.rec[pick], self.k[pick], offset


def _crop(a: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """``a[r0:r0+h, c0:c0+w]`` with zeros where the window leaves ``a``."""
    out = np.zeros((h, w) + a.shape[2:], a.dtype)
    rs, re_ = max(r0, 0), min(r0 + h, a.shape[0])
    cs, ce = max(c0, 0), min(c0 + w, a.shape[1])
    if rs < re_ and cs < ce:
        out[rs - r0:re_ - r0, cs - c0:ce - c0] = a[rs:re_, cs:ce]
    return out


class Sampler:
    """Builds batch ``b`` of unaugmented ``(x, mask)`` from ``(seed, b)`` alone (NumPy, thread-safe).

    Per sample: with probability ``lesion_fraction`` a lesion sample (a slice with lesion; or a patch
    centred on a lesion voxel drawn uniformly), else a sample without lesion: a lesion-free slice with
    brain, or a patch centred on a brain voxel whose patch holds no lesion (``background: brain``), or
    the same from anywhere (``any``). With ``lesion_fraction: null`` slices (patch centres) are drawn
    uniformly from all brain slices (brain voxels), or from everything with ``background: any`` - the
    paper's uniform sampling.
    ``balance_sites``: the site is drawn first, uniformly.
    """

    def __init__(self, cfg: Config, cache, records: list[SubjectRecord], seed: int):
        d = cfg.data
        self.cache = cache
        self.records = records
        self.subjects = [r.subject for r in records]
        self.seed = int(seed)
        self.batch_size = cfg.train.batch_size
        self.lesion_fraction = d.lesion_fraction
        self.patches = d.sampling == "patches"
        self.patch_size = tuple(d.patch_size)
        self.any_background = d.background == "any"
        rec, k, site, lesion, brain, has_brain, area, background = [], [], [], [], [], [], [], []
        for i, r in enumerate(records):
            z = r.x_shape[0]
            rec.append(np.full(z, i))
            k.append(np.arange(z))
            site.append(np.full(z, r.site, dtype=object))
            lesion.append(r.lesion)
            brain.append(r.brain)
            has_brain.append(r.has_brain)
            area.append(np.full(z, r.x_shape[1] * r.x_shape[2]))
            background.append(r.background)
        rec, k, site = np.concatenate(rec), np.concatenate(k), np.concatenate(site)
        lesion, brain, has_brain, area = map(np.concatenate, (lesion, brain, has_brain, area))
        background = np.concatenate(background) if self.patches else None
        bal = d.balance_sites
        if self.patches:
            # Weights are voxel counts: centres uniform over lesion / brain / all voxels.
            self.pools = {
                _LESION: _Pool(rec, k, lesion, site, bal),
                _OTHER: _Pool(rec, k, background, site, bal),
                _UNIFORM: _Pool(rec, k, area if self.any_background else brain, site, bal),
            }
        else:
            allowed = np.ones_like(has_brain) if self.any_background else (has_brain | (lesion > 0))
            self.pools = {
                _LESION: _Pool(rec, k, lesion > 0, site, bal),
                _OTHER: _Pool(rec, k, allowed & (lesion == 0), site, bal),
                _UNIFORM: _Pool(rec, k, allowed, site, bal),
            }
        if self.lesion_fraction is not None and self.lesion_fraction < 1 and not len(self.pools[_OTHER]):
            log.warning("no lesion-free training %s to draw background samples from; drawing uniformly",
                        "patch" if self.patches else "slice")
            self.pools[_OTHER] = self.pools[_UNIFORM]

    def plan(self, b: int):
        """Categories and ``(record, slice, offset)`` of the samples of batch ``b``."""
        rng = np.random.default_rng([self.seed, int(b)])
        n = self.batch_size
        if self.lesion_fraction is None:
            category = np.full(n, _UNIFORM)
        else:
            category = np.where(rng.random(n) < self.lesion_fraction, _LESION, _OTHER)
        rec, k, off = (np.zeros(n, np.int64) for _ in range(3))
        for c in (_LESION, _OTHER, _UNIFORM):
            sel = np.flatnonzero(category == c)
            if len(sel):
                rec[sel], k[sel], off[sel] = self.pools[c].draw(rng, len(sel))
        return category, rec, k, off

    def _centre(self, labels: np.ndarray, category: int, offset: int) -> tuple[int, int]:
        """The ``offset``-th candidate centre of the slice (row, column)."""
        if category == _UNIFORM and self.any_background:
            flat = offset
        else:
            bit = {_LESION: LESION_BIT, _OTHER: BACKGROUND_BIT, _UNIFORM: BRAIN_BIT}[category]
            flat = np.flatnonzero(labels & bit)[offset]
        return divmod(int(flat), labels.shape[1])

    def sample(self, category: int, rec: int, k: int, off: int):
        """One unaugmented sample ``(x (H, W, C), mask (H, W, 1))``."""
        x, labels = self.cache.read(self.subjects[rec], int(k))
        mask = (labels & LESION_BIT).astype(np.float32)[..., None]
        if not self.patches:
            return x, mask
        h, w = self.patch_size
        r, c = self._centre(labels, category, int(off))
        return _crop(x, r - h // 2, c - w // 2, h, w), _crop(mask, r - h // 2, c - w // 2, h, w)

    def batch(self, b) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``b``: ``x`` ``(batch, H, W, C)`` float32 and ``mask`` ``(batch, H, W, 1)`` float32."""
        category, rec, k, off = self.plan(int(b))
        pairs = [self.sample(category[i], rec[i], k[i], off[i]) for i in range(len(category))]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# === Validation and preview ===


def _validation_entries(cfg: Config, records: list[SubjectRecord]) -> list[tuple[int, int, int, int]]:
    """``(record, slice, row0, col0)`` of every brain slice (patches: every tile with brain), in order."""
    entries = []
    for i, r in enumerate(records):
        for k in np.flatnonzero(r.has_brain):
            if cfg.data.sampling == "slices":
                entries.append((i, int(k), 0, 0))
                continue
            h, w = cfg.data.patch_size
            _, height, width, _ = r.x_shape
            entries.extend((i, int(k), r0, c0) for r0 in range(0, height, h) for c0 in range(0, width, w))
    return entries


def _read_entries(cfg: Config, cache, records, entries) -> tuple[np.ndarray, np.ndarray]:
    xs, masks = [], []
    for i, k, r0, c0 in entries:
        x, labels = cache.read(records[i].subject, k)
        mask = (labels & LESION_BIT).astype(np.float32)[..., None]
        if cfg.data.sampling == "patches":
            h, w = cfg.data.patch_size
            x, mask = _crop(x, r0, c0, h, w), _crop(mask, r0, c0, h, w)
        xs.append(x)
        masks.append(mask)
    return np.stack(xs), np.stack(masks)


def _drop_empty_tiles(cache, records, entries, patch_size):
    """Patches mode: keep the validation tiles that contain brain."""
    kept, h, w = [], *patch_size
    last, labels = None, None
    for i, k, r0, c0 in entries:
        if (i, k) != last:  # tiles of one slice come together: read its labels once
            labels, last = cache.read_labels(records[i].subject, k), (i, k)
        if (labels[r0:r0 + h, c0:c0 + w] & BRAIN_BIT).any():
            kept.append((i, k, r0, c0))
    return kept


def _preview_entries(cfg: Config, cache, records: list[SubjectRecord]) -> list[tuple[int, int, int, int]]:
    """Up to :data:`PREVIEW_SIZE` slices with lesion, the largest first, one subject after another."""
    per_subject = []
    for i, r in enumerate(records):
        order = [int(k) for k in np.argsort(-r.lesion, kind="stable") if r.lesion[k] > 0]
        per_subject.append([(i, k) for k in order])
    picked = []
    for rank in range(max((len(p) for p in per_subject), default=0)):
        picked.extend(p[rank] for p in per_subject if rank < len(p))
    picked = picked[: min(PREVIEW_SIZE, cfg.train.batch_size)]
    entries = []
    for i, k in picked:
        if cfg.data.sampling == "slices":
            entries.append((i, k, 0, 0))
        else:  # a patch around the middle lesion voxel of the slice
            labels = cache.read_labels(records[i].subject, k)
            voxels = np.flatnonzero(labels & LESION_BIT)
            r, c = divmod(int(voxels[len(voxels) // 2]), labels.shape[1])
            h, w = cfg.data.patch_size
            entries.append((i, k, r - h // 2, c - w // 2))
    return entries


def _pack(x, mask):
    """``y`` ``(batch, H, W, 2)``: channel 0 the mask, channel 1 the FLAIR channel of ``x``."""
    return tf.concat([mask, x[..., :1]], axis=-1)


# === The datasets ===


def choose_cache_mode(cfg: Config, subjects: list[Subject]) -> str:
    """``memory`` or ``shards``: ``data.cache``, or for ``auto`` memory below ``data.memory_limit_gb``."""
    if cfg.data.cache != "auto":
        return cfg.data.cache
    estimate = estimate_cache_bytes(cfg, subjects)
    mode = "memory" if estimate <= cfg.data.memory_limit_gb * 1024**3 else "shards"
    log.info("cache auto: %.2f GB of preprocessed data (limit %.2f GB) -> %s", estimate / 1024**3,
             cfg.data.memory_limit_gb, mode)
    return mode


def build_datasets(cfg: Config, subjects: list[Subject], split: dict, cache_dir: str | Path | None = None) -> TrainingData:
    """Check the cohort, preprocess it once and return the training and validation datasets.

    Args:
        cfg: the run config (``data``, ``model.input_size``, ``augment``, ``train.batch_size``/``seed``).
        subjects: the cohort; ``split``: ``{"train", "validation", "holdout"}`` lists of subject ids.
        cache_dir: the shard folder for ``shards`` mode (reused across runs with the same inputs);
            None puts the shards in a temporary folder removed at exit.

    Returns:
        :class:`TrainingData`. The first training batch depends only on the config and ``train.seed``.
    """
    d = cfg.data
    by_id = {s.subject: s for s in subjects}
    train_ids = list(split.get("train", []))
    val_ids = list(split.get("validation", []))
    used = [by_id[s] for s in train_ids + val_ids if s in by_id]
    mode = choose_cache_mode(cfg, used)
    if mode == "memory":
        cache = MemoryCache()
    else:
        if cache_dir is None:
            cache_dir = tempfile.mkdtemp(prefix="wmhkeras-shards-")
            atexit.register(shutil.rmtree, cache_dir, True)
        cache = ShardCache(cache_dir)
        log.info("shards in %s", cache_dir)
    augmenter = Augmenter(cfg.augment, cfg.train.seed, d.normalisation)  # refuses bad settings before reading
    records = check_cohort(cfg, subjects, split, cache=cache)
    train_records = [records[s] for s in train_ids]
    val_records = [records[s] for s in val_ids]
    channels = len(d.modalities)
    height, width = (cfg.model.input_size if d.sampling == "slices" else d.patch_size)
    batch = cfg.train.batch_size

    # === Training: infinite, batch b a pure function of (seed, b) ===
    sampler = Sampler(cfg, cache, train_records, cfg.train.seed)
    smoothing = d.label_smoothing

    def train_batch(b):
        x, mask = tf.numpy_function(sampler.batch, [b], (tf.float32, tf.float32), stateful=False)
        x = tf.ensure_shape(x, (batch, height, width, channels))
        mask = tf.ensure_shape(mask, (batch, height, width, 1))
        x, mask = augmenter(x, mask, b)
        target = pp.soft_labels(mask, *smoothing) if smoothing is not None else mask
        return x, _pack(x, target)

    options = tf.data.Options()
    options.deterministic = True
    train = (tf.data.Dataset.counter()
             .map(train_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
             .prefetch(tf.data.AUTOTUNE).with_options(options))

    # === Validation: finite, in subject / slice order, hard labels ===
    validation, n_val_batches = None, 0
    table = np.zeros((0, 4), np.int64)
    if val_records:
        entries = _validation_entries(cfg, val_records)
        if d.sampling == "patches":
            entries = _drop_empty_tiles(cache, val_records, entries, d.patch_size)
        table = np.asarray(entries, np.int64).reshape(-1, 4)
        n_val_batches = int(np.ceil(len(table) / batch))
        if not n_val_batches:
            log.warning("the validation subjects have no slice with brain: training without validation")

        def read_val(v):
            rows = table[int(v) * batch:(int(v) + 1) * batch]
            return _read_entries(cfg, cache, val_records, [tuple(int(a) for a in row) for row in rows])

        def val_batch(v):
            x, mask = tf.numpy_function(read_val, [v], (tf.float32, tf.float32), stateful=False)
            x = tf.ensure_shape(x, (None, height, width, channels))
            mask = tf.ensure_shape(mask, (None, height, width, 1))
            return x, _pack(x, mask)

        if n_val_batches:
            validation = (tf.data.Dataset.range(n_val_batches)
                          .map(val_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
                          .prefetch(tf.data.AUTOTUNE).with_options(options))

    # === Preview for TensorBoard ===
    # Validation slices with lesion; training slices when the validation subjects have none (the
    # training subjects always have lesion: check_cohort), so the preview is never empty.
    preview_records = val_records if any(r.lesion.any() for r in val_records) else train_records
    px, pmask = _read_entries(cfg, cache, preview_records, _preview_entries(cfg, cache, preview_records))
    preview = (px, np.concatenate([pmask, px[..., :1]], axis=-1))

    stats = {
        "train_subjects": len(train_records), "validation_subjects": len(val_records),
        "train_slices": sum(r.x_shape[0] for r in train_records),
        "train_lesion_slices": int(sum(int((r.lesion > 0).sum()) for r in train_records)),
        "train_brain_slices": int(sum(int(r.has_brain.sum()) for r in train_records)),
        "train_lesion_voxels": int(sum(int(r.lesion.sum()) for r in train_records)),
        "validation_samples": int(len(table)),
        "sites": {s: sum(r.site == s for r in train_records) for s in sorted({r.site for r in train_records})},
        "cache_bytes": int(cache.nbytes),
    }
    log.info("training data: %s", stats)
    return TrainingData(
        train=train, validation=validation, train_subjects=train_ids, validation_subjects=val_ids,
        sites=sorted({r.site for r in train_records}), cache_mode=cache.mode, preview=preview,
        input_shape=(int(height), int(width), channels), validation_batches=n_val_batches,
        cache_dir=Path(cache_dir) if mode == "shards" else None, stats=stats,
    )
