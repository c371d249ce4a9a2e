"""Whole-volume WMH segmentation of many subjects: the library behind ``wmhkeras segment``.

Per subject: :func:`~wmhkeras.inference.predictor.predict_maps` -> a float32 probability map (and, with
flip test-time augmentation, the disagreement map), zeroed outside the brain when a brain mask or
threshold is given (:func:`~wmhkeras.inference.predictor.brain_region`), and
:func:`~wmhkeras.inference.predictor.lesion_mask` -> a uint8 mask, all written with
:func:`~wmhkeras.io.save_like` on the input's exact grid (shape, voxel order, affine, qform/sform codes),
plus a per-lesion CSV (and with ``qc`` a montage, :mod:`~wmhkeras.inference.qc`); across subjects one
``summary.csv`` (:mod:`~wmhkeras.inference.summary`), the run record ``segment.json`` and with ``qc`` a
``qc.html``. Batch runs (:mod:`~wmhkeras.inference.batch`): a shard of the subjects, and resuming a folder
by keeping the subjects whose outputs are complete.

The package, by concern: :mod:`~wmhkeras.inference.sources` (what a model path is, without TensorFlow),
:mod:`~wmhkeras.inference.loaders` (the model as a :class:`~wmhkeras.inference.loaders.Segmenter`),
:mod:`~wmhkeras.inference.inputs` (the subjects to segment), :mod:`~wmhkeras.inference.predictor` (one
volume) and this module (the batch loop and its files).

Order of work, so that mistakes cost nothing: the model source is inspected without TensorFlow, the
inputs are resolved (subject ids checked: names, never paths), every input file's header is checked
(:func:`~wmhkeras.inference.inputs.check_input_headers`: a problem there refuses the run, nothing
written), then the model is loaded, and only then is anything written. A subject whose voxels are
broken (NaN, damaged compressed data) is reported as failed and the others still complete; when no
subject succeeds the run raises :class:`~wmhkeras.errors.InputError` and leaves the output folder as it
found it (:mod:`~wmhkeras.inference.output_folder`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from wmhkeras.errors import InputError, WmhError, WriteError
from wmhkeras.evaluation.metrics import lesion_table
from wmhkeras.inference.batch import is_complete, parse_shard, select_shard
from wmhkeras.inference.inputs import bids_output, check_input_headers, load_subject, resolve_inputs
from wmhkeras.inference.loaders import Segmenter
from wmhkeras.inference.output_folder import FolderGuard, file_stamps, remove_written
from wmhkeras.inference.precision import check_precision, first_image_precision, is_keras
from wmhkeras.inference.predictor import brain_region, lesion_mask, predict_maps
from wmhkeras.inference.preflight import as_list, check_t1, load_checked
from wmhkeras.inference.qc import QC_HTML_NAME, montage_path, volume_range, write_montage, write_qc_html
from wmhkeras.inference.record import (
    RUN_RECORD_NAME,
    SegmentSettings,
    check_previous_record,
    model_record,
    write_record,
)
from wmhkeras.inference.sources import ModelSpec, inspect_model
from wmhkeras.inference.summary import PARTICIPANT_COLUMN, flag_rows, merge_rows, read_summary, write_summary
from wmhkeras.io import load_volume, save_like
from wmhkeras.io.bids import DerivativeOutput, output_paths, write_derivative
from wmhkeras.io.builtin_models import BUILTIN_PREFIX, default_model
from wmhkeras.io.files import atomic_write_csv, make_folder
from wmhkeras.io.header_check import one_line
from wmhkeras.io.lock import holds_folder
from wmhkeras.io.naming import SUMMARY_NAME
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


# === Writing ===


def _output_paths(out_dir: Path, subject: str, uncertainty: bool = True, bids: bool = False,
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
    TTA), and the thresholded mask with small lesions removed. ``name`` labels the voxel-size and
    skull-stripping warnings (the latter only without a brain mask).
    """
    flair = images[0]
    segmenter.warn_voxel_size(flair.spacing, name)  # warns when far from the card's training data
    if brain is None:
        segmenter.warn_skull(flair.data, flair.voxel_volume_ml, name)  # warns when it looks like a whole head
    first_image_precision(segmenter, settings.precision, images, settings.threshold)  # the parity gate, once
    prob, disagreement = predict_maps(segmenter, [v.data for v in images], settings.batch_size, settings.tta_flip,
                                      flair.spacing)
    region = brain_region(flair.data, None if brain is None else brain.data, settings.brain_threshold)
    if region is not None:
        prob = np.where(region, prob, np.float32(0))
        disagreement = None if disagreement is None else np.where(region, disagreement, np.float32(0))
    mask = lesion_mask(prob, settings.threshold, settings.min_lesion_mm3, flair.voxel_volume_ml * 1000.0,
                       settings.min_lesion_voxels)
    return prob, disagreement, mask


