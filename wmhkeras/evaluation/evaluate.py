"""Evaluation of segmentations against ground truth: the library behind ``wmhkeras evaluate``.

Predictions and ground truth are matched by subject id (:mod:`wmhkeras.evaluation.matching`), every pair
is scored with :func:`wmhkeras.evaluation.metrics.evaluate_arrays` (the MICCAI 2017 WMH challenge metrics,
computed on the truth file's own voxel grid and geometry), and the per-subject CSV, the summary (mean and
SD per metric, overall and per site, :mod:`wmhkeras.evaluation.reports`), the paper's Table 1 and
Figure 5 and one QC montage per subject (:mod:`wmhkeras.evaluation.figures`) are written. A prediction
must lie on its truth's grid: it is never resampled.

No TensorFlow is imported here (checked by the tests), so ``wmhkeras evaluate`` starts fast.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from wmhkeras.errors import InputError, WmhError
from wmhkeras.evaluation import reports
from wmhkeras.evaluation.figures import plot_avd_vs_pcd, qc_montage
from wmhkeras.evaluation.matching import TruthCase, match, resolve_predictions, resolve_truth
from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, METRIC_KEYS, evaluate_arrays
from wmhkeras.io import Volume, check_same_grid, load_volume
from wmhkeras.io.files import atomic_write_csv, atomic_write_json, atomic_write_text
from wmhkeras.io.header_check import check_inputs
from wmhkeras.io.naming import MASK_SUFFIX
from wmhkeras.io.provenance import package_versions, utc_now

log = logging.getLogger(__name__)

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
TABLE_MD = "table.md"
FIGURE5_PNG = "figure5_avd_vs_pcd.png"
REPORT_MD = "report.md"
QC_DIR = "qc"
#: Columns of ``metrics.csv``: the challenge metrics first, then the others, then the bookkeeping.
METRICS_COLUMNS = ("subject", *CHALLENGE_KEYS, *[k for k in METRIC_KEYS if k not in CHALLENGE_KEYS],
                   "site", "status", "error", "qc_png", "pred", "truth", "seconds")


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


def score_volumes(truth: Volume, pred: Volume) -> dict[str, float]:
    """The challenge metrics of a truth (``kind="label"``) and a prediction on one grid, computed on the
    truth's own voxel order and affine (:func:`~wmhkeras.evaluation.metrics.evaluate_arrays`)."""
    check_same_grid(truth, pred)
    return evaluate_arrays(truth.to_native(truth.data), pred.to_native(pred.data), truth.native_affine)


def _score(truth_path, pred_path):
    """The challenge metrics of a pair of files, and the two Volumes."""
    truth, pred = load_pair(truth_path, pred_path)
    return score_volumes(truth, pred), truth, pred


def _qc(case: TruthCase, truth, pred, path: Path) -> Path:
    """QC montage on the subject's FLAIR, or on a blank background when none is found on the truth's grid."""
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


# === The evaluation ===


def _evaluate_case(case: TruthCase, pred_path: Optional[Path], qc_root: Optional[Path]) -> dict:
    """One ``metrics.csv`` row: the metrics of ``case`` against ``pred_path`` and its QC montage (when
    ``qc_root`` is given), or ``status`` ``failed`` with the error when the pair cannot be scored."""
    row = {"subject": case.subject, **{k: None for k in METRIC_KEYS}, "site": case.site, "status": "ok",
           "error": "", "qc_png": "", "pred": str(pred_path or ""), "truth": str(case.label), "seconds": None}
    start = time.perf_counter()
    try:
        if pred_path is None:
            raise InputError(f"no prediction for subject {case.subject} (expected {case.subject}{MASK_SUFFIX})")
        metrics, t, p = _score(case.label, pred_path)
        row.update(metrics)
        if qc_root is not None:
            rel = f"{QC_DIR}/{case.subject}.png"
            _qc(case, t, p, qc_root / rel)
            row["qc_png"] = rel
    except WmhError as exc:
        row.update(status="failed", error=str(exc))
        log.warning("subject %s not evaluated: %s", case.subject, exc)
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _table(summary: dict, dataset_name: str, model_name: str) -> str:
    """Table 1 of all subjects, then one block per site when there are several."""
    blocks = {dataset_name: {model_name: summary}}
    if len(summary["by_site"]) > 1:
        blocks.update({f"{dataset_name}: {site}": {model_name: stats} for site, stats in summary["by_site"].items()})
    return reports.markdown_table(blocks, CHALLENGE_KEYS)


