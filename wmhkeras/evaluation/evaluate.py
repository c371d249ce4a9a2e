"""Evaluation of segmentations against ground truth: the library behind ``wmhkeras evaluate``.

Predictions and ground truth are matched by subject id, every pair is scored with
:func:`wmhkeras.evaluation.metrics.evaluate_arrays` (the MICCAI 2017 WMH challenge metrics, computed on the
truth file's own voxel grid and geometry), and :mod:`wmhkeras.evaluation.reports` writes the per-subject CSV, the
summary (mean and SD per metric, overall and per site), the paper's Table 1 and Figure 5, and one QC
montage per subject. A prediction must lie on its truth's grid: it is never resampled.

No TensorFlow is imported here (checked by the tests), so ``wmhkeras evaluate`` starts fast.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from wmhkeras.data.datasets import MANIFEST_NAME, load_dataset, read_manifest
from wmhkeras.errors import InputError, WmhError
from wmhkeras.io import check_same_grid, load_volume
from wmhkeras.io.naming import MASK_SUFFIX, is_nifti, strip_nifti, subject_id

log = logging.getLogger(__name__)

#: Trailing name tags of ground-truth files, removed to get the subject id (``sub01_wmh.nii.gz``).
TRUTH_TAGS = ("wmh", "GOLD_STANDARD", "labels", "label", "truth", "seg", "mask")
#: Trailing name tags of prediction files (``sub01_wmh_mask.nii.gz`` is what ``wmhkeras segment`` writes).
PRED_TAGS = ("wmh_mask", "mask", "prediction", "pred", "seg")
#: Tags of image files found beside labels: FLAIR is shown in the QC montage, T1 is skipped.
IMAGE_TAGS = ("FLAIR", "T1")
#: Column of a prediction manifest CSV that holds the file (``subject,pred``).
PRED_COLUMNS = ("pred", "prediction", "mask")

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
TABLE_MD = "table.md"
FIGURE5_PNG = "figure5_avd_vs_pcd.png"
REPORT_MD = "report.md"
QC_DIR = "qc"


@dataclass(frozen=True)
class TruthCase:
    """One ground-truth subject: its label file, its FLAIR (for QC) when known, and its site."""

    subject: str
    label: Path
    flair: Optional[Path] = None
    site: str = "site0"


@dataclass
class EvaluationResult:
    """What :func:`evaluate` wrote: per-subject ``rows`` (truth order), the ``summary`` and the files."""

    out_dir: Path
    rows: list[dict]
    summary: dict
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def n_failed(self) -> int:
        return sum(row["status"] != "ok" for row in self.rows)


# === Finding the files ===


def _has_tag(path: Path, tags) -> bool:
    stem = strip_nifti(path.name).lower()
    return any(stem.endswith(t.lower()) for t in tags)


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith("."))


def _flair_beside(label: Path) -> Optional[Path]:
    """The FLAIR next to a label: the label's name with its tag replaced by ``FLAIR`` (any NIfTI suffix)."""
    stem = strip_nifti(label.name)
    for tag in TRUTH_TAGS:
        if stem.lower().endswith(tag.lower()):
            base = stem[: len(stem) - len(tag)]
            for suffix in (".nii.gz", ".nii"):
                candidate = label.with_name(f"{base}FLAIR{suffix}")
                if candidate.is_file():
                    return candidate.resolve()
    return None


def _holdout(run: Path) -> list[TruthCase]:
    """The hold-out subjects of a training run folder (``split.json`` over the dataset of ``config.yaml``)."""
    from wmhkeras.config import load_config
    from wmhkeras.data.splits import load_split
    from wmhkeras.io.run_folder import RunFolder

    folder = RunFolder(run)
    subjects = load_dataset(load_config(folder.config).data.path)
    holdout = load_split(folder.split, subjects)["holdout"]
    if not holdout:
        raise InputError(f"{folder.split}: the hold-out list is empty; the run kept no subject for evaluation")
    by_id = {s.subject: s for s in subjects}
    return _cases([by_id[i] for i in holdout], f"{run} hold-out")


def _cases(subjects, source) -> list[TruthCase]:
    cases = [TruthCase(s.subject, s.label, s.flair, s.site) for s in subjects if s.label is not None]
    unlabelled = len(subjects) - len(cases)
    if unlabelled:
        log.warning("%s: %d subjects have no label file and are not evaluated", source, unlabelled)
    if not cases:
        raise InputError(f"{source}: no subject has a label file")
    return cases


