"""Synthetic multi-site FLAIR/T1 cohorts with white matter hyperintensity (WMH) labels.

The generator drives the demo and most tests: it writes small NIfTI volumes that look like axial
FLAIR and T1 scans from several scanners, with WMH labels whose load, shape and place resemble real
ones, quickly (well under a second per subject) and reproducibly from one seed. No real data is used.

What one subject is made of (all in mm, in a head frame that is slightly rotated and shifted against
the scanner grid):

- a head of scalp (fat), skull, subarachnoid CSF, a grey matter ribbon with sulci and gyri, white
  matter, deep grey nuclei, an interhemispheric fissure and two arched lateral ventricles. The head
  is about 60 % of adult size, so it fits grids of 96-128 voxels at about 1 mm in-plane;
- WMH: periventricular caps (at the frontal and occipital horns) and bands hugging the ventricle
  walls, small punctate lesions in deep white matter, confluent at high load. The lesion load is
  drawn log-uniformly from ``lesion_fraction`` (fraction of all voxels); ventricles are larger in
  subjects with a higher load, as in small-vessel disease;
- optionally a few voxels of label 2, "other pathology" (lacune-like cavities), as in the
  MICCAI 2017 WMH challenge data;
- per site (scanner): voxel size and array shape, intensity scale (arbitrary scanner units),
  tissue contrast, noise level and bias field strength;
- imaging: a Gaussian point spread (partial volume), a smooth multiplicative bias field and Rician
  noise (the magnitude of complex Gaussian noise).

Volumes are ``[X, Y, Z]`` arrays in RAS+ voxel order (canonical, as nibabel's
``as_closest_canonical`` gives), axial slice ``k`` is ``vol[:, :, k]``. Subject ``i`` of a cohort
uses the child seed ``SeedSequence(seed, spawn_key=(i,))`` and site ``i % sites``, so it is the same
whatever the cohort size.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from wmhkeras.errors import ConfigError
from wmhkeras.io.files import atomic_path

log = logging.getLogger(__name__)

#: Exact header of ``manifest.csv``; paths are relative to the manifest's folder.
MANIFEST_HEADER = ("subject", "site", "flair", "t1", "label")
#: File names inside each ``<site>/<subject>/`` folder.
FILE_NAMES = {"flair": "FLAIR.nii.gz", "t1": "T1.nii.gz", "label": "label.nii.gz"}
#: Default per-subject lesion load range, as a fraction of all voxels (0.01 % to 1 %).
DEFAULT_LESION_FRACTION = (0.0001, 0.01)
#: Largest lesion load accepted (white matter is about a fifth of the volume).
MAX_LESION_FRACTION = 0.05
_SITE_SALT = 0x5172E5  # seeds the derived parameters of sites beyond the three presets


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


# Intensity of each tissue relative to white matter, indexed by Tissue. FLAIR: CSF suppressed (dark),
# GM slightly brighter than WM, fat bright; T1: WM brightest in brain, GM darker, CSF dark, fat bright.
_FLAIR_RATIO = np.array([0.0, 0.95, 0.08, 0.16, 1.15, 1.0, 1.08, 0.12])
_T1_RATIO = np.array([0.0, 1.15, 0.10, 0.30, 0.68, 1.0, 0.80, 0.25])
# Lacune-like cavity of "other pathology" (label 2): fluid-filled, dark on both.
_CAVITY_RATIO = {"flair": 0.35, "t1": 0.35}


@dataclass(frozen=True)
class SiteParams:
    """Acquisition of one site (scanner).

    ``voxel_size``: mm along X, Y, Z (in-plane, in-plane, slice thickness); ``shape``: array shape.
    ``flair_scale``/``t1_scale``: white matter intensity in scanner units (arbitrary, site-specific).
    ``flair_contrast``/``t1_contrast``: exponent applied to each tissue's intensity ratio to white
    matter (1 = nominal contrast, > 1 more contrast). ``noise``: Rician noise sigma as a fraction of
    white matter. ``bias``: standard deviation of the log bias field.
    """

    name: str
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int, int]
    flair_scale: float = 400.0
    t1_scale: float = 600.0
    flair_contrast: float = 1.0
    t1_contrast: float = 1.0
    noise: float = 0.03
    bias: float = 0.1


#: Three scanners, loosely after the MICCAI 2017 WMH sites (in-plane ~1 mm, 3 mm slices), scaled down.
SITE_PRESETS = (
    SiteParams("site1", (1.0, 1.0, 3.0), (112, 128, 32), 400.0, 600.0, 1.0, 1.0, 0.03, 0.10),
    SiteParams("site2", (1.2, 1.2, 3.0), (96, 112, 30), 1200.0, 900.0, 0.9, 1.1, 0.045, 0.15),
    SiteParams("site3", (0.9, 0.9, 2.5), (120, 128, 40), 180.0, 250.0, 1.15, 0.9, 0.025, 0.20),
)


@dataclass(frozen=True)
class SubjectRecord:
    """What was generated for one subject; ``voxel_size`` in mm, ``lesion_fraction`` of all voxels.

    ``lesion_count``: connected components of label 1 (26-neighbourhood, as the challenge counts).
    """

    subject: str
    site: str
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    lesion_fraction: float
    lesion_voxels: int
    lesion_count: int


@dataclass(frozen=True)
class CohortSummary:
    """Result of :func:`make_cohort`: the manifest path, the seed and site count, one record per subject."""

    manifest: Path
    seed: int
    sites: int
    subjects: list[SubjectRecord]

    def to_text(self) -> str:
        """A plain-text table for the CLI (one line per subject)."""
        lines = [
            f"manifest: {self.manifest}",
            f"{len(self.subjects)} subjects, {self.sites} sites, seed {self.seed}",
            f"{'subject':<9} {'site':<6} {'shape':<13} {'voxel mm':<14} {'lesion %':>8} {'voxels':>7} {'lesions':>7}",
        ]
        for r in self.subjects:
            shape = "x".join(str(s) for s in r.shape)
            vox = "x".join(f"{v:g}" for v in r.voxel_size)
            lines.append(
                f"{r.subject:<9} {r.site:<6} {shape:<13} {vox:<14} {100 * r.lesion_fraction:>8.3f} "
                f"{r.lesion_voxels:>7d} {r.lesion_count:>7d}"
            )
        return "\n".join(lines)


def site_presets(sites: int) -> list[SiteParams]:
    """Parameters of the first ``sites`` sites: the three :data:`SITE_PRESETS`, then derived ones.

    Sites beyond the third get voxel sizes, shapes, scales and contrasts drawn from a fixed seed per
    site index, so site ``k`` is the same in every cohort.
    """
    _check_int("sites", sites, 1)
    out = list(SITE_PRESETS[:sites])
    for k in range(len(SITE_PRESETS), sites):
        rng = np.random.default_rng([_SITE_SALT, k])
        inplane = round(float(rng.uniform(0.85, 1.25)) * 20) / 20
        thick = round(float(rng.uniform(2.5, 4.0)) * 2) / 2
        fov = np.array([112.0, 128.0, 96.0]) * rng.uniform(0.95, 1.05, 3)
        shape = (
            int(np.clip(round(fov[0] / inplane), 96, 128)),
            int(np.clip(round(fov[1] / inplane), 96, 128)),
            int(np.clip(round(fov[2] / thick), 24, 48)),
        )
        out.append(
            SiteParams(
                name=f"site{k + 1}",
                voxel_size=(inplane, inplane, thick),
                shape=shape,
                flair_scale=float(np.exp(rng.uniform(np.log(100.0), np.log(2000.0)))),
                t1_scale=float(np.exp(rng.uniform(np.log(100.0), np.log(2000.0)))),
                flair_contrast=float(rng.uniform(0.85, 1.15)),
                t1_contrast=float(rng.uniform(0.85, 1.15)),
                noise=float(rng.uniform(0.02, 0.05)),
                bias=float(rng.uniform(0.05, 0.2)),
            )
        )
    return out


def site_affine(site: SiteParams) -> np.ndarray:
    """Voxel-to-RAS affine (4x4): RAS+ axes, the site's voxel sizes, the grid centred on the origin."""
    vox = np.asarray(site.voxel_size, dtype=float)
    affine = np.diag([*vox, 1.0])
    affine[:3, 3] = -vox * (np.asarray(site.shape) - 1) / 2.0
    return affine


