"""One subject of ``wmhkeras segment``: the steps on its loaded volumes (:func:`segment_volumes`, also
those of ``wmhkeras.segment_image``), its files, and its result (:class:`SubjectResult`), failed or kept
from an earlier run.

Per subject: :func:`~wmhkeras.inference.predictor.predict_maps` -> a float32 probability map (and, with
flip test-time augmentation, the disagreement map), zeroed outside the brain when a brain mask or
threshold is given (:func:`~wmhkeras.inference.predictor.brain_region`), and
:func:`~wmhkeras.inference.predictor.lesion_mask` -> a uint8 mask, all written with
:func:`~wmhkeras.io.save_like` on the input's exact grid (shape, voxel order, affine, qform/sform codes),
plus a per-lesion CSV (and with ``qc`` a montage, :mod:`~wmhkeras.inference.qc`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from wmhkeras.errors import InputError, WmhError, WriteError, one_line
from wmhkeras.evaluation.metrics import lesion_table
from wmhkeras.inference.inputs import load_subject
from wmhkeras.inference.loaders import Segmenter
from wmhkeras.inference.output_folder import file_stamps, remove_written
from wmhkeras.inference.predictor import brain_region, lesion_mask, predict_maps
from wmhkeras.inference.qc import montage_path, write_montage
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.io import load_volume, save_like
from wmhkeras.io.bids import output_paths
from wmhkeras.io.files import atomic_write_csv
from wmhkeras.io.subject import Subject

log = logging.getLogger(__name__)

#: Columns of ``<subject>_lesions.csv`` (:func:`wmhkeras.evaluation.metrics.lesion_table`).
LESION_COLUMNS = ("lesion", "voxels", "volume_ml", "x_mm", "y_mm", "z_mm")


@dataclass
class SubjectResult:
    """Outcome of one subject: ``status`` ``ok`` or ``failed`` (with ``error``), volumes and files."""

    subject: str
    flair: Path
    status: str = "ok"
    error: str = ""
    lesion_volume_ml: Optional[float] = None
    lesion_count: Optional[int] = None
    brain_volume_ml: Optional[float] = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    #: Complete from an earlier run (``skip_existing``): kept, not segmented again.
    skipped: bool = False
    #: The person the scan belongs to, when the input says (``summary.csv``'s ``participant``).
    participant: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def subject_paths(out_dir: Path, subject: str, uncertainty: bool = True, bids: bool = False,
                  qc: bool = False) -> dict[str, Path]:
    """A subject's output files, each inside ``out_dir`` (the last guard behind ``check_subject_ids``)."""
    paths = output_paths(out_dir, subject, uncertainty, bids)
    paths = {**paths, "qc": montage_path(out_dir, subject)} if qc else paths
    root = os.path.normpath(out_dir)
    if any(os.path.commonpath([root, os.path.normpath(p)]) != root for p in paths.values()):
        raise InputError(f"subject id {subject!r} would write outside {out_dir}; ids must be plain names")
    return paths


def segment_volumes(segmenter: Segmenter, images: list, brain, settings: SegmentSettings,
                    name: str) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """The per-subject steps of ``segment`` (and of ``wmhkeras.segment_image``), on loaded volumes.

    ``images`` are the model's modalities (FLAIR first) and ``brain`` an optional brain mask, each a
    loaded volume (``wmhkeras.io.nifti``) on the FLAIR's grid. Returns ``(prob, disagreement, mask)`` on
    that grid: probabilities zeroed outside the brain region, the flip disagreement (``None`` without
    TTA), and the thresholded mask with small lesions removed. ``segmenter`` computes at the precision
    decided once before (:func:`~wmhkeras.inference.precision.decide_precision`). ``name`` labels the voxel-size and
    skull-stripping warnings (the latter only without a brain mask).
    """
    flair = images[0]
    segmenter.warn_voxel_size(flair.spacing, name)  # warns when far from the card's training data
    if brain is None:
        segmenter.warn_skull(flair.data, flair.voxel_volume_ml, name)  # warns when it looks like a whole head
    prob, disagreement = predict_maps(segmenter, [v.data for v in images], settings.batch_size, settings.tta_flip,
                                      flair.spacing)
    region = brain_region(flair.data, None if brain is None else brain.data, settings.brain_threshold)
    if region is not None:
        prob = np.where(region, prob, np.float32(0))
        disagreement = None if disagreement is None else np.where(region, disagreement, np.float32(0))
    mask = lesion_mask(prob, settings.threshold, settings.min_lesion_mm3, flair.voxel_volume_ml * 1000.0,
                       settings.min_lesion_voxels)
    return prob, disagreement, mask


def sample_slices(segmenter: Segmenter, images: list) -> np.ndarray:
    """The preprocessed slices of loaded volumes (the model's modalities, FLAIR first): a parity-gate sample."""
    return segmenter.preprocess([v.data for v in images], images[0].spacing)