def _segment_one(segmenter: Segmenter, item: Subject, out_dir: Path, settings: SegmentSettings) -> SubjectResult:
    """Segment one subject and write its files (three, four with the uncertainty map)."""
    start = time.perf_counter()
    images, brain = load_subject(item, segmenter.modalities)
    flair = images[0]
    prob, disagreement, mask = segment_volumes(segmenter, images, brain, settings, item.subject)
    lesions = lesion_table(mask, flair.affine)
    volume_ml = float(np.count_nonzero(mask) * flair.voxel_volume_ml)
    paths = _output_paths(out_dir, item.subject, settings.uncertainty, settings.bids_out, settings.qc)
    save_like(prob, flair, paths["prob"], np.float32)
    save_like(mask, flair, paths["mask"], np.uint8)
    if settings.uncertainty:
        save_like(disagreement, flair, paths["uncertainty"], np.float32)
    if settings.qc:
        write_montage(flair.data, mask, paths["qc"], _montage_title(item.subject, len(lesions), volume_ml))
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


def _segment_or_fail(segmenter: Optional[Segmenter], item: Subject, out_dir: Path,
                     settings: SegmentSettings) -> tuple[SubjectResult, list[Path]]:
    """One subject's result and, when it failed, the outputs an earlier run left for it (the caller removes
    them once the run has started: :func:`_segment_all`); the files this attempt wrote are removed at once."""
    paths = list(_output_paths(out_dir, item.subject, bids=settings.bids_out, qc=True).values())
    before = file_stamps(paths)
    try:
        result = _segment_one(segmenter, item, out_dir, settings)
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


def _montage_title(subject: str, count: int, volume_ml: float) -> str:
    return f"{subject}: {count} lesions, {volume_ml:.2f} mL"


def _kept(item: Subject, row: dict[str, str], out_dir: Path, settings: SegmentSettings) -> SubjectResult:
    """A subject complete from an earlier run, as its ``summary.csv`` row says; with ``qc``, a missing
    montage is drawn from its mask file (no model needed)."""
    paths = _output_paths(out_dir, item.subject, settings.uncertainty, settings.bids_out, settings.qc)
    result = SubjectResult(item.subject, item.flair, lesion_volume_ml=float(row["lesion_volume_ml"]),
                           lesion_count=int(row["lesion_count"]), files=paths, skipped=True,
                           brain_volume_ml=float(row["brain_volume_ml"]) if row.get("brain_volume_ml") else None)
    if settings.qc and not paths["qc"].is_file():
        try:
            flair = load_subject(item, ("flair",))[0][0]
            write_montage(flair.data, load_volume(paths["mask"]).data, paths["qc"],
                          _montage_title(item.subject, result.lesion_count, result.lesion_volume_ml))
        except Exception as exc:  # the segmentation is complete; only its picture is missing
            log.warning("%s: no QC montage: %s", item.subject, exc)
    log.info("%s: complete, kept (%d lesions, %.3f mL)", item.subject, result.lesion_count, result.lesion_volume_ml)
    return result


def _summary_row(r: SubjectResult, with_brain: bool, with_participant: bool = False) -> dict[str, str]:
    """The ``summary.csv`` row of a result (the QC columns are added when the table is written)."""
    row = {"subject": r.subject, "lesion_volume_ml": "" if r.lesion_volume_ml is None else f"{r.lesion_volume_ml:.4f}",
           "lesion_count": "" if r.lesion_count is None else str(r.lesion_count),
           "status": r.status, "error": r.error, "flair": str(r.flair)}
    if with_brain:
        row["brain_volume_ml"] = "" if r.brain_volume_ml is None else f"{r.brain_volume_ml:.4f}"
    if with_participant:
        row[PARTICIPANT_COLUMN] = r.participant or ""
    return row


