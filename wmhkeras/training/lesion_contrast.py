"""How bright lesions are: each real lesion's contrast measured against its surroundings, and the model
painted lesions draw their contrasts from (:class:`ContrastModel`), used by
:mod:`wmhkeras.training.lesion_synthesis`. NumPy and SciPy only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wmhkeras.errors import InputError

#: The ring of surrounding tissue a lesion's contrast is measured against: voxels 1 to 3 steps out.
RING = (1, 3)
#: 26-connectivity: the lesions of a mask are its 3D connected components.
CONNECTIVITY = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class ContrastModel:
    """Painted-lesion contrasts: a normal ``(mean, sd)`` truncated to ``[low, high]`` (brain SD units).

    With ``slope`` (``contrast: size``) the normal's mean depends on the lesion's size: ``mean + slope x
    (log10(voxels) - log_size_mean)``, the size clipped to ``log_size_range`` (the fitted lesions' sizes:
    no extrapolation), and ``sd`` is the spread around that line. ``slope`` 0: one normal for every size.
    """

    mean: float
    sd: float
    low: float
    high: float
    n_lesions: int
    slope: float = 0.0
    log_size_mean: float = 0.0
    log_size_range: tuple[float, float] = (0.0, 0.0)

    def location(self, sizes) -> np.ndarray:
        """The normal's mean for lesions of ``sizes`` voxels (``mean`` for each when ``slope`` is 0)."""
        sizes = np.asarray(sizes, np.float64)
        if not self.slope:
            return np.full(sizes.shape, self.mean)
        log_size = np.clip(np.log10(np.maximum(sizes, 1.0)), *self.log_size_range)
        return self.mean + self.slope * (log_size - self.log_size_mean)

    def draw(self, rng: np.random.Generator, n: int, sizes=None) -> np.ndarray:
        """``n`` contrasts from the truncated normal (inverse-CDF sampling: exact, no rejection loop), for
        lesions of ``sizes`` voxels when the model depends on size."""
        from scipy.stats import truncnorm

        loc = self.location(np.ones(n) if sizes is None else sizes)
        if self.sd <= 0 or self.high <= self.low:
            return loc
        a, b = (self.low - loc) / self.sd, (self.high - loc) / self.sd
        return truncnorm.ppf(rng.random(n), a, b, loc=loc, scale=self.sd)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_contrast_model(contrasts, sizes=None) -> ContrastModel:
    """The truncated normal of measured lesion contrasts: their mean and SD, truncated to their range
    (kept above zero: a painted lesion is never darker than its surroundings).

    With ``sizes`` (voxels, one per contrast) the mean follows the least-squares line of contrast on
    log10 size (:class:`ContrastModel`), and the SD is the residuals'.
    """
    c = np.asarray(contrasts, np.float64)
    keep = np.isfinite(c)
    c = c[keep]
    if c.size == 0:
        raise InputError("lesion synthesis: the training subjects' lesions gave no contrast to fit")
    low = max(float(c.min()), 1e-3)
    high = max(float(c.max()), low)
    if sizes is None:
        return ContrastModel(float(c.mean()), float(c.std()), low, high, int(c.size))
    log_size = np.log10(np.maximum(np.asarray(sizes, np.float64)[keep], 1.0))
    centred = log_size - log_size.mean()
    slope = float((centred * (c - c.mean())).sum() / (centred ** 2).sum()) if (centred ** 2).sum() > 0 else 0.0
    residual = c - c.mean() - slope * centred
    return ContrastModel(float(c.mean()), float(residual.std()), low, high, int(c.size), slope,
                         float(log_size.mean()), (float(log_size.min()), float(log_size.max())))


def brain_statistics(flair: np.ndarray, brain: np.ndarray, lesion: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the non-lesion brain: the unit of contrasts."""
    tissue = flair[brain & ~lesion]
    if tissue.size < 2:
        raise InputError("lesion synthesis: the scan has no brain outside its lesions")
    return float(tissue.mean()), float(tissue.std())


def _ring(component: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    inner = ndimage.binary_dilation(component, CONNECTIVITY, iterations=RING[0])
    outer = ndimage.binary_dilation(component, CONNECTIVITY, iterations=RING[1])
    return outer & ~inner & allowed


def lesion_contrasts(flair: np.ndarray, lesion: np.ndarray, brain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each lesion's contrast and size: ``(contrasts, voxels)``, one entry per 3D connected component.

    Contrast = (mean FLAIR over the lesion - median FLAIR over its ring of brain tissue outside every
    lesion, :data:`RING`) / standard deviation of the non-lesion brain. A lesion with no ring voxel
    (it fills its surroundings) is skipped.
    """
    lesion = lesion.astype(bool)
    _, sd = brain_statistics(flair, brain, lesion)
    labels, n = ndimage.label(lesion, CONNECTIVITY)
    contrasts, sizes = [], []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        box = _grow(box, RING[1] + 1, flair.shape)
        component = labels[box] == index
        ring = _ring(component, brain[box] & ~lesion[box])
        if not ring.any():
            continue
        contrasts.append((float(flair[box][component].mean()) - float(np.median(flair[box][ring]))) / sd)
        sizes.append(int(component.sum()))
    return np.asarray(contrasts, np.float64), np.asarray(sizes, np.int64)


def _grow(box: tuple[slice, ...], margin: int, shape) -> tuple[slice, ...]:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape, strict=True))