def make_subject(
    rng_or_seed: int | np.random.Generator | np.random.SeedSequence,
    site_params: SiteParams,
    *,
    lesion_fraction: tuple[float, float] = DEFAULT_LESION_FRACTION,
    other_pathology: int = 0,
    return_tissue: bool = False,
):
    """Simulate one subject in memory.

    Args:
        rng_or_seed: a numpy Generator (consumed), or a seed / SeedSequence for a fresh one.
        site_params: the acquisition (grid, voxel size, intensity scale, contrast, noise, bias).
        lesion_fraction: ``(low, high)``; the load is drawn log-uniformly in this range and the
            realised fraction of label-1 voxels lies inside it. ``(0, 0)`` makes a lesion-free subject.
        other_pathology: number of small lacune-like spots labelled 2 ("other pathology"); 0 = none.
        return_tissue: also return the ``[X, Y, Z]`` uint8 :class:`Tissue` map.

    Returns:
        ``(flair, t1, label, affine)``: float32 ``[X, Y, Z]`` images (non-negative, scanner units),
        uint8 ``[X, Y, Z]`` label (0, 1, and 2 only when ``other_pathology > 0``), the 4x4 RAS affine;
        with ``return_tissue`` a fifth item, the tissue map.
    """
    low, high = _check_fraction(lesion_fraction)
    _check_int("other_pathology", other_pathology, 0)
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    site = site_params
    affine = site_affine(site)
    vox = np.asarray(site.voxel_size, dtype=float)
    n_voxels = int(np.prod(site.shape))

    # Lesion load first: it also sets the ventricle size (atrophy goes with small-vessel disease).
    n_lesion, load_rank = _draw_lesion_count(rng, low, high, n_voxels)
    coords = _head_coordinates(rng, site, affine)
    tissue, anatomy = _anatomy(rng, site, coords, atrophy=0.9 + 0.6 * load_rank + rng.uniform(-0.1, 0.1))

    wm = tissue == Tissue.WM
    d_vent = ndimage.distance_transform_edt(tissue != Tissue.VENTRICLE, sampling=vox)
    d_edge = ndimage.distance_transform_edt(wm, sampling=vox)  # depth inside white matter
    label = np.zeros(site.shape, dtype=np.uint8)
    if n_lesion:
        lesion = _place_lesions(rng, site, coords, anatomy, wm, d_vent, d_edge, n_lesion)
        if int(lesion.sum()) != n_lesion:  # only a grid far larger than the head gets here
            raise ConfigError(
                f"lesion_fraction: {n_lesion} lesion voxels do not fit in the {int(wm.sum())} white matter "
                f"voxels of site {site.name}; allowed: a lower range"
            )
        label[lesion] = 1
    if other_pathology:
        label[_place_cavities(rng, site, wm & (label == 0), d_edge, other_pathology)] = 2

    flair, t1 = _render(rng, site, coords, tissue, label)
    if return_tissue:
        return flair, t1, label, affine, tissue.astype(np.uint8)
    return flair, t1, label, affine