def _previous(out_dir: Path, items: Sequence[Subject], settings: SegmentSettings,
              source: str) -> tuple[list[dict[str, str]], dict[str, dict[str, str]]]:
    """For ``skip_existing``: the rows of the folder's ``summary.csv`` and, by subject, the complete ones
    (:func:`~wmhkeras.inference.batch.is_complete`); refused when the folder was made with other settings."""
    check_previous_record(out_dir / RUN_RECORD_NAME, source, asdict(settings))
    summary = out_dir / SUMMARY_NAME
    rows = read_summary(summary) if summary.is_file() else []
    by_subject = {row["subject"]: row for row in rows}
    complete = {i.subject: by_subject[i.subject] for i in items if is_complete(
        by_subject.get(i.subject), i.flair, _output_paths(out_dir, i.subject, settings.uncertainty, settings.bids_out))}
    log.info("%s: %d of %d subjects complete from an earlier run, kept", out_dir, len(complete), len(items))
    return rows, complete


def _segment_all(segmenter: Optional[Segmenter], items: Sequence[Subject], out_dir: Path,
                 settings: SegmentSettings, progress: Callable[..., Iterable] | None,
                 previous: tuple[list[dict[str, str]], dict[str, dict[str, str]]] = ([], {}),
                 start: Callable[[], object] = lambda: None) -> list[SubjectResult]:
    """Every subject in order, a complete one of ``previous`` (rows, complete rows) kept.

    The run starts (``start()``, then ``summary.csv``) at its first subject that succeeds or is kept:
    until then nothing is written but that subject's own outputs. From then on ``summary.csv`` (the
    earlier rows merged with this run's) is rewritten after each segmented subject and at the end, and
    the outputs an earlier run left for a subject that failed now are removed.
    """
    old_rows, complete = previous
    with_brain = any(i.brain_mask is not None for i in items)
    with_participant = any(i.participant for i in items)
    results: list[SubjectResult] = []
    stale: list[Path] = []
    started = False

    def write() -> Path:
        return write_summary(out_dir / SUMMARY_NAME, merge_rows(old_rows, [_summary_row(r, with_brain, with_participant)
                                                                           for r in results if not r.skipped]))

    for item in progress(items, total=len(items)) if progress else items:
        if item.subject in complete:  # its row is in old_rows already
            results.append(_kept(item, complete[item.subject], out_dir, settings))
        else:
            result, left = _segment_or_fail(segmenter, item, out_dir, settings)
            results.append(replace(result, participant=item.participant))
            stale += left
        if not started and results[-1].ok:
            started = True
            start()
        if started and stale:
            for path in stale:
                path.unlink(missing_ok=True)
            stale.clear()
        if started and item.subject not in complete:
            write()
    if started or not items:
        write()  # also for an empty shard, whose empty table `wmhkeras summarize` reads
    return results


def _nothing_segmented(results: Sequence[SubjectResult]) -> str:
    """The one-line error of a run in which every subject failed."""
    first = results[0]
    return first.error if len(results) == 1 else f"no subject could be segmented; the first, {first.subject}: {first.error}"


def _write_qc_index(out_dir: Path) -> Path:
    """``qc.html`` over every row of the folder's ``summary.csv`` (earlier runs' subjects included)."""
    rows = flag_rows(read_summary(out_dir / SUMMARY_NAME))
    return write_qc_html(out_dir / QC_HTML_NAME, rows, {r["subject"]: montage_path(out_dir, r["subject"]) for r in rows},
                         volume_range(rows))


# === Many subjects ===


def default_spec() -> ModelSpec:
    """The default built-in model (:func:`~wmhkeras.io.builtin_models.default_model`), inspected, with a log line."""
    builtin = default_model()
    log.info("no model given: segmenting with the built-in model %s (the default; wmhkeras models show %s)",
             builtin.name, builtin.name)
    return inspect_model(f"{BUILTIN_PREFIX}{builtin.name}")