def _write_reports(out_dir: Path, rows: list[dict], pred: Path, truth: Path, model_name: str,
                   dataset_name: str) -> tuple[dict, dict[str, Path]]:
    """Write every report file, ``summary.json`` last; returns the summary and the files."""
    ok = [row for row in rows if row["status"] == "ok"]
    stats = reports.summarize(ok, metrics=list(METRIC_KEYS))
    table = _table(stats, dataset_name, model_name)
    files = {"metrics": out_dir / METRICS_CSV, "summary": out_dir / SUMMARY_JSON, "table": out_dir / TABLE_MD,
             "figure5": out_dir / FIGURE5_PNG, "report": out_dir / REPORT_MD}
    atomic_write_csv(files["metrics"], rows, columns=METRICS_COLUMNS)
    atomic_write_text(files["table"], table)
    plot_avd_vs_pcd({model_name: ([r["pcd"] for r in ok], [r["avd"] for r in ok])}, files["figure5"])
    atomic_write_text(files["report"], _report_md(rows, table, pred, truth))
    summary = {
        **stats,
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
    atomic_write_json(files["summary"], summary)
    return summary, files


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
        pred: predictions (see :func:`~wmhkeras.evaluation.matching.resolve_predictions`), e.g. a
            ``wmhkeras segment`` output folder.
        truth: ground truth (see :func:`~wmhkeras.evaluation.matching.resolve_truth`), e.g. a manifest or a
            run folder's hold-out.
        model_name, dataset_name: row labels of Table 1 (default: the names of ``pred`` and ``truth``).
        qc: write one QC montage PNG per subject into ``out_dir/qc/``.
        progress: wraps the loop over subjects, called as ``progress(iterable, total=n)`` (e.g. ``tqdm``).

    Writes ``metrics.csv`` (``subject, dice, hd95, avd, lesion_recall, lesion_f1``, the other metrics,
    ``site``, ``status``, ``error``, QC path), ``summary.json`` (mean, SD, n per metric, overall and per site,
    failures, relative paths of every file), ``table.md`` (the paper's Table 1 layout, one block per
    site when there are several), ``figure5_avd_vs_pcd.png``, ``qc/<subject>.png`` and ``report.md``.

    Before any work, the header pre-pass (:func:`~wmhkeras.io.header_check.check_inputs`) reads the header
    of every truth label and every prediction: a file that is not a readable 3D NIfTI holding its voxels
    stops the evaluation. Then a subject whose prediction is missing, on another grid than its truth, or
    whose voxels are unreadable or not finite is a ``failed`` row, left out of the summary;
    ``result.n_failed`` counts them.

    Raises:
        InputError: nothing to evaluate: paths missing, subject ids that are not plain names or collide, no
            prediction matching any truth subject, a file failing the header pre-pass, or every subject
            failed (the first error is named); nothing is written then.
    """
    pred, truth, out_dir = Path(pred), Path(truth), Path(out_dir)
    cases = resolve_truth(truth)
    pairs = match(cases, resolve_predictions(pred))
    check_inputs({**{f"{c.subject} (truth)": [c.label] for c, _ in pairs},
                  **{f"{c.subject} (prediction)": [p] for c, p in pairs if p is not None}})
    model_name = model_name or pred.name or "model"
    dataset_name = dataset_name or truth.name or "data"
    rows = [_evaluate_case(case, pred_path, out_dir if qc else None)
            for case, pred_path in (progress(pairs, total=len(pairs)) if progress else pairs)]
    if all(row["status"] != "ok" for row in rows):
        raise InputError(rows[0]["error"] if len(rows) == 1 else f"no subject could be evaluated; first error: {rows[0]['error']}")
    summary, files = _write_reports(out_dir, rows, pred, truth, model_name, dataset_name)
    return EvaluationResult(out_dir, rows, summary, files)
