"""The anatomical model of a synthetic subject: a miniature head as a tissue map, and its WMH.

A head of scalp, skull, subarachnoid CSF, a grey matter ribbon with sulci and gyri, white matter, deep
grey nuclei, an interhemispheric fissure and two arched lateral ventricles (:func:`tissue_map`), in a
head frame slightly rotated and shifted against the scanner grid (:func:`head_coordinates`); lesions
are periventricular caps and bands and deep punctate foci (:func:`place_lesions`), label 2 small
lacune-like cavities (:func:`place_cavities`). All lengths in mm; arrays ``[X, Y, Z]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from scipy import ndimage

from wmhkeras.data.synth.sites import SiteParams
from wmhkeras.errors import ConfigError


class Tissue(IntEnum):
    """Tissue classes of the anatomical model (``make_subject(..., return_tissue=True)``)."""

    BACKGROUND = 0
    SCALP = 1
    SKULL = 2
    CSF = 3
    GM = 4
    WM = 5
    DEEP_GM = 6
    VENTRICLE = 7


def draw_lesion_count(rng: np.random.Generator, low: float, high: float, n_voxels: int) -> tuple[int, float]:
    """Lesion voxel count whose fraction of ``n_voxels`` lies in [low, high]; and its rank in [0, 1]."""
    if high == 0.0:
        return 0, 0.0
    span = math.log(high) - math.log(low)
    rank = float(rng.uniform()) if span > 0 else 0.5
    fraction = math.exp(math.log(low) + rank * span)
    lo_count, hi_count = math.ceil(low * n_voxels), math.floor(high * n_voxels)
    while lo_count / n_voxels < low:  # guard against round-off in the products above
        lo_count += 1
    while hi_count / n_voxels > high:
        hi_count -= 1
    if lo_count > hi_count or hi_count < 1:
        raise ConfigError(
            f"lesion_fraction: ({low:g}, {high:g}) holds no whole number of lesion voxels in a volume of "
            f"{n_voxels} voxels; allowed: a wider range"
        )
    return int(np.clip(round(fraction * n_voxels), max(lo_count, 1), hi_count)), rank


@dataclass
class Coords:
    """Head-frame coordinates (mm) of every voxel, ``[X, Y, Z]`` float32 each; x right, y anterior, z up."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray


def head_coordinates(rng: np.random.Generator, site: SiteParams, affine: np.ndarray) -> Coords:
    """World coordinates of the voxel centres, mapped into a head frame rotated by a few degrees."""
    angles = np.deg2rad(rng.uniform(-4.0, 4.0, 3))
    shift = rng.uniform(-3.0, 3.0, 3)
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    axes = [affine[d, d] * np.arange(n) + affine[d, 3] - shift[d] for d, n in enumerate(site.shape)]
    grid = [a.reshape([-1 if d == k else 1 for k in range(3)]).astype(np.float32) for d, a in enumerate(axes)]
    # head = rot.T @ (world - shift), evaluated by broadcasting the three 1-D axes
    head = [sum(float(rot[d, k]) * grid[d] for d in range(3)) for k in range(3)]
    shape = tuple(site.shape)
    return Coords(*(np.broadcast_to(h, shape).astype(np.float32) for h in head))


