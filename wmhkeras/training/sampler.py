"""The seeded, imbalance-aware sampler: batch ``b`` of unaugmented ``(x, mask)`` from ``(seed, b)`` alone.

For each sample of a batch it draws whether it holds lesion (probability ``data.lesion_fraction``), the
site (with ``balance_sites``), the subject and slice, and for patches the centre. Batch ``b`` is therefore
the same on every run with the same seed, whatever the parallelism of ``tf.data``. NumPy only.
"""

from __future__ import annotations

import logging

import numpy as np

from wmhkeras.config import Config
from wmhkeras.training.cache import BACKGROUND_BIT, BRAIN_BIT, HARD_BIT, LESION_BIT, CachedSubject

log = logging.getLogger(__name__)

# Sample categories drawn by the sampler: _PAINTED is a lesion sample from a painted copy (lesion synthesis),
# _HARD a lesion-free patch centred on lesion-bright normal tissue (hard negatives).
_LESION, _OTHER, _UNIFORM, _PAINTED, _HARD = 0, 1, 2, 3, 4


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


def crop(a: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """``a[r0:r0+h, c0:c0+w]`` with zeros where the window leaves ``a``."""
    out = np.zeros((h, w) + a.shape[2:], a.dtype)
    rs, re_ = max(r0, 0), min(r0 + h, a.shape[0])
    cs, ce = max(c0, 0), min(c0 + w, a.shape[1])
    if rs < re_ and cs < ce:
        out[rs - r0:re_ - r0, cs - c0:ce - c0] = a[rs:re_, cs:ce]
    return out


def centre_offset(n: int, size: int) -> int:
    """The first row (column) of a ``size`` window centred on ``n`` rows: negative when it pads.

    Padding puts ``(size - n) // 2`` zeros before, as :class:`~wmhkeras.data.preprocessing.Resampling`
    pads slices for segmentation; cropping drops ``(n - size) // 2`` rows before.
    """
    return (n - size) // 2 if n >= size else -((size - n) // 2)


def fit_canvas(a: np.ndarray, size) -> np.ndarray:
    """``a`` ``(H, W, ...)`` centred on a ``size = (h, w)`` canvas: zero-padded, or centre-cropped when larger.

    ``a`` itself when it already has that size (``data.resample: fixed``, whose slices are the canvas).
    """
    h, w = (int(v) for v in size)
    if a.shape[:2] == (h, w):
        return a
    return crop(a, centre_offset(a.shape[0], h), centre_offset(a.shape[1], w), h, w)


class Sampler:
    """Builds batch ``b`` of unaugmented ``(x, mask)`` from ``(seed, b)`` alone (NumPy, thread-safe).

    Whole slices (``sampling: slices``) are centred on the ``model.input_size`` canvas
    (:func:`fit_canvas`): with ``data.resample`` ``spacing`` or ``none`` slices differ in size between
    subjects; in ``fixed`` mode they already have that size.

    Per sample: with probability ``lesion_fraction`` a lesion sample (a slice with lesion; or a patch
    holding a lesion voxel drawn uniformly, at a uniformly random position of the patch with
    ``lesion_position: random``, at its centre with ``centre``), else a sample without lesion: a lesion-free slice with
    brain, or a patch centred on a brain voxel whose patch holds no lesion (``background: brain``), or
    the same from anywhere (``any``). With ``lesion_fraction: null`` slices (patch centres) are drawn
    uniformly from all brain slices (brain voxels), or from everything with ``background: any`` - the
    paper's uniform sampling.
    ``balance_sites``: the site is drawn first, uniformly.

    Lesion synthesis (records with ``painted=True``, :mod:`~wmhkeras.training.lesion_synthesis`): a lesion
    sample comes from the painted copies with probability ``data.lesion_synthesis.share`` (drawn after
    the category); every other sample comes from the real scans, so lesion-free samples are always real
    tissue, and a batch that drew none gets its last sample turned into one (when ``lesion_fraction`` < 1).

    Hard negatives (``data.hard_negatives.share`` > 0, patches): each lesion-free patch is, with that
    probability, re-centred on lesion-bright normal tissue of a real scan
    (:data:`~wmhkeras.training.cache.HARD_BIT`), uniformly over those voxels, instead of on any brain
    voxel. Those draws come from a random stream of their own (``(seed, b, 4)``), so every other sample of
    the batch is the one a run without hard negatives draws: arms with and without them are paired.
    """

    def __init__(self, cfg: Config, cache, records: list[CachedSubject], seed: int):
        d = cfg.data
        self.cache = cache
        self.records = records
        self.subjects = [r.subject for r in records]
        self.seed = int(seed)
        self.batch_size = cfg.train.batch_size
        self.lesion_fraction = d.lesion_fraction
        self.patches = d.sampling == "patches"
        self.patch_size = tuple(d.patch_size)
        self.canvas = tuple(cfg.model.input_size)
        self.any_background = d.background == "any"
        self.random_position = self.patches and d.lesion_position == "random"
        self.share = d.lesion_synthesis.share if any(r.painted for r in records) else 0.0
        self.hard_share = d.hard_negatives.share if self.patches and self.lesion_fraction is not None else 0.0
        real = np.concatenate([np.full(r.x_shape[0], not r.painted) for r in records])
        rec, k, site, lesion, brain, has_brain, area, background, hard = [], [], [], [], [], [], [], [], []
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
            hard.append(r.hard if len(r.hard) == z else np.zeros(z, np.int64))
        rec, k, site = np.concatenate(rec), np.concatenate(k), np.concatenate(site)
        lesion, brain, has_brain, area = map(np.concatenate, (lesion, brain, has_brain, area))
        background = np.concatenate(background) if self.patches else None
        hard = np.concatenate(hard)
        bal = d.balance_sites
        if self.patches:
            # Weights are voxel counts: centres uniform over lesion / brain / all voxels.
            self.pools = {
                _LESION: _Pool(rec, k, lesion * real, site, bal),
                _OTHER: _Pool(rec, k, background * real, site, bal),
                _UNIFORM: _Pool(rec, k, (area if self.any_background else brain) * real, site, bal),
                _PAINTED: _Pool(rec, k, lesion * ~real, site, bal),
                _HARD: _Pool(rec, k, hard * real, site, bal),
            }
        else:
            allowed = np.ones_like(has_brain) if self.any_background else (has_brain | (lesion > 0))
            self.pools = {
                _LESION: _Pool(rec, k, (lesion > 0) & real, site, bal),
                _OTHER: _Pool(rec, k, allowed & (lesion == 0) & real, site, bal),
                _UNIFORM: _Pool(rec, k, allowed & real, site, bal),
                _PAINTED: _Pool(rec, k, (lesion > 0) & ~real, site, bal),
            }
        if self.share and not len(self.pools[_PAINTED]):
            log.warning("the painted copies hold no lesion sample; training on the real scans only")
            self.share = 0.0
        if self.lesion_fraction is not None and self.lesion_fraction < 1 and not len(self.pools[_OTHER]):
            log.warning("no lesion-free training %s to draw background samples from; drawing uniformly",
                        "patch" if self.patches else "slice")
            self.pools[_OTHER] = self.pools[_UNIFORM]
        if self.hard_share and not len(self.pools[_HARD]):
            log.warning("no lesion-bright normal tissue to centre hard negatives on (data.hard_negatives); "
                        "centring every lesion-free patch on any brain voxel")
            self.hard_share = 0.0

    def plan(self, b: int):
        """Categories, ``(record, slice, offset)`` and ``position`` of the samples of batch ``b``.

        ``position`` ``(n, 2)``: the row and column of the patch at which its drawn voxel sits: uniform
        over the patch for lesion patches with ``lesion_position: random`` (drawn last, so the other
        draws do not depend on it), else the patch centre ``(h // 2, w // 2)``.
        """
        rng = np.random.default_rng([self.seed, int(b)])
        n = self.batch_size
        if self.lesion_fraction is None:
            category = np.full(n, _UNIFORM)
        else:
            category = np.where(rng.random(n) < self.lesion_fraction, _LESION, _OTHER)
        if self.share:
            category = np.where((category == _LESION) & (rng.random(n) < self.share), _PAINTED, category)
            if self.lesion_fraction is not None and self.lesion_fraction < 1 and not (category == _OTHER).any():
                category[-1] = _OTHER  # real lesion-free tissue in every batch
        rec, k, off = (np.zeros(n, np.int64) for _ in range(3))
        for c in (_LESION, _OTHER, _UNIFORM, _PAINTED):
            sel = np.flatnonzero(category == c)
            if len(sel):
                rec[sel], k[sel], off[sel] = self.pools[c].draw(rng, len(sel))
        if self.hard_share:
            # From a stream of their own, after the lesion-free patches were drawn as without them: every
            # sample that does not become a hard negative is the one a run without hard negatives draws.
            hard_rng = np.random.default_rng([self.seed, int(b), _HARD])
            sel = np.flatnonzero(category == _OTHER)
            sel = sel[hard_rng.random(len(sel)) < self.hard_share]
            category[sel] = _HARD
            if len(sel):
                rec[sel], k[sel], off[sel] = self.pools[_HARD].draw(hard_rng, len(sel))
        h, w = self.patch_size
        position = np.tile(np.array([h // 2, w // 2], np.int64), (n, 1))
        if self.random_position:
            # Background patches stay centred: their lesion-free window was marked at preprocessing.
            drawn = rng.integers(0, (h, w), size=(n, 2))
            lesion = (category == _LESION) | (category == _PAINTED)
            position[lesion] = drawn[lesion]
        return category, rec, k, off, position

    def _centre(self, labels: np.ndarray, category: int, offset: int) -> tuple[int, int]:
        """The ``offset``-th candidate centre of the slice (row, column)."""
        if category == _UNIFORM and self.any_background:
            flat = offset
        else:
            bit = {_LESION: LESION_BIT, _PAINTED: LESION_BIT, _OTHER: BACKGROUND_BIT, _UNIFORM: BRAIN_BIT,
                   _HARD: HARD_BIT}[category]
            flat = np.flatnonzero(labels & bit)[offset]
        return divmod(int(flat), labels.shape[1])

    def sample(self, category: int, rec: int, k: int, off: int, position=None):
        """One unaugmented sample ``(x (H, W, C), mask (H, W, 1))``; ``position``: the ``(row, column)`` of
        the patch at which the drawn voxel sits (the centre when ``None``)."""
        x, labels = self.cache.read(self.subjects[rec], int(k))
        mask = (labels & LESION_BIT).astype(np.float32)[..., None]
        if not self.patches:
            return fit_canvas(x, self.canvas), fit_canvas(mask, self.canvas)
        h, w = self.patch_size
        r, c = self._centre(labels, category, int(off))
        pr, pc = (h // 2, w // 2) if position is None else (int(position[0]), int(position[1]))
        return crop(x, r - pr, c - pc, h, w), crop(mask, r - pr, c - pc, h, w)

    def batch(self, b) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``b``: ``x`` ``(batch, H, W, C)`` float32 and ``mask`` ``(batch, H, W, 1)`` float32."""
        category, rec, k, off, position = self.plan(int(b))
        pairs = [self.sample(category[i], rec[i], k[i], off[i], position[i]) for i in range(len(category))]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
