"""Whole-volume WMH segmentation of many subjects: the library behind ``wmhkeras segment``.

Per subject: :func:`~wmhkeras.inference.predictor.predict_maps` -> a float32 probability map (and, with
flip test-time augmentation, the disagreement map), zeroed outside the brain when a brain mask or
threshold is given (:func:`~wmhkeras.inference.predictor.brain_region`), and
:func:`~wmhkeras.inference.predictor.lesion_mask` -> a uint8 mask, all written with
:func:`~wmhkeras.io.save_like` on the input's exact grid (shape, voxel order, affine, qform/sform codes),
plus a per-lesion CSV; across subjects one ``summary.csv`` and the run record ``segment.json``.

The package, by concern: :mod:`~wmhkeras.inference.sources` (what a model path is, without TensorFlow),
:mod:`~wmhkeras.inference.loaders` (the model as a :class:`~wmhkeras.inference.loaders.Segmenter`),
:mod:`~wmhkeras.inference.inputs` (the subjects to segment), :mod:`~wmhkeras.inference.predictor` (one
volume) and this module (the batch loop and its files).

Order of work, so that mistakes cost nothing: the model source is inspected without TensorFlow, the
inputs are resolved and every file is read and checked (a cheap pass), then the model is loaded, and
only then is anything written. A subject whose files are broken is reported as failed and the others
still complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from wmhkeras.errors import ConfigError, InputError, WmhError
from wmhkeras.evaluation.metrics import lesion_table
from wmhkeras.inference.inputs import SegmentInput, load_subject, resolve_inputs
from wmhkeras.inference.loaders import Segmenter, load_segmenter
from wmhkeras.inference.predictor import brain_region, lesion_mask, predict_maps
from wmhkeras.inference.sources import ModelSpec, inspect_model
from wmhkeras.io import save_like
from wmhkeras.io.files import atomic_write_csv, atomic_write_json
from wmhkeras.io.naming import LESIONS_SUFFIX, MASK_SUFFIX, PROB_SUFFIX, SUMMARY_NAME, UNCERTAINTY_SUFFIX
from wmhkeras.io.provenance import package_versions, utc_now

log = logging.getLogger(__name__)

#: Provenance of a segmentation run (model, settings, versions), written beside the outputs.
RUN_RECORD_NAME = "segment.json"
#: Columns of ``<subject>_lesions.csv`` (:func:`wmhkeras.evaluation.metrics.lesion_table`).
LESION_COLUMNS = ("lesion", "voxels", "volume_ml", "x_mm", "y_mm", "z_mm")


@dataclass(frozen=True)
class SegmentSettings:
    """The options of :func:`segment` that decide its outputs (recorded in ``segment.json``)."""

    threshold: float = 0.5
    min_lesion_mm3: float = 0.0
    tta_flip: bool = False
    batch_size: int = 8
    min_lesion_voxels: int = 0
    uncertainty: bool = False
    brain_threshold: Optional[float] = None

    def check(self) -> None:
        """Raises ConfigError naming the option (and its command-line flag) that is out of range."""
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold (--threshold): {self.threshold!r} is not allowed; use a value in (0, 1]")
        if not self.min_lesion_mm3 >= 0.0:
            raise ConfigError(f"min_lesion_mm3 (--min-lesion-mm3): {self.min_lesion_mm3!r} is not allowed; use 0 or more")
        if isinstance(self.min_lesion_voxels, bool) or not isinstance(self.min_lesion_voxels, int) or self.min_lesion_voxels < 0:
            raise ConfigError(f"min_lesion_voxels (--min-lesion-voxels): {self.min_lesion_voxels!r} is not allowed; "
                              "use an integer >= 0")
        if self.min_lesion_mm3 > 0 and self.min_lesion_voxels > 0:
            raise ConfigError("--min-lesion-mm3 and --min-lesion-voxels both set the minimum lesion size; give one")
        if self.brain_threshold is not None and not 0.0 <= self.brain_threshold <= 1.0:
            raise ConfigError(f"brain_threshold (--brain-threshold): {self.brain_threshold!r} is not allowed; "
                              "use a value in [0, 1] (a fraction of the FLAIR's maximum)")
        if self.uncertainty and not self.tta_flip:
            raise ConfigError("uncertainty (--uncertainty) is the flip test-time augmentation's disagreement; "
                              "it needs tta_flip (--tta)")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"batch_size (--batch-size): {self.batch_size!r} is not allowed; use an integer >= 1")


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

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class SegmentResult:
    """What :func:`segment` did: one :class:`SubjectResult` per subject, in input order."""

    out_dir: Path
    subjects: list[SubjectResult]
    summary_csv: Path
    record_json: Path

    @property
    def n_failed(self) -> int:
        return sum(not s.ok for s in self.subjects)

    @property
    def ok(self) -> bool:
        return self.n_failed == 0


# === Before anything is written ===


def _as_list(value: Sequence[str | Path] | str | Path | None) -> list:
    return [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)


def _check_t1(items: Sequence[SegmentInput], modalities: Optional[Sequence[str]]) -> None:
    """A FLAIR + T1 model needs a T1 for every subject."""
    if modalities and "t1" in modalities:
        missing = [i.subject for i in items if i.t1 is None]
        if missing:
            raise InputError(
                f"the model uses FLAIR + T1 but no T1 is given for {', '.join(missing[:5])}"
                f"{' and others' if len(missing) > 5 else ''}; pass --t1 FILE per FLAIR file or a manifest with a t1 column"
            )


def _check_files(items: Sequence[SegmentInput], modalities: Sequence[str]) -> dict[str, str]:
    """The cheap pass: read and check every subject's files before the model is loaded.

    Returns the error of each subject that will be skipped, by subject id.
    """
    failures: dict[str, str] = {}
    for item in items:
        try:
            load_subject(item, modalities)
        except WmhError as exc:
            failures[item.subject] = str(exc)
            log.warning("subject %s will be skipped: %s", item.subject, exc)
    return failures


def _load_checked(spec: ModelSpec, items: Sequence[SegmentInput], failures: dict[str, str]) -> Optional[Segmenter]:
    """The model of ``spec``, or None when every subject already failed (nothing to segment)."""
    if len(failures) == len(items):
        return None
    segmenter = load_segmenter(spec)
    if "t1" in segmenter.modalities and any(i.t1 is None for i in items):
        raise InputError(f"{spec.path}: the model uses FLAIR + T1 but not every input has a T1; pass --t1 FILE per FLAIR file")
    return segmenter


# === Writing ===


def _output_paths(out_dir: Path, subject: str, uncertainty: bool = True) -> dict[str, Path]:
    paths = {
        "prob": out_dir / f"{subject}{PROB_SUFFIX}",
        "mask": out_dir / f"{subject}{MASK_SUFFIX}",
        "lesions": out_dir / f"{subject}{LESIONS_SUFFIX}",
    }
    if uncertainty:
        paths["uncertainty"] = out_dir / f"{subject}{UNCERTAINTY_SUFFIX}"
    return paths


def _segment_one(segmenter: Segmenter, item: SegmentInput, out_dir: Path, settings: SegmentSettings) -> SubjectResult:
    """Segment one subject and write its files (three, four with the uncertainty map)."""
    start = time.perf_counter()
    images, brain = load_subject(item, segmenter.modalities)
    flair = images[0]
    prob, disagreement = predict_maps(segmenter, [v.data for v in images], settings.batch_size, settings.tta_flip,
                                      flair.spacing)
    region = brain_region(flair.data, None if brain is None else brain.data, settings.brain_threshold)
    if region is not None:
        prob = np.where(region, prob, np.float32(0))
        disagreement = None if disagreement is None else np.where(region, disagreement, np.float32(0))
    mask = lesion_mask(prob, settings.threshold, settings.min_lesion_mm3, flair.voxel_volume_ml * 1000.0,
                       settings.min_lesion_voxels)
    lesions = lesion_table(mask, flair.affine)
    paths = _output_paths(out_dir, item.subject, settings.uncertainty)
    save_like(prob, flair, paths["prob"], np.float32)
    save_like(mask, flair, paths["mask"], np.uint8)
    if settings.uncertainty:
        save_like(disagreement, flair, paths["uncertainty"], np.float32)
    atomic_write_csv(paths["lesions"], lesions, columns=LESION_COLUMNS)
    return SubjectResult(
        item.subject,
        item.flair,
        lesion_volume_ml=float(np.count_nonzero(mask) * flair.voxel_volume_ml),
        lesion_count=len(lesions),
        brain_volume_ml=None if brain is None else float(np.count_nonzero(brain.data > 0.5) * brain.voxel_volume_ml),
        files=paths,
        seconds=time.perf_counter() - start,
    )


def _segment_or_fail(segmenter: Optional[Segmenter], item: SegmentInput, out_dir: Path, settings: SegmentSettings,
                     failures: dict[str, str]) -> SubjectResult:
    """One subject's result; a failure (now or in the cheap pass) is reported and its stale outputs removed."""
    if item.subject in failures:
        result = SubjectResult(item.subject, item.flair, "failed", failures[item.subject])
    else:
        try:
            result = _segment_one(segmenter, item, out_dir, settings)
            log.info("%s: %d lesions, %.3f mL in %.1f s", item.subject, result.lesion_count,
                     result.lesion_volume_ml, result.seconds)
        except Exception as exc:  # one broken subject must not stop the others; the error is reported
            log.warning("subject %s failed: %s", item.subject, exc, exc_info=not isinstance(exc, WmhError))
            result = SubjectResult(item.subject, item.flair, "failed", f"{exc.__class__.__name__}: {exc}"
                                   if not isinstance(exc, WmhError) else str(exc))
    if not result.ok:
        for path in _output_paths(out_dir, item.subject).values():
            path.unlink(missing_ok=True)
    return result


