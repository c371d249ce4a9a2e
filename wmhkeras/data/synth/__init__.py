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

Modules: :mod:`~wmhkeras.data.synth.sites` (scanner parameters), :mod:`~wmhkeras.data.synth.anatomy`
(tissue map and lesions), :mod:`~wmhkeras.data.synth.subject` (one subject in memory, imaging) and
:mod:`~wmhkeras.data.synth.cohort` (the files and the manifest); the public names are importable from
``wmhkeras.data.synth``.
"""

import importlib

#: The public names, by the module that defines them, each imported on first use (PEP 562).
_PUBLIC = {
    **dict.fromkeys(("Tissue",), "wmhkeras.data.synth.anatomy"),
    **dict.fromkeys(("FILE_NAMES", "CohortSummary", "SyntheticSubject", "make_cohort"), "wmhkeras.data.synth.cohort"),
    **dict.fromkeys(("DEFAULT_LESION_FRACTION", "MAX_LESION_FRACTION", "SITE_PRESETS", "SiteParams", "site_affine",
                     "site_presets"), "wmhkeras.data.synth.sites"),
    **dict.fromkeys(("make_subject",), "wmhkeras.data.synth.subject"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
