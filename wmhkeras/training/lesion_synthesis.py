"""Lesion synthesis: real lesion shapes painted into training FLAIRs (in the spirit of CarveMix / LesionMix).

Two training patients show only part of what lesions look like in size, number and place. Lesion
masks of other patients (donors) carry the missing shapes and places; what they lack is an image. This
module paints them into the training subjects' FLAIRs so that a painted lesion is hard to tell from a
real one, while painting nothing that real lesions do not show:

* **Where**: each donor mask is resampled into the subject's voxel space through the two affines
  (nearest neighbour), then kept only on the subject's brain tissue (:func:`paintable_tissue`: the
  brain, one voxel in from its edge, without CSF), off the subject's own lesions and, with
  ``where: white_matter``, within :data:`WHITE_MATTER_MARGIN` voxels of the white matter of the
  subject's T1 (:func:`white_matter`), where lesions occur: a lesion painted into cortex would teach that
  bright cortex is lesion.
* **How bright**: the contrast of each real lesion of the training subjects is measured as the mean
  FLAIR of the lesion minus the median of a ring of surrounding tissue (1 to 3 voxels out), in units
  of the standard deviation of the subject's non-lesion brain (:func:`lesion_contrasts`). A normal
  distribution fitted to these contrasts, truncated to the measured range, is the
  :class:`ContrastModel` (:mod:`~wmhkeras.training.lesion_contrast`); each painted lesion (a connected
  component of the donor) draws its contrast from it, faint lesions included, and from nothing brighter or
  fainter than real lesions are. With ``contrast: size`` the normal's mean follows the line of contrast
  against log size fitted to the real lesions, as larger real lesions are brighter.
* **What it looks like**: painting *adds* the contrast to the scan, so the scan's own noise and
  texture stay. The edges are partial-volume: the added intensity is weighted by ``alpha``, 0.5 plus
  half of the mask blurred by a Gaussian (``PARTIAL_VOLUME_SIGMA`` voxels) inside the lesion, half of
  the blurred mask outside it; each lesion's amplitude is scaled so that its measured contrast
  (:func:`lesion_contrasts` on the painted scan) is the drawn one.
* **The label**: exactly the painted voxels (where ``alpha > 0.5``) join the label.
* Painted intensities are capped at the scan's maximum, so the brain mask of the preprocessing (a share
  of the maximum) is the same for the painted copy as for the real scan.

:func:`paint` works on one volume; :func:`synthesise` makes the painted training copies of a run and
puts them in the training cache, where the sampler draws a share of the lesion samples from them
(``data.lesion_synthesis``). NumPy and SciPy only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from wmhkeras.config import Config
from wmhkeras.data.datasets import Subject, check_subject
from wmhkeras.data.preprocessing import BRAIN_THRESHOLD
from wmhkeras.errors import InputError
from wmhkeras.io.nifti import Volume
from wmhkeras.training.lesion_contrast import (  # noqa: F401  (the contrast model, public here too)
    CONNECTIVITY,
    RING,
    ContrastModel,
    brain_statistics,
    fit_contrast_model,
    lesion_contrasts,
)

log = logging.getLogger(__name__)

#: Standard deviation (voxels) of the Gaussian that softens painted edges (partial volume).
PARTIAL_VOLUME_SIGMA = 0.6
#: Tissue darker than (brain mean - CSF_SD x brain SD) after light smoothing is CSF: never painted.
CSF_SD = 2.0
#: ``where: white_matter``: painting stays within this many voxels of the T1's white matter (the real
#: lesions of the two open_ms_data patients lie within 2 voxels of it: 86 % and 69 % of their voxels,
#: lesions being dark on T1 themselves).
WHITE_MATTER_MARGIN = 2
#: At most this many training subjects are read to fit the contrast model.
MAX_FIT_SUBJECTS = 20
#: Bumped whenever painted volumes would change for the same inputs and settings (the shard key).
SYNTHESIS_VERSION = 1
#: Suffix of a painted copy's subject id: ``<subject>~painted<i>``.
PAINTED_TAG = "~painted"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def brain_mask(flair: np.ndarray) -> np.ndarray:
    """The pipeline's brain: the max-normalised FLAIR above the preprocessing's brain threshold."""
    peak = float(flair.max())
    return flair > BRAIN_THRESHOLD * peak if peak > 0 else np.zeros(flair.shape, bool)


def paintable_tissue(flair: np.ndarray, brain: np.ndarray, lesion: np.ndarray) -> np.ndarray:
    """Where lesions may be painted: the brain one voxel in from its edge, without CSF (tissue darker
    than the brain mean minus :data:`CSF_SD` SDs after a one-voxel Gaussian smoothing), without the
    subject's own lesions."""
    mean, sd = brain_statistics(flair, brain, lesion.astype(bool))
    smooth = ndimage.gaussian_filter(flair.astype(np.float32), 1.0)
    inner = ndimage.binary_erosion(brain, CONNECTIVITY, iterations=1)
    return inner & (smooth >= mean - CSF_SD * sd) & ~lesion.astype(bool)