def _write_summary(results: list[SubjectResult], path: Path, with_brain: bool) -> Path:
    columns = ["subject", "lesion_volume_ml", "lesion_count"] + (["brain_volume_ml"] if with_brain else [])
    columns += ["status", "error", "flair"]
    rows = [
        {
            "subject": r.subject,
            "lesion_volume_ml": "" if r.lesion_volume_ml is None else f"{r.lesion_volume_ml:.4f}",
            "lesion_count": "" if r.lesion_count is None else r.lesion_count,
            "brain_volume_ml": "" if r.brain_volume_ml is None else f"{r.brain_volume_ml:.4f}",
            "status": r.status,
            "error": r.error,
            "flair": str(r.flair),
        }
        for r in results
    ]
    return atomic_write_csv(path, rows, columns=columns)


def _segment_all(segmenter: Optional[Segmenter], items: Sequence[SegmentInput], failures: dict[str, str],
                 out_dir: Path, settings: SegmentSettings, progress: Callable[..., Iterable] | None) -> list[SubjectResult]:
    """Every subject in order; ``summary.csv`` is rewritten after each one."""
    with_brain = any(i.brain_mask is not None for i in items)
    results: list[SubjectResult] = []
    for item in progress(items, total=len(items)) if progress else items:
        results.append(_segment_or_fail(segmenter, item, out_dir, settings, failures))
        _write_summary(results, out_dir / SUMMARY_NAME, with_brain)
    return results