def first_slices(segmenter: Segmenter, items: list[Subject]):
    """A function returning :func:`sample_slices` of the first of ``items`` that loads (``None`` when none does)."""
    def sample() -> Optional[np.ndarray]:
        for item in items:
            try:
                return sample_slices(segmenter, load_subject(item, segmenter.modalities)[0])
            except Exception as exc:  # that subject fails again in the loop, and is reported there
                log.debug("%s: no parity-gate sample: %s", item.subject, exc)
        return None

    return sample


def segment_one(segmenter: Segmenter, item: Subject, out_dir: Path, settings: SegmentSettings) -> SubjectResult:
    """Segment one subject and write its files (three, four with the uncertainty map)."""
    start = time.perf_counter()
    images, brain = load_subject(item, segmenter.modalities)
    flair = images[0]
    prob, disagreement, mask = segment_volumes(segmenter, images, brain, settings, item.subject)
    lesions = lesion_table(mask, flair.affine)
    volume_ml = float(np.count_nonzero(mask) * flair.voxel_volume_ml)
    paths = subject_paths(out_dir, item.subject, settings.uncertainty, settings.bids_out, settings.qc)
    save_like(prob, flair, paths["prob"], np.float32)
    save_like(mask, flair, paths["mask"], np.uint8)
    if settings.uncertainty:
        save_like(disagreement, flair, paths["uncertainty"], np.float32)
    if settings.qc:
        write_montage(flair.data, mask, paths["qc"], montage_title(item.subject, len(lesions), volume_ml))
    atomic_write_csv(paths["lesions"], lesions, columns=LESION_COLUMNS)
    return SubjectResult(
        item.subject,
        item.flair,
        lesion_volume_ml=volume_ml,
        lesion_count=len(lesions),
        brain_volume_ml=None if brain is None else float(np.count_nonzero(brain.data > 0.5) * brain.voxel_volume_ml),
        files=paths,
        seconds=time.perf_counter() - start,
    )


def segment_or_fail(segmenter: Optional[Segmenter], item: Subject, out_dir: Path,
                     settings: SegmentSettings) -> tuple[SubjectResult, list[Path]]:
    """One subject's result and, when it failed, the outputs an earlier run left for it (the caller removes
    them once the run has started: :func:`wmhkeras.inference.segment.segment`); the files this attempt wrote are removed at once."""
    paths = list(subject_paths(out_dir, item.subject, bids=settings.bids_out, qc=True).values())
    before = file_stamps(paths)
    try:
        result = segment_one(segmenter, item, out_dir, settings)
        log.info("%s: %d lesions, %.3f mL in %.1f s", item.subject, result.lesion_count,
                 result.lesion_volume_ml, result.seconds)
        return result, []
    except WriteError:  # a full disk or a refused write stops the run: the next subject would fail alike
        remove_written(paths, before)  # the files this attempt wrote; no row in summary.csv, so redone on resume
        raise
    except Exception as exc:  # one broken subject must not stop the others; the error is reported
        log.warning("subject %s failed: %s", item.subject, exc, exc_info=not isinstance(exc, WmhError))
        error = str(exc) if isinstance(exc, WmhError) else f"{exc.__class__.__name__}: {exc}"
        result = SubjectResult(item.subject, item.flair, "failed", one_line(error))
    return result, remove_written(paths, before)


def montage_title(subject: str, count: int, volume_ml: float) -> str:
    return f"{subject}: {count} lesions, {volume_ml:.2f} mL"


def kept_result(item: Subject, row: dict[str, str], out_dir: Path, settings: SegmentSettings) -> SubjectResult:
    """A subject complete from an earlier run, as its ``summary.csv`` row says; with ``qc``, a missing
    montage is drawn from its mask file (no model needed)."""
    paths = subject_paths(out_dir, item.subject, settings.uncertainty, settings.bids_out, settings.qc)
    result = SubjectResult(item.subject, item.flair, lesion_volume_ml=float(row["lesion_volume_ml"]),
                           lesion_count=int(row["lesion_count"]), files=paths, skipped=True,
                           brain_volume_ml=float(row["brain_volume_ml"]) if row.get("brain_volume_ml") else None)
    if settings.qc and not paths["qc"].is_file():
        try:
            flair = load_subject(item, ("flair",))[0][0]
            write_montage(flair.data, load_volume(paths["mask"]).data, paths["qc"],
                          montage_title(item.subject, result.lesion_count, result.lesion_volume_ml))
        except Exception as exc:  # the segmentation is complete; only its picture is missing
            log.warning("%s: no QC montage: %s", item.subject, exc)
    log.info("%s: complete, kept (%d lesions, %.3f mL)", item.subject, result.lesion_count, result.lesion_volume_ml)
    return result


