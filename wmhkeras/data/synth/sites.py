"""Scanner sites of the synthetic cohorts: grid, voxel size, intensity scale, contrast, noise, bias.

Also the argument checks shared by :func:`~wmhkeras.data.synth.make_subject` and
:func:`~wmhkeras.data.synth.make_cohort`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wmhkeras.errors import ConfigError

#: Default per-subject lesion load range, as a fraction of all voxels (0.01 % to 1 %).
DEFAULT_LESION_FRACTION = (0.0001, 0.01)
#: Largest lesion load accepted (white matter is about a fifth of the volume).
MAX_LESION_FRACTION = 0.05
_SITE_SALT = 0x5172E5  # seeds the derived parameters of sites beyond the three presets


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


def site_presets(sites: int) -> list[SiteParams]:
    """Parameters of the first ``sites`` sites: the three :data:`SITE_PRESETS`, then derived ones.

    Sites beyond the third get voxel sizes, shapes, scales and contrasts drawn from a fixed seed per
    site index, so site ``k`` is the same in every cohort.
    """
    check_int("sites", sites, 1)
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


# === Validation ===


def check_int(key: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{key}: got {value!r}; allowed: an integer >= {minimum}")


def check_fraction(value) -> tuple[float, float]:
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