def smooth_noise(rng: np.random.Generator, site: SiteParams, length_mm: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length ``length_mm``."""
    sigma = [length_mm / v for v in site.voxel_size]
    field = ndimage.gaussian_filter(rng.standard_normal(site.shape, dtype=np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def smooth_trend(rng: np.random.Generator, coords: Coords, length_mm: float, terms: int = 6) -> np.ndarray:
    """Very smooth random field (random Fourier features), unit variance; for bias fields and shapes."""
    out = np.zeros(coords.x.shape, dtype=np.float32)
    for _ in range(terms):
        w = rng.normal(0.0, 1.0 / length_mm, 3)
        out += np.cos(w[0] * coords.x + w[1] * coords.y + w[2] * coords.z + rng.uniform(0, 2 * np.pi))
    return out * np.float32(math.sqrt(2.0 / terms))


def _ellipsoid_radius(coords: Coords, semi, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Normalised ellipsoid radius: < 1 inside, 1 on the surface."""
    return np.sqrt(
        ((coords.x - centre[0]) / semi[0]) ** 2
        + ((coords.y - centre[1]) / semi[1]) ** 2
        + ((coords.z - centre[2]) / semi[2]) ** 2
    )


@dataclass
class Anatomy:
    """Subject parameters the lesion model needs: ventricle centre (y, mm) and half-length (mm)."""

    vent_y: float
    vent_half_length: float


def tissue_map(rng: np.random.Generator, site: SiteParams, c: Coords, atrophy: float) -> tuple[np.ndarray, Anatomy]:
    """Tissue map ``[X, Y, Z]`` (uint8, :class:`Tissue`) of a miniature head (~60 % of adult size)."""
    head = np.array([45.0, 52.0, 43.0]) * rng.uniform(0.97, 1.03, 3)
    wobble = 1.0 + 0.015 * smooth_trend(rng, c, 30.0)
    # Shells of roughly constant thickness in mm: scalp 4, skull 5, subarachnoid CSF 2.5.
    r_head = _ellipsoid_radius(c, head) / wobble
    r_skull = _ellipsoid_radius(c, head - 4.0) / wobble
    r_csf = _ellipsoid_radius(c, head - 9.0) / wobble
    brain = head - 11.5
    r_brain = _ellipsoid_radius(c, brain) / wobble
    depth = (1.0 - r_brain) * float(brain.mean())  # approximate depth below the brain surface, mm

    tissue = np.zeros(site.shape, dtype=np.uint8)
    tissue[r_head <= 1] = Tissue.SCALP
    tissue[r_skull <= 1] = Tissue.SKULL
    tissue[r_csf <= 1] = Tissue.CSF
    # Gyri and sulci: sulci are thin sheets of CSF along the zero set of a random field, lined with
    # grey matter; elsewhere the cortex is a ribbon of about 2.5 mm.
    fold = np.abs(smooth_noise(rng, site, 5.0))
    in_brain = r_brain <= 1
    tissue[in_brain] = Tissue.GM
    tissue[in_brain & (fold < 0.12) & (depth < 8.0)] = Tissue.CSF
    tissue[(depth > 2.5) & ((fold > 0.6) | (depth > 10.5))] = Tissue.WM
    # Interhemispheric fissure above the corpus callosum.
    tissue[in_brain & (np.abs(c.x) < 1.0) & (c.z > 14.0)] = Tissue.CSF

    # Deep grey nuclei (thalamus / basal ganglia), lateral to the ventricles.
    for side in (-1.0, 1.0):
        tissue[_ellipsoid_radius(c, (6.0, 10.0, 7.0), (side * 12.0, -2.0, -4.0)) <= 1] = Tissue.DEEP_GM

    # Lateral ventricles: arched tubes, widest at the frontal horn and atrium, larger with atrophy.
    vent_y, half = float(rng.uniform(-4.0, 0.0)), 22.0 * (0.85 + 0.15 * atrophy)
    t = (c.y - vent_y) / half  # -1 occipital tip, +1 frontal tip
    centre_z = 5.0 + 4.0 * (1.0 - t**2)
    width = (2.0 + 1.2 * np.exp(-(((np.abs(t) - 0.7) / 0.25) ** 2))) * atrophy
    height = 4.5 * atrophy
    for side in (-1.0, 1.0):
        centre_x = side * (1.5 + width)
        r = ((c.x - centre_x) / width) ** 2 + ((c.z - centre_z) / height) ** 2 + t**4
        tissue[r <= 1] = Tissue.VENTRICLE
    return tissue, Anatomy(vent_y=vent_y, vent_half_length=half)


# === Lesions ===


def _top_k(score: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` candidate voxels with the highest score (all of them if fewer)."""
    index = np.flatnonzero(candidates)
    if k < index.size:
        index = index[np.argpartition(score.ravel()[index], index.size - k)[index.size - k :]]
    mask = np.zeros(score.size, dtype=bool)
    mask[index] = True
    return mask.reshape(score.shape)


def _ellipsoid_window(centre, radius, vox, shape, reach: float = 1.0):
    """Normalised distance ``q`` (1 on the ellipsoid's surface) in the window of the grid within ``reach``.

    ``centre`` in voxel indices, ``radius`` (scalar or per axis) and ``vox`` in mm. Returns the window
    (a tuple of slices) and ``q`` (float32, the window's shape), so foci cost their size, not the volume's.
    """
    centre = np.asarray(centre, dtype=float)
    radius = np.broadcast_to(np.asarray(radius, dtype=float), (3,))
    half = np.ceil(reach * radius / vox).astype(int)
    lo = np.clip(np.round(centre).astype(int) - half, 0, shape)
    hi = np.clip(np.round(centre).astype(int) + half + 1, lo, shape)
    axes = [((np.arange(lo[d], hi[d]) - centre[d]) * vox[d] / radius[d]) ** 2 for d in range(3)]
    q = np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True)), q.astype(np.float32)


def place_lesions(rng, site, c, anatomy, wm, d_vent, d_edge, n_lesion) -> np.ndarray:
    """Exactly ``n_lesion`` white matter voxels: periventricular caps and bands, deep punctate foci.

    Each kind is the top of a score over white matter: for periventricular lesions, closeness to the
    ventricles (stronger at the horn tips) plus a smooth noise field, so the band thickens and frays
    as the load grows; for deep lesions, a few small ellipsoidal foci, some clustered so that they
    merge at high load. Ranking instead of thresholding makes the count exact.
    """
    vox = np.asarray(site.voxel_size, dtype=float)
    voxel_mm3 = float(np.prod(vox))
    noise = smooth_noise(rng, site, 2.0)
    n_deep = int(round(n_lesion * rng.uniform(0.15, 0.45)))
    lesion = np.zeros(site.shape, dtype=bool)

    # Deep punctate foci, 1-3.5 mm radius; a third are placed next to an earlier one (confluent).
    if n_deep:
        foci = int(np.clip(round(n_deep * voxel_mm3 / 40.0), 1, 40))
        deep_ok = wm & (d_vent > 6.0) & (d_edge >= 2.0)
        pool = np.argwhere(deep_ok if deep_ok.any() else wm)
        score = np.full(site.shape, -np.inf, dtype=np.float32)
        centres: list[np.ndarray] = []
        for _ in range(foci):
            if centres and rng.uniform() < 0.33:
                centre = centres[rng.integers(len(centres))] + rng.normal(0.0, 3.0, 3) / vox
            else:
                centre = pool[rng.integers(len(pool))].astype(float)
            centres.append(centre)
            radius = rng.uniform(1.0, 3.5) * rng.uniform(0.8, 1.25, 3)
            window, q = _ellipsoid_window(centre, radius, vox, site.shape, reach=2.0)
            score[window] = np.maximum(score[window], 1.0 - q)
        score += 0.15 * noise
        lesion |= _top_k(score, wm & np.isfinite(score), n_deep)

    # Periventricular caps and bands: whatever the deep foci did not take.
    t = np.abs(c.y - anatomy.vent_y) / anatomy.vent_half_length
    cap = np.clip((t - 0.55) / 0.35, 0.0, 1.0)
    reach = rng.uniform(2.0, 4.0) * (1.0 + 2.0 * min(1.0, n_lesion * voxel_mm3 / 20000.0))
    score = -d_vent / reach + np.log1p(rng.uniform(1.0, 3.0) * cap) + 0.6 * noise
    free = wm & ~lesion
    near = free & (d_vent <= 20.0)
    remaining = n_lesion - int(lesion.sum())
    lesion |= _top_k(score, near if int(near.sum()) >= remaining else free, remaining)
    return lesion


def place_cavities(rng, site, allowed: np.ndarray, d_edge: np.ndarray, count: int) -> np.ndarray:
    """``count`` small lacune-like spots (1.5-2.5 mm radius) in white matter, for label 2."""
    vox = np.asarray(site.voxel_size, dtype=float)
    deep = allowed & (d_edge >= 2.0)
    pool = np.argwhere(deep if deep.any() else allowed)
    out = np.zeros(site.shape, dtype=bool)
    if not len(pool):
        return out
    for _ in range(count):
        window, q = _ellipsoid_window(pool[rng.integers(len(pool))], rng.uniform(1.5, 2.5), vox, site.shape)
        out[window] |= q <= 1.0
    return out & allowed  # the centre is always kept: it lies in ``allowed`` at q = 0
