"""Writing a synthetic cohort: ``<out_dir>/<site>/<subject>/{FLAIR,T1,label}.nii.gz`` and ``manifest.csv``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from wmhkeras.data.datasets import MANIFEST_NAME, Subject, write_manifest
from wmhkeras.data.synth.sites import DEFAULT_LESION_FRACTION, SiteParams, check_fraction, check_int, site_presets
from wmhkeras.data.synth.subject import make_subject
from wmhkeras.errors import ConfigError
from wmhkeras.io.files import atomic_path

log = logging.getLogger(__name__)

#: File names inside each ``<site>/<subject>/`` folder.
FILE_NAMES = {"flair": "FLAIR.nii.gz", "t1": "T1.nii.gz", "label": "label.nii.gz"}


@dataclass(frozen=True)
class SyntheticSubject:
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
    subjects: list[SyntheticSubject]

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



def make_cohort(
    out_dir: str | Path,
    subjects: int,
    sites: int = 3,
    seed: int = 0,
    *,
    lesion_fraction: tuple[float, float] = DEFAULT_LESION_FRACTION,
    other_pathology: int = 0,
    site_params: Sequence[SiteParams] | None = None,
    on_subject: Callable[[SyntheticSubject], None] | None = None,
) -> CohortSummary:
    """Write a synthetic cohort: ``<out_dir>/<site>/<subject>/{FLAIR,T1,label}.nii.gz`` + manifest.

    Subject ``i`` (0-based) is named ``sub-{i+1:03d}``, belongs to site ``i % sites`` and is drawn
    from ``SeedSequence(seed, spawn_key=(i,))``. Every NIfTI file is written atomically, and
    ``manifest.csv`` (:func:`~wmhkeras.data.datasets.write_manifest`: header ``subject,site,flair,t1,label``,
    paths relative to ``out_dir``) last, so an interrupted run never leaves a manifest that points at
    missing or truncated files.

    Args:
        out_dir: output folder (created; existing files of the same names are replaced).
        subjects: number of subjects (>= 1).
        sites: number of sites (>= 1); see :func:`~wmhkeras.data.synth.site_presets`.
        seed: base seed; the same seed gives identical voxel values.
        lesion_fraction, other_pathology: as in :func:`~wmhkeras.data.synth.make_subject`.
        site_params: custom sites instead of the presets (exactly ``sites`` of them).
        on_subject: called after each subject is written (for progress display).

    Returns:
        :class:`CohortSummary` with the manifest path and one :class:`SyntheticSubject` per subject.
    """
    site_list = _check_cohort(subjects, sites, seed, lesion_fraction, other_pathology, site_params)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log.info("generating %d subjects on %d sites (seed %d) in %s", subjects, sites, seed, out_dir)

    records, entries, start = [], [], time.perf_counter()
    for i in range(subjects):
        record, entry = _write_subject(out_dir, i, site_list[i % sites], seed, lesion_fraction, other_pathology)
        records.append(record)
        entries.append(entry)
        if on_subject is not None:
            on_subject(record)

    manifest = write_manifest(entries, out_dir / MANIFEST_NAME)
    log.info("wrote %s (%d subjects, %.1f s)", manifest, subjects, time.perf_counter() - start)
    return CohortSummary(manifest=manifest, seed=seed, sites=sites, subjects=records)


def _check_cohort(subjects, sites, seed, lesion_fraction, other_pathology, site_params) -> list[SiteParams]:
    """Check :func:`make_cohort`'s arguments (before anything is written); returns the sites to use."""
    check_int("subjects", subjects, 1)
    check_int("seed", seed, 0)
    check_fraction(lesion_fraction)
    check_int("other_pathology", other_pathology, 0)
    if site_params is None:
        return site_presets(sites)
    site_list = list(site_params)
    if len(site_list) != sites:
        raise ConfigError(f"site_params: {len(site_list)} sites given but sites={sites}; they must match")
    return site_list


def _write_subject(out_dir: Path, i: int, site: SiteParams, seed: int, lesion_fraction, other_pathology: int
                   ) -> tuple[SyntheticSubject, Subject]:
    """Simulate and write subject ``i``; returns its record and its manifest entry."""
    name = f"sub-{i + 1:03d}"
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
    flair, t1, label, affine = make_subject(rng, site, lesion_fraction=lesion_fraction, other_pathology=other_pathology)
    paths = {key: out_dir / site.name / name / fname for key, fname in FILE_NAMES.items()}
    description = f"wmhkeras synthetic {site.name} {name} seed {seed}"
    for key, array in (("flair", flair), ("t1", t1), ("label", label)):
        _save_nifti(array, affine, paths[key], description)
    lesion = label == 1
    n_lesion = int(lesion.sum())
    record = SyntheticSubject(
        subject=name,
        site=site.name,
        shape=tuple(int(s) for s in label.shape),
        voxel_size=tuple(float(v) for v in site.voxel_size),
        lesion_fraction=n_lesion / label.size,
        lesion_voxels=n_lesion,
        lesion_count=int(ndimage.label(lesion, structure=np.ones((3, 3, 3)))[1]),
    )
    log.info("%s %s: shape %s, voxel %s mm, lesion fraction %.4f %% (%d components)", name, site.name,
             record.shape, record.voxel_size, 100 * record.lesion_fraction, record.lesion_count)
    entry = Subject(name, site.name, paths["flair"].resolve(), paths["t1"].resolve(), paths["label"].resolve())
    return record, entry


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str) -> None:
    """Write a NIfTI-1 file atomically with qform and sform both set to ``affine`` (code 1, scanner)."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = description[:79].encode()
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
