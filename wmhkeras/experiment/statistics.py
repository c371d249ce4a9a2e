"""The experiment's statistics: per-subject means over seeds and folds, Table 1's rows, paired tests.

Every function takes the per-subject metric rows of the arms (keys :data:`ROW_KEYS` and the metrics of
:data:`wmhkeras.evaluation.metrics.METRIC_KEYS`) or their means, and returns plain rows; nothing here
writes a file (:mod:`wmhkeras.experiment.report` does).
"""

from __future__ import annotations

import math

import numpy as np

from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, METRIC_KEYS
from wmhkeras.evaluation.reports import as_float, describe, summarize

#: Display names of the losses in the tables (the paper's wording where it has one).
LOSS_LABELS = {
    "dice": "Dice loss",
    "dice_bce": "batch Dice + cross-entropy",
    "tversky": "Tversky",
    "generalized_dice": "Generalised Dice",
    "content": "Siamese content loss",
    "focal": "focal loss",
    "bce": "cross-entropy",
    "hybrid": "content + overlap",
}
#: Identifying columns of ``per_subject.csv``, before the metrics of :data:`wmhkeras.evaluation.metrics.METRIC_KEYS`.
ROW_KEYS = ("loss", "seed", "dataset", "fold", "subject", "site")
#: Metrics that are counts (written as integers).
COUNT_KEYS = ("truth_lesions", "pred_lesions")


def loss_label(loss: str) -> str:
    """The name of a loss in the tables and figures (:data:`LOSS_LABELS`, else the ``loss.name`` value)."""
    return LOSS_LABELS.get(loss, loss)


def metric_value(key: str, value):
    """A metric read back from ``metrics.csv``: lesion counts as int, the rest as float (NaN when empty)."""
    number = as_float(value)
    return int(number) if key in COUNT_KEYS and not math.isnan(number) else number


def subject_means(rows: list[dict], metrics=METRIC_KEYS) -> list[dict]:
    """One row per (dataset, loss, subject): each metric averaged (NaN-aware) over seeds and folds.

    A subject of the hold-out is tested by one fold per seed; an external subject by every fold. Averaging
    first gives every subject one value per loss, so Table 1's SD is across subjects (as in the paper) and
    the paired tests pair each subject once.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["loss"], row["subject"]), []).append(row)
    out = []
    for (dataset, loss, subject), members in groups.items():
        merged = {"dataset": dataset, "loss": loss, "subject": subject, "site": members[0].get("site", ""),
                  "repeats": len(members)}
        for m in metrics:
            values = np.array([as_float(r.get(m)) for r in members])
            merged[m] = float(np.mean(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else float("nan")
        out.append(merged)
    return out


def table_results(means: list[dict], datasets: dict[str, str], losses: list[str]) -> dict[str, dict[str, dict]]:
    """``{dataset label: {loss label: summarize(...)}}`` in the order of ``datasets`` and ``losses``."""
    results: dict[str, dict[str, dict]] = {}
    for key, label in datasets.items():
        block = {}
        for loss in losses:
            subset = [r for r in means if r["dataset"] == key and r["loss"] == loss]
            if subset:
                block[loss_label(loss)] = summarize(subset, metrics=list(CHALLENGE_KEYS))
        if block:
            results[label] = block
    return results


def table_rows(means: list[dict], datasets: dict[str, str], losses: list[str]) -> list[dict]:
    """``table.csv``: per dataset and loss, n subjects and mean, SD, n of each challenge metric."""
    out = []
    for key, label in datasets.items():
        for loss in losses:
            subset = [r for r in means if r["dataset"] == key and r["loss"] == loss]
            if not subset:
                continue
            row = {"dataset": key, "dataset_label": label, "loss": loss, "subjects": len(subset)}
            for m in CHALLENGE_KEYS:
                stats = describe([r[m] for r in subset])
                row.update({f"{m}_mean": stats["mean"], f"{m}_sd": stats["sd"], f"{m}_n": stats["n"]})
            out.append(row)
    return out


def _paired_test(pairs: np.ndarray) -> dict:
    """The result columns of one paired test on ``(reference, other)`` value pairs (finite values only)."""
    nan = float("nan")
    if not len(pairs):
        return {"reference_mean": nan, "loss_mean": nan, "median_difference": nan, "statistic": nan,
                "p_value": nan, "note": "no subject with both values"}
    diff = pairs[:, 0] - pairs[:, 1]
    row = {"reference_mean": float(pairs[:, 0].mean()), "loss_mean": float(pairs[:, 1].mean()),
           "median_difference": float(np.median(diff)), "statistic": 0.0, "p_value": 1.0,
           "note": "all differences are zero"}
    if not np.all(diff == 0):
        import warnings

        from scipy.stats import wilcoxon

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = wilcoxon(pairs[:, 0], pairs[:, 1])
        row.update(statistic=float(result.statistic), p_value=float(result.pvalue), note="")
    return row


def paired_tests(means: list[dict], reference: str, losses: list[str], datasets: list[str],
                 metrics=CHALLENGE_KEYS) -> list[dict]:
    """Two-sided Wilcoxon signed-rank tests of ``reference`` against every other loss.

    Per dataset and metric, on the subjects for which both losses have a finite value (NaN-aware pairing;
    ``n`` is the number of pairs). ``median_difference`` is the median of ``reference - other``. ``p_value``
    is NaN when there is no pair, 1 when every difference is zero (nothing to rank). Uses
    :func:`scipy.stats.wilcoxon` (its default: exact distribution for small ``n``, zero differences dropped).
    """
    by_key = {(r["dataset"], r["loss"], r["subject"]): r for r in means}
    out = []
    for dataset in datasets:
        subjects = sorted({r["subject"] for r in means if r["dataset"] == dataset})
        for other in (loss for loss in losses if loss != reference):
            for m in metrics:
                pairs = [(by_key[(dataset, reference, s)][m], by_key[(dataset, other, s)][m]) for s in subjects
                         if (dataset, reference, s) in by_key and (dataset, other, s) in by_key]
                pairs = np.array([p for p in pairs if not (math.isnan(p[0]) or math.isnan(p[1]))], dtype=float)
                out.append({"dataset": dataset, "metric": m, "reference": reference, "loss": other, "n": len(pairs),
                            **_paired_test(pairs)})
    return out