def resolve_truth(path: str | Path) -> list[TruthCase]:
    """Ground-truth subjects from ``path`` (no volume is read here).

    ``path`` is one of: a label file (subject id: its name without a trailing ``wmh``/``GOLD_STANDARD``/
    ``label``/``seg``/``mask`` tag, else its folder's name; its FLAIR is the file beside it with that tag
    replaced by ``FLAIR``); a manifest CSV or a folder with ``manifest.csv`` (subjects with a ``label``);
    a training run folder (``config.yaml`` + ``split.json``: its hold-out subjects); a folder of label
    files (FLAIR/T1 files beside them are images, not labels); or a MICCAI 2017 layout folder.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: ground truth not found")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return _cases(read_manifest(path), path)
        if not is_nifti(path):
            raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz), a folder or a manifest CSV")
        return [TruthCase(subject_id(path, TRUTH_TAGS), path.resolve(), _flair_beside(path))]
    if (path / "split.json").is_file() and (path / "config.yaml").is_file():
        return _holdout(path)
    if (path / MANIFEST_NAME).is_file():
        return _cases(read_manifest(path / MANIFEST_NAME), path / MANIFEST_NAME)
    labels = [p for p in _nifti_files(path) if not _has_tag(p, IMAGE_TAGS)]
    if labels:
        return [TruthCase(subject_id(p, TRUTH_TAGS), p.resolve(), _flair_beside(p)) for p in labels]
    return _cases(load_dataset(path), path)


def resolve_predictions(path: str | Path) -> dict[str, Path]:
    """Predictions by subject id from ``path`` (no volume is read here).

    ``path`` is one of: a NIfTI file; a ``wmhkeras segment`` output folder (its ``*_wmh_mask.nii.gz``
    files, subject = the name before the suffix); another folder (every NIfTI file directly inside except
    ``*_wmh_prob`` and FLAIR/T1 files, the id without a trailing ``mask``/``pred``/``seg`` tag); or a CSV
    with the columns ``subject`` and ``pred`` (paths relative to the CSV).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: predictions not found")
    if path.is_file() and path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            column = next((c for c in PRED_COLUMNS if c in (reader.fieldnames or ())), None)
            if "subject" not in (reader.fieldnames or ()) or column is None:
                raise InputError(f"{path}: a prediction CSV needs the columns subject and pred, found {reader.fieldnames}")
            preds = {row["subject"].strip(): (path.parent / row[column].strip()).resolve() for row in reader}
    elif path.is_file():
        if not is_nifti(path):
            raise InputError(f"{path}: not a NIfTI file (.nii, .nii.gz), a folder or a CSV")
        preds = {subject_id(path, PRED_TAGS): path.resolve()}
    else:
        files = _nifti_files(path)
        masks = [p for p in files if p.name.endswith(MASK_SUFFIX)]
        if masks:
            preds = {p.name[: -len(MASK_SUFFIX)]: p.resolve() for p in masks}
        else:
            files = [p for p in files if not strip_nifti(p.name).endswith("_wmh_prob") and not _has_tag(p, IMAGE_TAGS)]
            preds = {subject_id(p, PRED_TAGS): p.resolve() for p in files}
    if not preds:
        raise InputError(f"{path}: no prediction found (expected <subject>{MASK_SUFFIX} files)")
    return preds


def match(cases: list[TruthCase], preds: Mapping[str, Path]) -> list[tuple[TruthCase, Optional[Path]]]:
    """Pair each truth subject with its prediction by subject id (None when there is none).

    One truth file and one prediction file are paired whatever their names. Predictions without a
    truth subject are logged and ignored.

    Raises:
        InputError: no prediction matches any truth subject.
    """
    if len(cases) == 1 and len(preds) == 1:
        return [(cases[0], next(iter(preds.values())))]
    pairs = [(c, preds.get(c.subject)) for c in cases]
    extra = sorted(set(preds) - {c.subject for c in cases})
    if extra:
        log.warning("%d predictions have no ground truth and are ignored: %s", len(extra), ", ".join(extra[:10]))
    if all(p is None for _, p in pairs):
        raise InputError(
            f"no prediction matches a ground-truth subject; truth ids: {', '.join(c.subject for c in cases[:5])}; "
            f"prediction ids: {', '.join(list(preds)[:5])}"
        )
    return pairs