def white_matter(t1: np.ndarray, brain: np.ndarray, iterations: int = 60) -> np.ndarray:
    """The white matter of a T1 scan: brain voxels of the brightest class of a three-class Gaussian mixture
    (CSF, grey matter, white matter) of the brain's T1 intensities (EM on every 10th voxel, started at
    the 1/6, 1/2 and 5/6 quantiles: deterministic)."""
    values = t1[brain].astype(np.float64)[::10]
    if values.size < 3:
        return np.zeros(t1.shape, bool)
    mean = np.quantile(values, [1 / 6, 1 / 2, 5 / 6])
    sd = np.full(3, values.std() / 3 + 1e-6)
    weight = np.full(3, 1 / 3)

    def densities(v):
        return np.stack([weight[j] / sd[j] * np.exp(-0.5 * ((v - mean[j]) / sd[j]) ** 2) for j in range(3)])

    for _ in range(iterations):
        p = densities(values) + 1e-300
        r = p / p.sum(axis=0)
        weight = r.mean(axis=1)
        mean = (r * values).sum(axis=1) / r.sum(axis=1)
        sd = np.sqrt((r * (values - mean[:, None]) ** 2).sum(axis=1) / r.sum(axis=1)) + 1e-6
    return brain & (densities(t1.astype(np.float64)).argmax(axis=0) == int(np.argmax(mean)))


