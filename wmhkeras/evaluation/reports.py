"""Evaluation reports: summaries of per-subject metrics, the paper's Table 1, Figure 5's binning.

Pure NumPy (no TensorFlow, no matplotlib): the figures drawn from these numbers are in
:mod:`wmhkeras.evaluation.figures`; files are written with :mod:`wmhkeras.io.files`.

Layout of the paper's results: Mac, Moody & Khademi, "Siamese Content Loss Networks for Highly
Imbalanced Medical Image Segmentation", MIDL 2020, Table 1 (mean +- SD) and Figure 5 (AVD per PCD bin).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from wmhkeras.config import PCD_BIN_EDGES  # the paper's Figure 5 bins, also experiment.pcd_bins' default
from wmhkeras.errors import InputError
from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, METRIC_KEYS

log = logging.getLogger(__name__)

#: Column headers of the paper's Table 1, per challenge metric.
TABLE_HEADERS = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "avd": "AVD (%)",
    "lesion_recall": "lesion recall",
    "lesion_f1": "lesion F1",
}
#: Delta degrees of freedom of the reported SD: 1, the sample SD across subjects (the usual reading of a
#: paper's "mean +- SD"; the paper does not say which).
SD_DDOF = 1


# === Summary statistics ===


def as_float(value) -> float:
    """A number from a CSV cell, JSON value or metric: ``None`` and ``""`` become NaN."""
    if value is None or value == "":
        return float("nan")
    return float(value)


def describe(values: Sequence[float]) -> dict[str, float]:
    """NaN-aware mean and SD of one metric over subjects.

    Args:
        values: per-subject values; NaN (or None / "") marks an undefined metric.

    Returns:
        ``{"mean", "sd", "n", "n_nan"}``: mean and SD (``ddof=`` :data:`SD_DDOF`) over the ``n`` finite
        values, and the number of NaNs left out. ``mean`` is NaN when ``n == 0``, ``sd`` when ``n <= SD_DDOF``.
    """
    x = np.array([as_float(v) for v in values], dtype=np.float64)
    ok = x[~np.isnan(x)]
    n = int(ok.size)
    return {
        "mean": float(ok.mean()) if n else float("nan"),
        "sd": float(ok.std(ddof=SD_DDOF)) if n > SD_DDOF else float("nan"),
        "n": n,
        "n_nan": int(x.size - n),
    }


def summarize(
    rows: Sequence[Mapping],
    metrics: Sequence[str] | None = None,
    site_key: str = "site",
) -> dict:
    """Aggregate per-subject metric rows into mean +- SD, overall and per site.

    Args:
        rows: one mapping per subject, e.g. ``{"subject": "s01", "site": "Utrecht", **evaluate_arrays(...)}``
            (values may be strings, as read back from a CSV).
        metrics: keys to summarise; default every key of :data:`wmhkeras.evaluation.metrics.METRIC_KEYS` that some
            row has. A row without one of them counts as NaN for it.
        site_key: the column naming the site (or any other grouping); rows without it are grouped under
            ``"unknown"``. ``by_site`` is empty when no row has the column.

    Returns:
        ``{"n_subjects": int, "sd_ddof": SD_DDOF, "overall": {metric: describe(...)},
        "by_site": {site: {metric: describe(...)}}}``, sites sorted by name.
    """
    if metrics is None:
        present = {k for row in rows for k in row}
        metrics = [k for k in METRIC_KEYS if k in present]

    def stats(subset: Sequence[Mapping]) -> dict:
        return {m: describe([row.get(m) for row in subset]) for m in metrics}

    sites: dict[str, list[Mapping]] = {}
    if any(site_key in row for row in rows):
        for row in rows:
            sites.setdefault(str(row.get(site_key, "unknown")), []).append(row)
    return {
        "n_subjects": len(rows),
        "sd_ddof": SD_DDOF,
        "overall": stats(rows),
        "by_site": {name: stats(sites[name]) for name in sorted(sites)},
    }


# === Table 1 ===


def _cell(stats: Mapping | None, digits: int) -> str:
    if not stats or stats.get("mean") is None or math.isnan(as_float(stats["mean"])):
        return "n/a"
    mean, sd = as_float(stats["mean"]), as_float(stats.get("sd"))
    sd_text = "n/a" if math.isnan(sd) else f"{sd:.{digits}f}"
    return f"{mean:.{digits}f} +- {sd_text}"


def markdown_table(
    results: Mapping[str, Mapping[str, Mapping]],
    metrics: Sequence[str] = CHALLENGE_KEYS,
    digits: int = 2,
) -> str:
    """A Markdown table laid out like the paper's Table 1.

    Args:
        results: ``results[dataset][model]`` is either a :func:`summarize` result (its ``"overall"`` is used)
            or its ``"overall"`` part, ``{metric: {"mean", "sd", ...}}``. Datasets and models keep their
            insertion order.
        metrics: columns, default the five challenge metrics.
        digits: decimals of each cell, ``"0.79 +- 0.06"``.

    Returns:
        the table, one line per row, the dataset named on the first row of its block only; a missing or
        all-NaN metric prints ``n/a``.
    """
    headers = ["data", "model"] + [TABLE_HEADERS.get(m, m) for m in metrics]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    for dataset, models in results.items():
        for i, (model, summary) in enumerate(models.items()):
            per_metric = summary.get("overall", summary)
            cells = [dataset if i == 0 else "", model] + [_cell(per_metric.get(m), digits) for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# === Figure 5: AVD against PCD (drawn by wmhkeras.evaluation.figures) ===


def check_edges(edges: Sequence[float]) -> np.ndarray:
    """PCD bin edges as a float array; :class:`InputError` unless at least two increasing numbers."""
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise InputError(f"PCD bin edges must be at least two increasing numbers, got {edges.tolist()}")
    return edges


def bin_means(pcd, avd, edges: Sequence[float] = PCD_BIN_EDGES) -> tuple[np.ndarray, np.ndarray]:
    """Mean AVD per PCD bin.

    Bins are half-open ``[lo, hi)`` except the last, which includes its upper edge. Subjects outside all
    bins or with NaN AVD/PCD are left out.

    Args:
        pcd: per-subject positive class density (%), shape ``(n,)``.
        avd: per-subject AVD (%), shape ``(n,)``.
        edges: increasing bin edges (%), ``len(edges) - 1`` bins.

    Returns:
        ``(means, counts)``, each of shape ``(len(edges) - 1,)``; the mean is NaN for an empty bin.
    """
    edges = check_edges(edges)
    pcd = np.asarray([as_float(v) for v in pcd], dtype=np.float64)
    avd = np.asarray([as_float(v) for v in avd], dtype=np.float64)
    if pcd.shape != avd.shape:
        raise InputError(f"pcd and avd need one value per subject each, got {pcd.size} and {avd.size}")
    ok = ~(np.isnan(pcd) | np.isnan(avd)) & (pcd >= edges[0]) & (pcd <= edges[-1])
    left_out = int(np.count_nonzero(~ok))
    if left_out:
        log.info("AVD vs PCD: %d subject(s) outside [%g, %g] %% or with NaN left out", left_out, edges[0], edges[-1])
    idx = np.clip(np.searchsorted(edges, pcd[ok], side="right") - 1, 0, edges.size - 2)
    counts = np.bincount(idx, minlength=edges.size - 1)
    sums = np.bincount(idx, weights=avd[ok], minlength=edges.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means, counts