@holds_folder("out_dir", "segment")  # one process per output folder: a second one is refused (wmhkeras.io.lock)
def segment(
    model: str | Path | Segmenter | None,
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
    bids_out: Optional[bool] = None,
    skip_existing: bool = False,
    shard: str | tuple[int, int] | None = None,
    qc: bool = False,
    precision: str = "float32",
) -> SegmentResult:
    """Segment every subject of ``inputs`` and write its outputs into ``out_dir``.

    Args:
        model: a ``.keras`` file, a run folder, a SavedModel folder, a ``.tflite`` file or a built-in model's
            name (:func:`~wmhkeras.inference.sources.inspect_model`), a loaded :class:`Segmenter`, or None for
            the default built-in model (``segment.json`` records ``model.builtin`` and ``model.default``).
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
        bids_out: write BIDS derivatives (:func:`~wmhkeras.io.bids.output_paths`, a JSON sidecar per map,
            ``dataset_description.json``); None: when every input is a BIDS dataset.
        skip_existing: keep the subjects whose outputs in ``out_dir`` are complete
            (:func:`~wmhkeras.inference.batch.is_complete`) and merge ``summary.csv``'s earlier rows with
            this run's (one row per subject, the new one wins); ``out_dir``'s ``segment.json`` must name the
            same model and settings.
        shard: ``"i/n"`` (1-based): only every n-th subject of the subjects sorted by id, from the i-th.
        qc: write a prediction-only montage ``qc/<subject>.png`` per subject and ``qc.html``
            (:mod:`~wmhkeras.inference.qc`).
        precision: ``auto``, ``float32`` or ``bfloat16`` (Keras models only), behind a parity gate
            (:mod:`~wmhkeras.inference.precision`); the choice is ``segment.json``'s ``model.precision``.

    Writes, per subject ``s``: ``s_wmh_prob.nii.gz`` (float32), ``s_wmh_mask.nii.gz`` (uint8), with
    ``uncertainty`` ``s_wmh_uncertainty.nii.gz`` (float32), on the FLAIR's exact grid, and
    ``s_lesions.csv``; across subjects ``summary.csv`` (sorted by subject, rewritten after every subject,
    with the cohort QC flags of :func:`~wmhkeras.inference.qc.flag_rows`) and ``segment.json``
    (model, settings, versions), both first written once a subject succeeded. A failed subject has no
    outputs (stale ones of the same name are removed) and a ``failed`` row with the error in ``summary.csv``.

    Raises:
        InputError / ConfigError: before anything is read or written - a bad model source, inputs that
            do not exist or do not pair, subject ids that are not plain names or collide, a file whose
            header fails the pre-pass (:func:`~wmhkeras.inference.inputs.check_input_headers`), a model
            that needs T1 for a subject without one, bad options; or, after the work, when no subject
            succeeded (the first error named): ``out_dir`` is then left as it was found (removed if this
            run created it, :mod:`~wmhkeras.inference.output_folder`).
        WriteError: an output cannot be written (a full disk, no permission): the run stops there; the
            subjects before are complete and in ``summary.csv``, the subject being written has no files.
    """
    settings = SegmentSettings(threshold, min_lesion_mm3, tta_flip or uncertainty, batch_size, min_lesion_voxels,
                               uncertainty, brain_threshold, qc=qc, precision=precision)
    settings.check()
    shard = parse_shard(shard)
    default = model is None
    spec = None if isinstance(model, Segmenter) else default_spec() if default else inspect_model(model)
    check_precision(precision, spec.format if spec else "keras" if is_keras(model) else "segmenter",
                    spec.path if spec else model.source or None, spec.card if spec else model.card)
    items = select_shard(resolve_inputs(inputs, as_list(t1), as_list(brain_mask)), shard)
    settings = replace(settings, bids_out=bids_output(items, bids_out))
    modalities = model.modalities if isinstance(model, Segmenter) else spec.modalities
    check_t1(items, modalities)
    out_dir = Path(out_dir)
    guard = FolderGuard(out_dir)  # what the folder holds now: left so when no subject succeeds
    previous = _previous(out_dir, items, settings, str(spec.source) if spec else model.source) if skip_existing else ([], {})
    todo = [i for i in items if i.subject not in previous[1]]
    check_input_headers(items, modalities or ("flair",))  # the pre-pass: a bad file refuses the run here
    segmenter = model if isinstance(model, Segmenter) else load_checked(spec, items, todo, modalities)

    guard.expect(p for i in todo for p in _output_paths(out_dir, i.subject, bids=settings.bids_out, qc=True).values())
    make_folder(out_dir)

    results = _segment_all(segmenter, items, out_dir, settings, progress, previous, start=lambda: write_record(
        out_dir / RUN_RECORD_NAME, model_record(spec, segmenter, modalities, default), settings, items, [], "running", shard))
    if items and not any(r.ok for r in results):
        guard.restore()
        raise InputError(_nothing_segmented(results))
    if settings.qc:
        _write_qc_index(out_dir)
    record = model_record(spec, segmenter, modalities, default)
    if settings.bids_out:
        roots = {i.subject: i.bids_root for i in items}
        write_derivative(out_dir, [DerivativeOutput(r.files, r.flair, roots.get(r.subject)) for r in results if r.ok],
                         record, asdict(settings))
    record_json = write_record(out_dir / RUN_RECORD_NAME, record, settings, items, results, shard=shard)
    return SegmentResult(out_dir, results, out_dir / SUMMARY_NAME, record_json)
