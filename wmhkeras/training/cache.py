"""The preprocessed-subject cache of the training pipeline: RAM (``memory``) or ``.npy`` shards (``shards``).

A subject is preprocessed once (:func:`wmhkeras.training.cohort.preprocess_subject`) into ``x`` ``(Z, H, W,
C)`` float32 and ``labels`` ``(Z, H, W)`` uint8 bit masks (:data:`LESION_BIT`, :data:`BRAIN_BIT`,
:data:`BACKGROUND_BIT`), described by a :class:`CachedSubject`. The sampler and the validation reader
fetch single slices back with ``cache.read(subject, k)``. ``shards`` keeps each subject on disk under a
key (:func:`cache_key`) that changes with its files and the preprocessing settings, and reads slices with
``os.pread``, so the process holds only the batches in flight, whatever the cohort size.

Definitions (see also ``docs/data_pipeline.md``):

* brain: voxels whose max-normalised FLAIR exceeds :data:`BRAIN_THRESHOLD` (0.1, as the z-score
  normalisation's brain mask); a slice "contains brain" when at least :data:`MIN_BRAIN_FRACTION` of
  its voxels are brain, which excludes empty slices with only noise specks. On data that is not
  skull-stripped this is the head, not only the brain: what it excludes is empty air.
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

from wmhkeras.config import Config
from wmhkeras.data.datasets import Subject
from wmhkeras.data.preprocessing import BRAIN_THRESHOLD, input_channels, resample_mode
from wmhkeras.errors import InputError
from wmhkeras.io.files import atomic_path, atomic_write_json
from wmhkeras.io.nifti import canonical_grid

log = logging.getLogger(__name__)

# A voxel is brain when its max-normalised FLAIR is above BRAIN_THRESHOLD (wmhkeras.data.preprocessing's,
# the zscore normalisation's mask).
#: A slice contains brain when at least this fraction of its voxels is brain.
MIN_BRAIN_FRACTION = 0.01
#: Bumped whenever the cached arrays would change for the same inputs and settings.
CACHE_VERSION = 1
#: Bits of the stored uint8 label slices: lesion, brain, (patches) a valid background patch centre, and
#: (``data.hard_negatives``) a background centre of lesion-bright normal tissue.
LESION_BIT, BRAIN_BIT, BACKGROUND_BIT, HARD_BIT = 1, 2, 4, 8


@dataclass
class CachedSubject:
    """One preprocessed subject: ``x`` ``(Z, H, W, C)`` float32 and labels ``(Z, H, W)`` uint8 (bits).

    ``x_shape``: the stored, resampled size (``data.resample``), which may differ between subjects
    (``spacing``, ``none``). ``lesion``/``brain``/``background``: per-slice voxel counts at the stored
    resolution (slices mode: lesion counted inside the ``model.input_size`` canvas the sample is cut
    to, brain at native resolution, where it only decides which slices contain brain; background:
    patches mode, the voxels that can centre a lesion-free background patch; ``hard``: those of them that
    are lesion-bright normal tissue, with ``data.hard_negatives``, else empty). ``brain_fraction``: the
    share of brain voxels of each native slice.
    """

    subject: str
    site: str
    x_shape: tuple[int, int, int, int]
    lesion: np.ndarray
    brain: np.ndarray
    brain_fraction: np.ndarray
    lesion_voxels_native: int
    background: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: A painted copy of a training subject (lesion synthesis), not a real scan.
    painted: bool = False
    hard: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def has_brain(self) -> np.ndarray:
        return self.brain_fraction >= MIN_BRAIN_FRACTION

    def meta(self) -> dict:
        return {
            "subject": self.subject, "site": self.site, "x_shape": list(self.x_shape),
            "lesion": self.lesion.tolist(), "brain": self.brain.tolist(),
            "brain_fraction": self.brain_fraction.tolist(), "lesion_voxels_native": self.lesion_voxels_native,
            "background": self.background.tolist(), "painted": self.painted, "hard": self.hard.tolist(),
        }

    @classmethod
    def from_meta(cls, m: dict) -> CachedSubject:
        return cls(m["subject"], m["site"], tuple(m["x_shape"]), np.asarray(m["lesion"], np.int64),
                   np.asarray(m["brain"], np.int64), np.asarray(m["brain_fraction"], np.float64),
                   int(m["lesion_voxels_native"]), np.asarray(m["background"], np.int64), bool(m.get("painted", False)),
                   np.asarray(m.get("hard", []), np.int64))


class MemoryCache:
    """Preprocessed subjects kept in RAM."""

    mode = "memory"

    def __init__(self):
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def lookup(self, subject: Subject, key: str) -> Optional[CachedSubject]:
        return None

    def put(self, record: CachedSubject, key: str, x: np.ndarray, labels: np.ndarray) -> None:
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

    def lookup(self, subject: Subject, key: str) -> Optional[CachedSubject]:
        meta_path = self._dir(subject.subject, key) / "meta.json"
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != key:
                return None
            record = CachedSubject.from_meta(meta)
            self._register(record.subject, self._dir(subject.subject, key))
        except (OSError, ValueError, KeyError):
            log.warning("%s: unreadable shard, preprocessing %s again", meta_path.parent, subject.subject)
            return None
        return record

    def put(self, record: CachedSubject, key: str, x: np.ndarray, labels: np.ndarray) -> None:
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


# === Keys, size estimate, choice of cache ===


def subject_files(cfg: Config, subject: Subject) -> list[Path]:
    """The files of ``subject`` that training reads: the configured modalities and the label (if any)."""
    return [subject.modality(m) for m in cfg.data.modalities] + ([subject.label] if subject.label else [])


def cache_key(cfg: Config, subject: Subject) -> str:
    """SHA-256 of the subject's files (resolved path, size, modification time) and the preprocessing settings."""
    files = []
    for path in subject_files(cfg, subject):
        try:
            st = Path(path).stat()
        except OSError:
            raise InputError(f"{path}: file not found (subject {subject.subject})") from None
        files.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    d = cfg.data
    resample = resample_mode(d.resample, d.sampling)
    settings = {
        "version": CACHE_VERSION, "subject": subject.subject, "site": subject.site, "files": files,
        "modalities": d.modalities, "normalisation": d.normalisation, "sampling": d.sampling,
        # slices: the fixed size or the canvas (lesion counts); patches: the patch labels (and a fixed size)
        "size": cfg.model.input_size if d.sampling == "slices" else [d.patch_size, d.background],
        "resample": [resample, d.spacing if resample == "spacing" else None,
                     cfg.model.input_size if resample == "fixed" else None],
        "context": d.context_slices,
        "brain": [BRAIN_THRESHOLD, MIN_BRAIN_FRACTION],
    }
    if d.sampling == "patches" and d.hard_negatives.share:
        settings["hard_negatives"] = d.hard_negatives.brightest
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def estimate_cache_bytes(cfg: Config, subjects: list[Subject]) -> int:
    """Bytes of preprocessed data for ``subjects``, from the NIfTI headers only (no voxel is read).

    Exact for every ``data.resample`` mode: the resampled in-plane size is computed from the header's
    grid and voxel size as :meth:`~wmhkeras.data.preprocessing.Resampling.grid` does.
    """
    d = cfg.data
    channels = input_channels(len(d.modalities), d.context_slices)
    mode = resample_mode(d.resample, d.sampling)
    total = 0
    for s in subjects:
        try:
            img = nib.load(str(s.flair))
        except Exception as exc:
            raise InputError(f"{s.flair}: not a readable NIfTI file ({exc.__class__.__name__}: {exc})") from None
        shape, voxel = canonical_grid(img)
        if mode == "fixed":
            h, w = cfg.model.input_size
        elif mode == "spacing":
            h, w = (max(int(np.round(shape[i] * voxel[i] / d.spacing[i])), 1) for i in (0, 1))
        else:
            h, w = shape[:2]
        total += shape[2] * int(h) * int(w) * (4 * channels + 1)
    return total


def choose_cache_mode(cfg: Config, subjects: list[Subject]) -> str:
    """``memory`` or ``shards``: ``data.cache``, or for ``auto`` memory below ``data.memory_limit_gb``."""
    if cfg.data.cache != "auto":
        return cfg.data.cache
    estimate = estimate_cache_bytes(cfg, subjects)
    mode = "memory" if estimate <= cfg.data.memory_limit_gb * 1024**3 else "shards"
    log.info("cache auto: %.2f GB of preprocessed data (limit %.2f GB) -> %s", estimate / 1024**3,
             cfg.data.memory_limit_gb, mode)
    return mode


def open_cache(cfg: Config, subjects: list[Subject], cache_dir: str | Path | None = None) -> MemoryCache | ShardCache:
    """The cache for ``subjects`` (:func:`choose_cache_mode`): a :class:`ShardCache` in ``cache_dir``, or
    in a temporary folder removed at exit when ``cache_dir`` is None; else a :class:`MemoryCache`."""
    if choose_cache_mode(cfg, subjects) == "memory":
        return MemoryCache()
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="wmhkeras-shards-")
        atexit.register(shutil.rmtree, cache_dir, True)
    log.info("shards in %s", cache_dir)
    return ShardCache(cache_dir)