# === Scoring ===


def load_pair(truth_path: str | Path, pred_path: str | Path):
    """Read a truth label file and a prediction and check that they share one grid: ``(truth, pred)`` Volumes.

    Raises:
        InputError: a file is unreadable, the truth holds values other than 0/1/2, or the grids differ
            (shape or affine); the prediction is never resampled.
    """
    truth = load_volume(truth_path, kind="label")
    pred = load_volume(pred_path, kind="mask")
    check_same_grid(truth, pred)
    return truth, pred


def _score(truth_path, pred_path):
    from wmhkeras.evaluation.metrics import evaluate_arrays

    truth, pred = load_pair(truth_path, pred_path)
    return evaluate_arrays(truth.to_native(truth.data), pred.to_native(pred.data), truth.native_affine), truth, pred


def evaluate_subject(truth_path: str | Path, pred_path: str | Path) -> dict[str, float]:
    """The challenge metrics of one prediction file against one truth file (keys of ``METRIC_KEYS``).

    Computed on the truth file's own voxel order with its affine, as the challenge's evaluation does
    (its in-plane axes are the file's first two).
    """
    return _score(truth_path, pred_path)[0]


def _qc(case: TruthCase, truth, pred, path: Path) -> Path:
    """QC montage on the subject's FLAIR, or on a blank background when none is found on the truth's grid."""
    from wmhkeras.evaluation.reports import qc_montage

    background, note = np.zeros(truth.data.shape, np.float32), " (no FLAIR found)"
    if case.flair is not None:
        try:
            flair = load_volume(case.flair)
            check_same_grid(truth, flair)
            background, note = flair.data, ""
        except WmhError as exc:
            log.warning("QC of %s without FLAIR: %s", case.subject, exc)
    return qc_montage(background, truth.data, pred.data, path, title=f"{case.subject}{note}")


# === Reports ===


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _report_md(rows, table: str, pred, truth) -> str:
    from wmhkeras.evaluation.metrics import CHALLENGE_KEYS

    lines = ["# WMH segmentation evaluation", "", f"- predictions: `{pred}`", f"- ground truth: `{truth}`",
             f"- per-subject metrics: [{METRICS_CSV}]({METRICS_CSV}), summary: [{SUMMARY_JSON}]({SUMMARY_JSON})", "",
             "## Table 1 (mean +- SD)", "", table.rstrip(), "", "## AVD against positive class density (Figure 5)", "",
             f"![AVD vs PCD]({FIGURE5_PNG})", "", "## Subjects", "",
             "| subject | site | " + " | ".join(CHALLENGE_KEYS) + " | QC |",
             "| --- | --- | " + " | ".join("---" for _ in CHALLENGE_KEYS) + " | --- |"]
    for row in rows:
        if row["status"] == "ok":
            qc = f"[png]({row['qc_png']})" if row.get("qc_png") else ""
            lines.append(f"| {row['subject']} | {row['site']} | " + " | ".join(_fmt(row[k]) for k in CHALLENGE_KEYS) + f" | {qc} |")
    failed = [row for row in rows if row["status"] != "ok"]
    if failed:
        lines += ["", "## Failed", ""] + [f"- {row['subject']}: {row['error']}" for row in failed]
    return "\n".join(lines) + "\n"