def _model_record(spec: Optional[ModelSpec], segmenter: Optional[Segmenter],
                  modalities: Optional[Sequence[str]]) -> dict:
    """The model as loaded (else as inspected): source, format and preprocessing."""
    record = {"source": str(spec.source) if spec else segmenter.source if segmenter else "",
              "format": spec.format if spec else "segmenter"}
    if segmenter is not None:
        return {**record, **segmenter.settings}
    r = spec.resampling
    return {**record, "modalities": list(modalities or ()), "normalisation": spec.normalisation,
            "input_size": None if spec.input_size is None else list(spec.input_size),
            "resample": None if r is None else {"mode": r.mode, "spacing": None if r.spacing is None else list(r.spacing),
                                                "multiple": r.multiple},
            "context_slices": spec.context_slices}


def _write_record(path: Path, model: dict, settings: SegmentSettings, items: Sequence[SegmentInput],
                  results: list[SubjectResult]) -> Path:
    """``segment.json``: the model, the settings (every option), brain masks, the outcome and the versions."""
    return atomic_write_json(path, {
        "created": utc_now(),
        "model": model,
        "settings": asdict(settings),
        "brain_masks": {i.subject: str(i.brain_mask) for i in items if i.brain_mask is not None},
        "subjects": {"total": len(results), "ok": sum(r.ok for r in results), "failed": sum(not r.ok for r in results)},
        "summary": SUMMARY_NAME,
        "versions": package_versions(),
    })


