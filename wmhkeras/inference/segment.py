"""Whole-volume WMH segmentation of many subjects: the library behind ``wmhkeras segment``.

Each subject is :mod:`~wmhkeras.inference.per_subject` (the steps on its volumes, its files); across
subjects one ``summary.csv`` (:mod:`~wmhkeras.inference.summary`), the run record ``segment.json``
(:mod:`~wmhkeras.inference.record`, with the run's :class:`~wmhkeras.inference.record.SegmentSettings`)
and with ``qc`` a ``qc.html``. Batch runs (:mod:`~wmhkeras.inference.batch`): a shard of the subjects, and
resuming a folder by keeping the subjects whose outputs are complete.

The package, by concern: :mod:`~wmhkeras.inference.sources` (what a model path is, without TensorFlow),
:mod:`~wmhkeras.inference.loaders` (the model as a :class:`~wmhkeras.inference.loaders.Segmenter`),
:mod:`~wmhkeras.inference.inputs` (the subjects to segment), :mod:`~wmhkeras.inference.predictor` (one
volume) and this module (the batch loop and its files).

Order of work, so that mistakes cost nothing: the model source is inspected without TensorFlow, the
inputs are resolved (subject ids checked: names, never paths), every input file's header is checked
(:func:`~wmhkeras.inference.inputs.check_input_headers`: a problem there refuses the run, nothing
written), then the model is loaded and its precision decided once
(:func:`~wmhkeras.inference.precision.decide_precision`, on the first subject to segment), and only then
is anything written. A subject whose voxels are broken (NaN, damaged compressed data) is reported as
failed and the others still complete; when no subject succeeds the run raises
:class:`~wmhkeras.errors.InputError` and leaves the output folder as it found it
(:mod:`~wmhkeras.inference.output_folder`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Union

from wmhkeras.errors import InputError
from wmhkeras.inference.batch import is_complete, parse_shard, select_shard
from wmhkeras.inference.inputs import as_list, bids_output, check_input_headers, resolve_inputs
from wmhkeras.inference.loaders import Segmenter
from wmhkeras.inference.output_folder import FolderGuard
from wmhkeras.inference.per_subject import (  # noqa: F401  (LESION_COLUMNS, segment_volumes: public here too)
    LESION_COLUMNS,
    SubjectResult,
    first_slices,
    kept_result,
    segment_or_fail,
    segment_volumes,
    subject_paths,
)
from wmhkeras.inference.precision import check_precision, decide_precision, is_keras
from wmhkeras.inference.preflight import check_t1, load_checked
from wmhkeras.inference.qc import QC_HTML_NAME, montage_path, volume_range, write_qc_html
from wmhkeras.inference.record import (
    RUN_RECORD_NAME,
    SegmentSettings,
    check_previous_record,
    model_record,
    write_record,
)
from wmhkeras.inference.sources import ModelSpec, inspect_model
from wmhkeras.inference.summary import PARTICIPANT_COLUMN, flag_rows, merge_rows, read_summary, write_summary
from wmhkeras.io.bids import DerivativeOutput, write_derivative
from wmhkeras.io.builtin_models import BUILTIN_PREFIX, default_model
from wmhkeras.io.files import make_folder
from wmhkeras.io.lock import holds_folder
from wmhkeras.io.naming import SUMMARY_NAME
from wmhkeras.io.subject import Subject

log = logging.getLogger(__name__)

#: A path option of :func:`segment`: given once, once per FLAIR file, or not at all.
PathOption = Optional[Union[Sequence[Union[str, Path]], str, Path]]

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
        by_subject.get(i.subject), i.flair, subject_paths(out_dir, i.subject, settings.uncertainty, settings.bids_out))}
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
            results.append(kept_result(item, complete[item.subject], out_dir, settings))
        else:
            result, left = segment_or_fail(segmenter, item, out_dir, settings)
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
def segment(model: str | Path | Segmenter | None, inputs: Sequence[str | Path], out_dir: str | Path,
            settings: Optional[SegmentSettings] = None, *, t1: PathOption = None, brain_mask: PathOption = None,
            skip_existing: bool = False, shard: str | tuple[int, int] | None = None,
            progress: Callable[..., Iterable] | None = None) -> SegmentResult:
    """Segment every subject of ``inputs`` with ``settings`` and write its outputs into ``out_dir``.

    Args:
        model: a ``.keras`` file, a run folder, a SavedModel folder, a ``.tflite`` file or a built-in model's
            name (:func:`~wmhkeras.inference.sources.inspect_model`), a loaded :class:`Segmenter`, or None for
            the default built-in model (``segment.json`` records ``model.builtin`` and ``model.default``).
        inputs: FLAIR files, folders or manifest CSVs (rules: :func:`~wmhkeras.inference.inputs.resolve_inputs`).
        settings: the options that decide the outputs (:class:`~wmhkeras.inference.record.SegmentSettings`;
            None: the defaults).
        t1, brain_mask: one file per FLAIR file given one by one (or a single path).
        skip_existing: keep the subjects whose outputs in ``out_dir`` are complete
            (:func:`~wmhkeras.inference.batch.is_complete`) and merge ``summary.csv``'s earlier rows with
            this run's (one row per subject, the new one wins); ``out_dir``'s ``segment.json`` must name the
            same model and settings.
        shard: ``"i/n"`` (1-based): only every n-th subject of the subjects sorted by id, from the i-th.
        progress: wraps the loop over subjects, called as ``progress(iterable, total=n)`` (e.g. ``tqdm``).

    Writes each subject's files (:func:`~wmhkeras.inference.per_subject.segment_one`; a failed subject has
    none and a ``failed`` row), ``summary.csv`` (rewritten after every subject, with the QC flags of
    :func:`~wmhkeras.inference.qc.flag_rows`) and ``segment.json``, both once a subject succeeded.

    Raises:
        InputError / ConfigError: before anything is read or written - a bad model source or option, inputs
            that do not exist or do not pair, subject ids that are not plain names or collide, a file whose
            header fails the pre-pass, a model that needs T1 for a subject without one; or, after the work,
            when no subject succeeded (the first error named): ``out_dir`` is then left as it was found.
        WriteError: an output cannot be written (a full disk, no permission): the run stops there; the
            subjects before are complete and in ``summary.csv``, the subject being written has no files.
    """
    settings = settings or SegmentSettings()
    settings.check()
    shard = parse_shard(shard)
    spec = None if isinstance(model, Segmenter) else default_spec() if model is None else inspect_model(model)
    if spec is not None:  # refused before any work
        check_precision(settings.precision, spec.format, spec.path, spec.card)
    elif model is not None:
        check_precision(settings.precision, "keras" if is_keras(model) else "segmenter", model.source or None, model.card)
    items = select_shard(resolve_inputs(inputs, as_list(t1), as_list(brain_mask)), shard)
    settings = replace(settings, bids_out=bids_output(items, settings.bids_out))
    modalities = spec.modalities if spec else model.modalities
    check_t1(items, modalities)
    out_dir = Path(out_dir)
    guard = FolderGuard(out_dir)  # what the folder holds now: left so when no subject succeeds
    previous = _previous(out_dir, items, settings, str(spec.source) if spec else model.source) if skip_existing else ([], {})
    todo = [i for i in items if i.subject not in previous[1]]
    check_input_headers(items, modalities or ("flair",))  # the pre-pass: a bad file refuses the run here
    segmenter = model if spec is None else load_checked(spec, items, todo, modalities)
    if segmenter is not None and todo:  # the precision, decided once
        segmenter = decide_precision(segmenter, settings.precision, first_slices(segmenter, todo), settings.threshold)
    guard.expect(p for i in todo for p in subject_paths(out_dir, i.subject, bids=settings.bids_out, qc=True).values())
    record = model_record(spec, segmenter, modalities, default=model is None)
    make_folder(out_dir)
    results = _segment_all(segmenter, items, out_dir, settings, progress, previous, start=lambda: write_record(
        out_dir / RUN_RECORD_NAME, record, settings, items, [], "running", shard))
    return _finish(out_dir, guard, results, record, settings, items, shard)


def _finish(out_dir: Path, guard: FolderGuard, results: list[SubjectResult], record: dict, settings: SegmentSettings,
            items: Sequence[Subject], shard: Optional[tuple[int, int]]) -> SegmentResult:
    """The end of a run: refused when no subject succeeded (the folder restored), else ``qc.html``, the BIDS
    derivative's files and the final ``segment.json``."""
    if items and not any(r.ok for r in results):
        guard.restore()
        raise InputError(_nothing_segmented(results))
    if settings.qc:
        _write_qc_index(out_dir)
    if settings.bids_out:
        roots = {i.subject: i.bids_root for i in items}
        write_derivative(out_dir, [DerivativeOutput(r.files, r.flair, roots.get(r.subject)) for r in results if r.ok],
                         record, asdict(settings))
    record_json = write_record(out_dir / RUN_RECORD_NAME, record, settings, items, results, shard=shard)
    return SegmentResult(out_dir, results, out_dir / SUMMARY_NAME, record_json)