def evaluate(
    pred: str | Path,
    truth: str | Path,
    out_dir: str | Path,
    *,
    model_name: Optional[str] = None,
    dataset_name: Optional[str] = None,
    qc: bool = True,
    progress: Callable[..., Iterable] | None = None,
) -> EvaluationResult:
    """Score predictions against ground truth and write the reports into ``out_dir``.

    Args:
        pred: predictions (see :func:`resolve_predictions`), e.g. a ``wmhkeras segment`` output folder.
        truth: ground truth (see :func:`resolve_truth`), e.g. a manifest or a run folder's hold-out.
        model_name, dataset_name: row labels of Table 1 (default: the names of ``pred`` and ``truth``).
        qc: write one QC montage PNG per subject into ``out_dir/qc/``.
        progress: wraps the loop over subjects, called as ``progress(iterable, total=n)`` (e.g. ``tqdm``).

    Writes ``metrics.csv`` (``subject, dice, hd95, avd, lesion_recall, lesion_f1``, the other metrics,
    ``site``, ``status``, ``error``, QC path), ``summary.json`` (mean, SD, n per metric, overall and per site,
    failures, relative paths of every file), ``table.md`` (the paper's Table 1 layout, one block per
    site when there are several), ``figure5_avd_vs_pcd.png``, ``qc/<subject>.png`` and ``report.md``.

    A subject whose prediction is missing, unreadable or on another grid is a ``failed`` row, left out
    of the summary; ``result.n_failed`` counts them.

    Raises:
        InputError: nothing to evaluate: paths missing, no prediction matching any truth subject, or every
            subject failed (the first error is named); nothing is written then.
    """
    from wmhkeras.evaluation import reports
    from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, METRIC_KEYS
    from wmhkeras.io.provenance import package_versions, utc_now

    pred, truth, out_dir = Path(pred), Path(truth), Path(out_dir)
    cases = resolve_truth(truth)
    pairs = match(cases, resolve_predictions(pred))
    model_name = model_name or pred.name or "model"
    dataset_name = dataset_name or truth.name or "data"

    rows: list[dict] = []
    for case, pred_path in (progress(pairs, total=len(pairs)) if progress else pairs):
        row = {"subject": case.subject, **{k: None for k in METRIC_KEYS}, "site": case.site, "status": "ok",
               "error": "", "qc_png": "", "pred": str(pred_path or ""), "truth": str(case.label), "seconds": None}
        start = time.perf_counter()
        try:
            if pred_path is None:
                raise InputError(f"no prediction for subject {case.subject} (expected {case.subject}{MASK_SUFFIX})")
            metrics, t, p = _score(case.label, pred_path)
            row.update(metrics)
            if qc:
                rel = f"{QC_DIR}/{case.subject}.png"
                _qc(case, t, p, out_dir / rel)
                row["qc_png"] = rel
        except WmhError as exc:
            row.update(status="failed", error=str(exc))
            log.warning("subject %s not evaluated: %s", case.subject, exc)
        row["seconds"] = round(time.perf_counter() - start, 3)
        rows.append(row)

    ok = [row for row in rows if row["status"] == "ok"]
    if not ok:
        raise InputError(rows[0]["error"] if len(rows) == 1 else f"no subject could be evaluated; first error: {rows[0]['error']}")

    summary = reports.summarize(ok, metrics=list(METRIC_KEYS))
    blocks = {dataset_name: {model_name: summary}}
    if len(summary["by_site"]) > 1:
        blocks.update({f"{dataset_name}: {site}": {model_name: stats} for site, stats in summary["by_site"].items()})
    table = reports.markdown_table(blocks, CHALLENGE_KEYS)

    files = {"metrics": out_dir / METRICS_CSV, "summary": out_dir / SUMMARY_JSON, "table": out_dir / TABLE_MD,
             "figure5": out_dir / FIGURE5_PNG, "report": out_dir / REPORT_MD}
    columns = ["subject", *CHALLENGE_KEYS, *[k for k in METRIC_KEYS if k not in CHALLENGE_KEYS],
               "site", "status", "error", "qc_png", "pred", "truth", "seconds"]
    reports.write_csv(rows, files["metrics"], columns=columns)
    reports.write_text(table, files["table"])
    reports.plot_avd_vs_pcd({model_name: ([r["pcd"] for r in ok], [r["avd"] for r in ok])}, files["figure5"])
    reports.write_text(_report_md(rows, table, pred, truth), files["report"])
    summary = {
        **summary,
        "model": model_name,
        "dataset": dataset_name,
        "n_failed": len(rows) - len(ok),
        "failed": [{"subject": r["subject"], "error": r["error"]} for r in rows if r["status"] != "ok"],
        "files": {**{k: p.name for k, p in files.items()}, "qc": {r["subject"]: r["qc_png"] for r in ok if r["qc_png"]}},
        "pred": str(pred),
        "truth": str(truth),
        "created": utc_now(),
        "versions": package_versions(),
    }
    reports.write_json(summary, files["summary"])
    return EvaluationResult(out_dir, rows, summary, files)