def make_cohort(
    out_dir: str | Path,
    subjects: int,
    sites: int = 3,
    seed: int = 0,
    *,
    lesion_fraction: tuple[float, float] = DEFAULT_LESION_FRACTION,
    other_pathology: int = 0,
    site_params: Sequence[SiteParams] | None = None,
    on_subject: Callable[[SubjectRecord], None] | None = None,
) -> CohortSummary:
    """Write a synthetic cohort: ``<out_dir>/<site>/<subject>/{FLAIR,T1,label}.nii.gz`` + manifest.

    Subject ``i`` (0-based) is named ``sub-{i+1:03d}``, belongs to site ``i % sites`` and is drawn
    from ``SeedSequence(seed, spawn_key=(i,))``. Every NIfTI file is written atomically, and
    ``manifest.csv`` (header ``subject,site,flair,t1,label``, paths relative to ``out_dir``) last, so an
    interrupted run never leaves a manifest that points at missing or truncated files.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced).
        subjects: number of subjects (>= 1).
        sites: number of sites (>= 1); see :func:`site_presets`.
        seed: base seed; the same seed gives identical voxel values.
        lesion_fraction, other_pathology: as in :func:`make_subject`.
        site_params: custom sites instead of the presets (exactly ``sites`` of them).
        on_subject: called after each subject is written (for progress display).

    Returns:
        :class:`CohortSummary` with the manifest path and one :class:`SubjectRecord` per subject.
    """
    _check_int("subjects", subjects, 1)
    _check_int("seed", seed, 0)
    _check_fraction(lesion_fraction)
    _check_int("other_pathology", other_pathology, 0)
    if site_params is None:
        site_list = site_presets(sites)
    else:
        site_list = list(site_params)
        if len(site_list) != sites:
            raise ConfigError(f"site_params: {len(site_list)} sites given but sites={sites}; they must match")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("generating %d subjects on %d sites (seed %d) in %s", subjects, sites, seed, out_dir)

    records, rows, start = [], [], time.perf_counter()
    for i in range(subjects):
        site = site_list[i % sites]
        name = f"sub-{i + 1:03d}"
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
        flair, t1, label, affine = make_subject(
            rng, site, lesion_fraction=lesion_fraction, other_pathology=other_pathology
        )
        rel = {key: f"{site.name}/{name}/{fname}" for key, fname in FILE_NAMES.items()}
        description = f"wmhkeras synthetic {site.name} {name} seed {seed}"
        _save(flair, affine, out_dir / rel["flair"], description)
        _save(t1, affine, out_dir / rel["t1"], description)
        _save(label, affine, out_dir / rel["label"], description)
        lesion = label == 1
        n_lesion = int(lesion.sum())
        record = SubjectRecord(
            subject=name,
            site=site.name,
            shape=tuple(int(s) for s in label.shape),
            voxel_size=tuple(float(v) for v in site.voxel_size),
            lesion_fraction=n_lesion / label.size,
            lesion_voxels=n_lesion,
            lesion_count=int(ndimage.label(lesion, structure=np.ones((3, 3, 3)))[1]),
        )
        log.info(
            "%s %s: shape %s, voxel %s mm, lesion fraction %.4f %% (%d components)",
            name,
            site.name,
            record.shape,
            record.voxel_size,
            100 * record.lesion_fraction,
            record.lesion_count,
        )
        records.append(record)
        rows.append((name, site.name, rel["flair"], rel["t1"], rel["label"]))
        if on_subject is not None:
            on_subject(record)

    manifest = out_dir / "manifest.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_HEADER)
    writer.writerows(rows)
    with atomic_path(manifest) as tmp:
        tmp.write_text(buffer.getvalue())
    log.info("wrote %s (%d subjects, %.1f s)", manifest, subjects, time.perf_counter() - start)
    return CohortSummary(manifest=manifest, seed=seed, sites=sites, subjects=records)


