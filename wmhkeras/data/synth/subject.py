"""One synthetic subject in memory: anatomy, lesions, then imaging (contrast, blur, bias, Rician noise)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wmhkeras.data.synth.anatomy import (
    Coords,
    Tissue,
    draw_lesion_count,
    head_coordinates,
    place_cavities,
    place_lesions,
    smooth_noise,
    smooth_trend,
    tissue_map,
)
from wmhkeras.data.synth.sites import DEFAULT_LESION_FRACTION, SiteParams, check_fraction, check_int, site_affine
from wmhkeras.errors import ConfigError

# Intensity of each tissue relative to white matter, indexed by Tissue. FLAIR: CSF suppressed (dark),
# GM slightly brighter than WM, fat bright; T1: WM brightest in brain, GM darker, CSF dark, fat bright.
_FLAIR_RATIO = np.array([0.0, 0.95, 0.08, 0.16, 1.15, 1.0, 1.08, 0.12])
_T1_RATIO = np.array([0.0, 1.15, 0.10, 0.30, 0.68, 1.0, 0.80, 0.25])
# Lacune-like cavity of "other pathology" (label 2): fluid-filled, dark on both.
_CAVITY_RATIO = {"flair": 0.35, "t1": 0.35}


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
    low, high = check_fraction(lesion_fraction)
    check_int("other_pathology", other_pathology, 0)
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    site = site_params
    affine = site_affine(site)
    vox = np.asarray(site.voxel_size, dtype=float)
    n_voxels = int(np.prod(site.shape))

    # Lesion load first: it also sets the ventricle size (atrophy goes with small-vessel disease).
    n_lesion, load_rank = draw_lesion_count(rng, low, high, n_voxels)
    coords = head_coordinates(rng, site, affine)
    tissue, anatomy = tissue_map(rng, site, coords, atrophy=0.9 + 0.6 * load_rank + rng.uniform(-0.1, 0.1))

    wm = tissue == Tissue.WM
    d_vent = ndimage.distance_transform_edt(tissue != Tissue.VENTRICLE, sampling=vox)
    d_edge = ndimage.distance_transform_edt(wm, sampling=vox)  # depth inside white matter
    label = np.zeros(site.shape, dtype=np.uint8)
    if n_lesion:
        lesion = place_lesions(rng, site, coords, anatomy, wm, d_vent, d_edge, n_lesion)
        if int(lesion.sum()) != n_lesion:  # only a grid far larger than the head gets here
            raise ConfigError(
                f"lesion_fraction: {n_lesion} lesion voxels do not fit in the {int(wm.sum())} white matter "
                f"voxels of site {site.name}; allowed: a lower range"
            )
        label[lesion] = 1
    if other_pathology:
        label[place_cavities(rng, site, wm & (label == 0), d_edge, other_pathology)] = 2

    flair, t1 = render(rng, site, coords, tissue, label)
    if return_tissue:
        return flair, t1, label, affine, tissue.astype(np.uint8)
    return flair, t1, label, affine


# === Imaging ===


def render(rng, site: SiteParams, c: Coords, tissue: np.ndarray, label: np.ndarray):
    """FLAIR-like and T1-like images from the tissue map and labels: contrast, PSF, bias, Rician noise."""
    texture = 1.0 + 0.03 * smooth_noise(rng, site, 3.0)
    lesion_texture = 1.0 + 0.06 * smooth_noise(rng, site, 2.0)
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
        image *= np.exp(site.bias * smooth_trend(rng, c, 60.0))
        sigma = site.noise
        real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
        out.append((np.sqrt(real * real + imag * imag) * np.float32(scale)).astype(np.float32))
    return out[0], out[1]