def donor_on_grid(donor: nib.Nifti1Image, volume: Volume) -> np.ndarray:
    """A donor mask (any grid) resampled to ``volume``'s canonical voxel grid through the two affines
    (nearest neighbour; outside the donor's field of view: no lesion). Boolean, ``volume.data.shape``."""
    data = np.asarray(donor.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    mapping = np.linalg.inv(donor.affine) @ volume.affine
    moved = ndimage.affine_transform((data > 0.5).astype(np.uint8), mapping[:3, :3], mapping[:3, 3],
                                     output_shape=volume.data.shape, order=0, mode="constant", cval=0)
    return moved > 0


def paint(flair: np.ndarray, lesion: np.ndarray, donor: np.ndarray, model: ContrastModel,
          rng: np.random.Generator, brain: np.ndarray | None = None,
          region: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint the lesions of ``donor`` (boolean, on ``flair``'s grid) into ``flair``.

    Args:
        flair: the scan ``(X, Y, Z)``; ``lesion``: its own lesion mask (kept; never painted over).
        donor: the donor lesion mask on the same grid (:func:`donor_on_grid`).
        model: the contrast model (:func:`fit_contrast_model`).
        rng: draws one contrast per painted lesion, in the order of the donor's connected components.
        brain: the brain mask (default :func:`brain_mask`).
        region: where painting may go besides that (e.g. near the white matter); default everywhere.

    Returns:
        ``(painted flair, painted mask, contrasts)``: the painted voxels (the donor on paintable tissue,
        :func:`paintable_tissue`, within ``region``) are exactly where ``alpha > 0.5``; add them to the
        label. ``contrasts``
        holds the drawn contrast of each painted lesion (components of the painted mask).
    """
    lesion = lesion.astype(bool)
    brain = brain_mask(flair) if brain is None else brain
    _, sd = brain_statistics(flair, brain, lesion)
    painted = donor & paintable_tissue(flair, brain, lesion)
    if region is not None:
        painted &= region
    labels, n = ndimage.label(painted, CONNECTIVITY)
    contrasts = model.draw(rng, n, np.bincount(labels.ravel(), minlength=n + 1)[1:])
    blurred = ndimage.gaussian_filter(painted.astype(np.float32), PARTIAL_VOLUME_SIGMA)
    alpha = np.where(painted, 0.5 + 0.5 * blurred, 0.5 * blurred) * brain
    # Each lesion's amplitude: its drawn contrast over its mean alpha, so the measured mean contrast is
    # the drawn one; outside the lesions the amplitude of the nearest lesion (edges of partial volume).
    mean_alpha = ndimage.mean(alpha, labels, index=np.arange(1, n + 1)) if n else np.zeros(0)
    amplitude = np.zeros(n + 1, np.float32)
    amplitude[1:] = contrasts / np.maximum(mean_alpha, 1e-6)
    near = labels
    if n:
        _, (i, j, k) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        near = labels[i, j, k]
    out = flair.astype(np.float32) + alpha * amplitude[near] * np.float32(sd)
    # Never above the scan's maximum: the pipeline's brain mask (a share of the maximum) stays the same.
    out = np.minimum(out, np.float32(flair.max()))
    return out.astype(np.float32), painted, np.asarray(contrasts, np.float64)


# === A run's painted training copies ===


def donor_files(cfg: Config) -> list[Path]:
    """The donor masks named by ``data.lesion_synthesis.masks`` (folders: their ``*.nii``/``*.nii.gz``,
    sorted), each checked to parse as 3D. InputError before any work when one is missing or broken."""
    files: list[Path] = []
    for entry in cfg.data.lesion_synthesis.masks:
        path = Path(os.path.expandvars(entry)).expanduser().resolve()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.name.endswith(NIFTI_SUFFIXES))
            if not found:
                raise InputError(f"data.lesion_synthesis.masks: {path} holds no .nii or .nii.gz file")
            files.extend(found)
        elif path.is_file() and path.name.endswith(NIFTI_SUFFIXES):
            files.append(path)
        else:
            raise InputError(f"data.lesion_synthesis.masks: {path} is neither a folder of lesion masks nor a "
                             "NIfTI file")
    for path in files:
        try:
            shape = nib.load(str(path)).shape
        except Exception as exc:
            raise InputError(f"{path}: not a readable NIfTI lesion mask ({exc.__class__.__name__}: {exc})") from None
        if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
            raise InputError(f"{path}: a lesion mask must be 3D; got shape {tuple(shape)}")
    return files


def check_inputs(cfg: Config, train: list[Subject]) -> list[Path]:
    """Everything lesion synthesis reads, checked before any work: the donor masks (:func:`donor_files`)
    and, with ``where: white_matter``, a T1 for every training subject. Returns the donor files."""
    donors = donor_files(cfg)
    if cfg.data.lesion_synthesis.where == "white_matter":
        missing = [s.subject for s in train if s.t1 is None]
        if missing:
            raise InputError(f"data.lesion_synthesis.where: white_matter finds the white matter on each training "
                             f"subject's T1, and {len(missing)} have none (first: {missing[0]}); list their T1 "
                             "scans, or set data.lesion_synthesis.where=tissue")
    return donors


def paint_region(cfg: Config, subject: Subject, flair: Volume) -> np.ndarray | None:
    """Where painting may go in ``subject`` besides the tissue: ``where: white_matter``: within
    :data:`WHITE_MATTER_MARGIN` voxels of its T1's white matter; ``tissue``: None (no further limit)."""
    if cfg.data.lesion_synthesis.where != "white_matter":
        return None
    from wmhkeras.io import check_same_grid, load_volume

    t1 = load_volume(subject.t1)
    check_same_grid(flair, t1)
    wm = white_matter(t1.data, brain_mask(flair.data))
    # (scipy dilates until nothing changes when iterations < 1)
    return ndimage.binary_dilation(wm, CONNECTIVITY, iterations=WHITE_MATTER_MARGIN) if WHITE_MATTER_MARGIN else wm


def plan(cfg: Config, train: list[str], donors: list[Path]) -> list[tuple[str, Path]]:
    """``(subject, donor)`` of each painted copy: subjects round-robin in split order, donors in a
    seeded random order (each used once before any is used twice)."""
    ls = cfg.data.lesion_synthesis
    rng = np.random.default_rng([ls.seed, SYNTHESIS_VERSION])
    order: list[int] = []
    while len(order) < ls.volumes:
        order.extend(rng.permutation(len(donors)).tolist())
    return [(train[i % len(train)], donors[order[i]]) for i in range(ls.volumes)]


def painted_id(subject: str, index: int) -> str:
    return f"{subject}{PAINTED_TAG}{index}"


def painted_key(cfg: Config, subject_key: str, fit_keys: list[str], donor: Path, index: int) -> str:
    """The shard key of a painted copy: its subject's key, the fitted subjects' keys, the donor file,
    the synthesis settings and its index."""
    st = donor.stat()
    settings = {"version": SYNTHESIS_VERSION, "subject": subject_key, "fit": fit_keys,
                "donor": [str(donor), st.st_size, st.st_mtime_ns], "index": index,
                "seed": cfg.data.lesion_synthesis.seed, "pv": PARTIAL_VOLUME_SIGMA, "csf": CSF_SD, "ring": RING,
                "where": [cfg.data.lesion_synthesis.where, WHITE_MATTER_MARGIN]}
    if cfg.data.lesion_synthesis.contrast != "independent":
        settings["contrast"] = cfg.data.lesion_synthesis.contrast
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def fit_subjects_model(cfg: Config, subjects: list[Subject]) -> ContrastModel:
    """The contrast model of the training subjects' own lesions (the first :data:`MAX_FIT_SUBJECTS`)."""
    contrasts, sizes = [], []
    for subject in subjects[:MAX_FIT_SUBJECTS]:
        images, label = check_subject(subject, ("flair",), need_label=True)
        flair = images[0].data
        c, s = lesion_contrasts(flair, label.data == 1, brain_mask(flair))
        contrasts.append(c)
        sizes.append(s)
    by_size = cfg.data.lesion_synthesis.contrast == "size"
    model = fit_contrast_model(np.concatenate(contrasts) if contrasts else [],
                               np.concatenate(sizes) if by_size and sizes else None)
    log.info("lesion synthesis: contrast model from %d lesions of %d subjects: mean %.2f, SD %.2f, range "
             "%.2f to %.2f brain SD", model.n_lesions, min(len(subjects), MAX_FIT_SUBJECTS), model.mean, model.sd,
             model.low, model.high)
    if model.slope:
        log.info("lesion synthesis: contrast by size: %+.2f brain SD per tenfold volume, residual SD %.2f",
                 model.slope, model.sd)
    return model


def synthesise(cfg: Config, train: list[Subject], cache) -> tuple[list, dict]:
    """Make the run's painted training copies and put them in ``cache``: ``(records, report)``.

    Each copy is preprocessed by the shared training preprocessing
    (:func:`~wmhkeras.training.cohort.preprocess_subject`) and cached as a record with ``painted=True``;
    a :class:`~wmhkeras.training.cache.ShardCache` that holds it already (same key) is reused. The
    report (for ``synthesis.json`` in the run folder) lists the contrast model and each copy's subject,
    donor and painted lesions.
    """
    from wmhkeras.training.cache import cache_key
    from wmhkeras.training.cohort import preprocess_subject

    donors = check_inputs(cfg, train)
    by_id = {s.subject: s for s in train}
    keys = {s.subject: cache_key(cfg, s) for s in train}
    fit_keys = [keys[s.subject] for s in train[:MAX_FIT_SUBJECTS]]
    model = None
    jobs = list(enumerate(plan(cfg, [s.subject for s in train], donors)))
    records, copies = [None] * len(jobs), [None] * len(jobs)
    loaded: tuple[str, list, object] | None = None  # one subject's volumes at a time, reused by its copies
    for index, (sid, donor) in sorted(jobs, key=lambda job: (job[1][0], job[0])):
        subject = dataclasses.replace(by_id[sid], subject=painted_id(sid, index))
        key = painted_key(cfg, keys[sid], fit_keys, donor, index)
        record = cache.lookup(subject, key)
        info = {"id": subject.subject, "subject": sid, "donor": donor.name}
        if record is None:
            model = model or fit_subjects_model(cfg, train)
            if loaded is None or loaded[0] != sid:
                images, label = check_subject(by_id[sid], cfg.data.modalities, need_label=True)
                loaded = (sid, images, label, paint_region(cfg, by_id[sid], images[0]))
            _, images, label, region = loaded
            mask = donor_on_grid(nib.load(str(donor)), images[0])
            rng = np.random.default_rng([cfg.data.lesion_synthesis.seed, SYNTHESIS_VERSION, index])
            data, painted, contrasts = paint(images[0].data, label.data == 1, mask, model, rng, region=region)
            record, x, labels = preprocess_subject(
                cfg, subject, [dataclasses.replace(images[0], data=data), *images[1:]],
                dataclasses.replace(label, data=np.where(painted, 1, label.data).astype(label.data.dtype)))
            record = dataclasses.replace(record, painted=True)
            cache.put(record, key, x, labels)
            info.update(lesions=int(contrasts.size), voxels=int(painted.sum()),
                        contrast_mean=float(contrasts.mean()) if contrasts.size else None)
            log.info("painted %s: %d lesions (%d voxels) of %s into %s", subject.subject, contrasts.size,
                     int(painted.sum()), donor.name, sid)
        records[index], copies[index] = record, info
    report = {"donors": [str(d) for d in donors], "model": model.to_dict() if model else None,
              "share": cfg.data.lesion_synthesis.share, "where": cfg.data.lesion_synthesis.where,
              "copies": copies}
    return records, report