# === Validation ===


def _check_int(key: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{key}: got {value!r}; allowed: an integer >= {minimum}")


def _check_fraction(value) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"lesion_fraction: got {value!r}; allowed: a pair (low, high)") from None
    lesion_free = low == 0.0 and high == 0.0
    if not lesion_free and not (0.0 < low <= high <= MAX_LESION_FRACTION):
        raise ConfigError(
            f"lesion_fraction: got ({low:g}, {high:g}); allowed: 0 < low <= high <= {MAX_LESION_FRACTION:g} "
            "(fractions of all voxels, drawn log-uniformly), or (0, 0) for lesion-free subjects"
        )
    return low, high


# === Anatomy ===


def _draw_lesion_count(rng: np.random.Generator, low: float, high: float, n_voxels: int) -> tuple[int, float]:
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
class _Coords:
    """Head-frame coordinates (mm) of every voxel, ``[X, Y, Z]`` float32 each; x right, y anterior, z up."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray


def _head_coordinates(rng: np.random.Generator, site: SiteParams, affine: np.ndarray) -> _Coords:
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
    return _Coords(*(np.broadcast_to(h, shape).astype(np.float32) for h in head))


def _smooth_noise(rng: np.random.Generator, site: SiteParams, length_mm: float) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation length ``length_mm``."""
    sigma = [length_mm / v for v in site.voxel_size]
    field = ndimage.gaussian_filter(rng.standard_normal(site.shape, dtype=np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _smooth_trend(rng: np.random.Generator, coords: _Coords, length_mm: float, terms: int = 6) -> np.ndarray:
    """Very smooth random field (random Fourier features), unit variance; for bias fields and shapes."""
    out = np.zeros(coords.x.shape, dtype=np.float32)
    for _ in range(terms):
        w = rng.normal(0.0, 1.0 / length_mm, 3)
        out += np.cos(w[0] * coords.x + w[1] * coords.y + w[2] * coords.z + rng.uniform(0, 2 * np.pi))
    return out * np.float32(math.sqrt(2.0 / terms))


def _ellipsoid_radius(coords: _Coords, semi, centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Normalised ellipsoid radius: < 1 inside, 1 on the surface."""
    return np.sqrt(
        ((coords.x - centre[0]) / semi[0]) ** 2
        + ((coords.y - centre[1]) / semi[1]) ** 2
        + ((coords.z - centre[2]) / semi[2]) ** 2
    )


@dataclass
class _Anatomy:
    """Subject parameters the lesion model needs: ventricle centre (y, mm) and half-length (mm)."""

    vent_y: float
    vent_half_length: float


def _anatomy(rng: np.random.Generator, site: SiteParams, c: _Coords, atrophy: float) -> tuple[np.ndarray, _Anatomy]:
    """Tissue map ``[X, Y, Z]`` (uint8, :class:`Tissue`) of a miniature head (~60 % of adult size)."""
    head = np.array([45.0, 52.0, 43.0]) * rng.uniform(0.97, 1.03, 3)
    wobble = 1.0 + 0.015 * _smooth_trend(rng, c, 30.0)
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
    fold = np.abs(_smooth_noise(rng, site, 5.0))
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
    return tissue, _Anatomy(vent_y=vent_y, vent_half_length=half)


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


def _place_lesions(rng, site, c, anatomy, wm, d_vent, d_edge, n_lesion) -> np.ndarray:
    """Exactly ``n_lesion`` white matter voxels: periventricular caps and bands, deep punctate foci.

    Each kind is the top of a score over white matter: for periventricular lesions, closeness to the
    ventricles (stronger at the horn tips) plus a smooth noise field, so the band thickens and frays
    as the load grows; for deep lesions, a few small ellipsoidal foci, some clustered so that they
    merge at high load. Ranking instead of thresholding makes the count exact.
    """
    vox = np.asarray(site.voxel_size, dtype=float)
    voxel_mm3 = float(np.prod(vox))
    noise = _smooth_noise(rng, site, 2.0)
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


def _place_cavities(rng, site, allowed: np.ndarray, d_edge: np.ndarray, count: int) -> np.ndarray:
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


# === Imaging ===


def _render(rng, site: SiteParams, c: _Coords, tissue: np.ndarray, label: np.ndarray):
    """FLAIR-like and T1-like images from the tissue map and labels: contrast, PSF, bias, Rician noise."""
    texture = 1.0 + 0.03 * _smooth_noise(rng, site, 3.0)
    lesion_texture = 1.0 + 0.06 * _smooth_noise(rng, site, 2.0)
    ratios = {
        "flair": (_FLAIR_RATIO, rng.uniform(1.35, 1.6), site.flair_contrast, site.flair_scale),
        "t1": (_T1_RATIO, rng.uniform(0.7, 0.85), site.t1_contrast, site.t1_scale),
    }
    out = []
    for key, (table, lesion_ratio, contrast, scale) in ratios.items():
        # Per-subject jitter of tissue contrast, then the site's contrast (an exponent on the ratios).
        jitter = np.concatenate([[0.0], rng.uniform(0.97, 1.03, len(table) - 1)])
        levels = ((table * jitter) ** contrast).astype(np.float32)
        image = levels[tissue] * texture
        lesion = label == 1
        image[lesion] = (lesion_ratio**contrast) * lesion_texture[lesion]
        image[label == 2] = _CAVITY_RATIO[key] ** contrast
        image = ndimage.gaussian_filter(image, 0.5)  # point spread: partial volume at edges
        image *= np.exp(site.bias * _smooth_trend(rng, c, 60.0))
        sigma = site.noise
        real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
        out.append((np.sqrt(real * real + imag * imag) * np.float32(scale)).astype(np.float32))
    return out[0], out[1]


def _save(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    """Write a NIfTI-1 file atomically with qform and sform both set to ``affine`` (code 1, scanner)."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = description[:79].encode()
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