# === Many subjects ===


def segment(
    model: str | Path | Segmenter,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    threshold: float = 0.5,
    min_lesion_mm3: float = 0.0,
    tta_flip: bool = False,
    batch_size: int = 8,
    brain_mask: Sequence[str | Path] | str | Path | None = None,
    t1: Sequence[str | Path] | str | Path | None = None,
    progress: Callable[..., Iterable] | None = None,
    *,
    min_lesion_voxels: int = 0,
    uncertainty: bool = False,
    brain_threshold: Optional[float] = None,
) -> SegmentResult:
    """Segment every subject of ``inputs`` and write its outputs into ``out_dir``.

    Args:
        model: a ``.keras`` file, a run folder, a SavedModel folder or a ``.tflite`` file
            (:func:`~wmhkeras.inference.sources.inspect_model`) or a loaded :class:`Segmenter`.
        inputs: FLAIR files, folders or manifest CSVs (rules: :func:`~wmhkeras.inference.inputs.resolve_inputs`).
        threshold: probability at and above which a voxel is lesion, in (0, 1].
        min_lesion_mm3, min_lesion_voxels: 26-connected lesions smaller than this volume (mm^3) or voxel
            count are removed from the mask (one of the two).
        tta_flip: average with the prediction on left-right mirrored slices.
        batch_size: slices per model call.
        brain_mask, t1: one file per FLAIR file given one by one (or a single path). Predictions outside
            the brain mask (voxels <= 0.5) are zeroed and the brain volume is reported.
        progress: wraps the loop over subjects, called as ``progress(iterable, total=n)`` (e.g. ``tqdm``).
        uncertainty: also write the flip disagreement ``|p - p_flipped|`` (implies ``tta_flip``).
        brain_threshold: zero predictions where the max-normalised FLAIR is below this fraction.

    Writes, per subject ``s``: ``s_wmh_prob.nii.gz`` (float32), ``s_wmh_mask.nii.gz`` (uint8), with
    ``uncertainty`` ``s_wmh_uncertainty.nii.gz`` (float32), on the FLAIR's exact grid, and
    ``s_lesions.csv``; across subjects ``summary.csv`` (rewritten after every subject) and ``segment.json``
    (model, settings, versions). A failed subject has no outputs (stale ones of the same name are
    removed) and a ``failed`` row with the error in ``summary.csv``.

    Raises:
        InputError / ConfigError: before anything is read or written - a bad model source, inputs that
            do not exist or do not pair, a model that needs T1 for a subject without one, bad options.
    """
    settings = SegmentSettings(threshold, min_lesion_mm3, tta_flip or uncertainty, batch_size, min_lesion_voxels,
                               uncertainty, brain_threshold)
    settings.check()
    spec = None if isinstance(model, Segmenter) else inspect_model(model)
    items = resolve_inputs(inputs, _as_list(t1), _as_list(brain_mask))
    modalities = model.modalities if isinstance(model, Segmenter) else spec.modalities
    _check_t1(items, modalities)
    failures = _check_files(items, modalities or ("flair",))
    segmenter = model if isinstance(model, Segmenter) else _load_checked(spec, items, failures)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = _segment_all(segmenter, items, failures, out_dir, settings, progress)
    record = _model_record(spec, segmenter, modalities)
    record_json = _write_record(out_dir / RUN_RECORD_NAME, record, settings, items, results)
    return SegmentResult(out_dir, results, out_dir / SUMMARY_NAME, record_json)
