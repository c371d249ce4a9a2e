"""Evaluation reports: summaries of per-subject metrics, the paper's Table 1 and Figure 5, QC montages.

Pure NumPy/matplotlib (no TensorFlow). Plots draw on a :class:`matplotlib.figure.Figure` rendered by
the Agg canvas directly, so nothing here touches ``pyplot`` or the process-wide backend. Every file is
written atomically: a temporary file in the destination folder, then :func:`os.replace`.

Layout of the paper's results: Mac, Moody & Khademi, "Siamese Content Loss Networks for Highly
Imbalanced Medical Image Segmentation", MIDL 2020, Table 1 (mean +- SD) and Figure 5 (AVD per PCD bin).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from wmhkeras.errors import InputError
from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, HIGHER_IS_BETTER, METRIC_KEYS
from wmhkeras.io.files import atomic_path

logger = logging.getLogger(__name__)

#: Column headers of the paper's Table 1, per challenge metric.
TABLE_HEADERS = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "avd": "AVD (%)",
    "lesion_recall": "lesion recall",
    "lesion_f1": "lesion F1",
}
#: PCD bin edges (%) of the paper's Figure 5.
PCD_BIN_EDGES = (0.0, 0.03, 0.06, 0.09, 0.15, 0.25, 0.35, 0.45, 0.55)
#: Delta degrees of freedom of the reported SD: 1, the sample SD across subjects (the usual reading of a
#: paper's "mean +- SD"; the paper does not say which).
SD_DDOF = 1


# === Atomic files ===


def _write_atomic(path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then move it over ``path``
    (:func:`wmhkeras.io.files.atomic_path`): never a partial file under the final name."""
    with atomic_path(path) as tmp:
        write(str(tmp))
    return Path(path)


def write_text(text: str, path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    return _write_atomic(path, write)


def write_csv(rows: Sequence[Mapping], path, columns: Sequence[str] | None = None) -> Path:
    """Write dict rows to a CSV file atomically (per-subject metrics, per-lesion tables).

    Args:
        rows: one mapping per line.
        columns: column order; default the keys of the first row, then new keys in order of appearance.
            Missing values are left empty; NaN is written as ``nan``.
    """
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    return _write_atomic(path, write)


def _json_safe(value):
    """NaN and infinities become ``null`` (strict JSON has no NaN); NumPy scalars become Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(data: Mapping, path) -> Path:
    """Write a summary (or any mapping) as strict JSON atomically; NaN is written as ``null``."""
    return write_text(json.dumps(_json_safe(data), indent=2) + "\n", path)


# === Summary statistics ===


def _as_float(value) -> float:
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
    x = np.array([_as_float(v) for v in values], dtype=np.float64)
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
    if not stats or stats.get("mean") is None or math.isnan(_as_float(stats["mean"])):
        return "n/a"
    mean, sd = _as_float(stats["mean"]), _as_float(stats.get("sd"))
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


def rank_models(summaries: Mapping[str, Mapping], metrics: Sequence[str] = CHALLENGE_KEYS) -> list[tuple[str, float]]:
    """Rank models as the WMH challenge ranks teams: min-max scale each metric's mean, then average.

    Each metric's subject mean is scaled across models to [0, 1] with 1 the best (HD95 and AVD are
    inverted); a metric on which all models tie scores 1 for all.

    Args:
        summaries: ``{model: summarize(...) or its "overall" part}``.

    Returns:
        ``[(model, score)]``, best first.
    """
    names = list(summaries)
    scores = np.zeros(len(names))
    for m in metrics:
        means = np.array([_as_float(summaries[n].get("overall", summaries[n])[m]["mean"]) for n in names])
        if np.isnan(means).any():
            raise InputError(f"rank_models: metric {m!r} has no mean for some model; all models need all metrics")
        span = means.max() - means.min()
        scaled = np.ones_like(means) if span == 0 else (means - means.min()) / span
        scores += scaled if HIGHER_IS_BETTER[m] else 1.0 - scaled
    scores /= len(metrics)
    return sorted(zip(names, scores.tolist(), strict=True), key=lambda item: -item[1])


# === Figure 5: AVD against PCD ===


def _check_edges(edges: Sequence[float]) -> np.ndarray:
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
    edges = _check_edges(edges)
    pcd = np.asarray([_as_float(v) for v in pcd], dtype=np.float64)
    avd = np.asarray([_as_float(v) for v in avd], dtype=np.float64)
    if pcd.shape != avd.shape:
        raise InputError(f"pcd and avd need one value per subject each, got {pcd.size} and {avd.size}")
    ok = ~(np.isnan(pcd) | np.isnan(avd)) & (pcd >= edges[0]) & (pcd <= edges[-1])
    left_out = int(np.count_nonzero(~ok))
    if left_out:
        logger.info("AVD vs PCD: %d subject(s) outside [%g, %g] %% or with NaN left out", left_out, edges[0], edges[-1])
    idx = np.clip(np.searchsorted(edges, pcd[ok], side="right") - 1, 0, edges.size - 2)
    counts = np.bincount(idx, minlength=edges.size - 1)
    sums = np.bincount(idx, weights=avd[ok], minlength=edges.size - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return means, counts


def _new_figure(figsize: tuple[float, float], dpi: float):
    """A Figure on its own Agg canvas: no pyplot, no global backend switch, freed with the object."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> Path:
    # No bbox_inches="tight": the PNG keeps exactly figsize * dpi pixels.
    return _write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi))


def plot_avd_vs_pcd(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path,
    edges: Sequence[float] = PCD_BIN_EDGES,
    title: str = "AVD against positive class density",
    figsize: tuple[float, float] = (8.0, 5.0),
    dpi: float = 100,
) -> Path:
    """The paper's Figure 5 as a PNG: mean AVD per PCD bin, one line per model/loss.

    Args:
        series: ``{label: (pcd per subject, avd per subject)}``, e.g. one entry per loss.
        path: the PNG to write (atomically).
        edges: PCD bin edges in %, default :data:`PCD_BIN_EDGES` (0-0.03, ..., 0.45-0.55).
        figsize, dpi: the image is ``figsize * dpi`` pixels (default 800 x 500).

    Returns:
        the path written. Empty bins leave a gap in their line; subject counts per bin are in the log.
    """
    edges = _check_edges(edges)
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    x = np.arange(edges.size - 1)
    for label, (pcd_values, avd_values) in series.items():
        means, counts = bin_means(pcd_values, avd_values, edges)
        logger.info("AVD vs PCD, %s: subjects per bin %s", label, counts.tolist())
        ax.plot(x, means, marker="o", label=label)
    ax.set_xticks(x, [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)], rotation=30)
    ax.set_xlabel("positive class density, PCD (%)")
    ax.set_ylabel("mean AVD (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    return _save_png(fig, path)


# === QC montage ===


def choose_slices(truth: np.ndarray, pred: np.ndarray, n: int = 6) -> list[int]:
    """Up to ``n`` axial slice indices spread evenly over the slices where truth or prediction has lesion.

    Falls back to ``n`` slices spread over the middle half of the volume when neither has any lesion.

    Args:
        truth, pred: masks ``[X, Y, Z]`` (nonzero is lesion).
    """
    depth = truth.shape[2]
    lesion = np.flatnonzero(np.any((truth != 0) | (pred != 0), axis=(0, 1)))
    candidates = lesion if lesion.size else np.arange(depth // 4, max(depth - depth // 4, depth // 4 + 1))
    n = min(n, candidates.size)
    picks = candidates[np.round(np.linspace(0, candidates.size - 1, n)).astype(int)]
    return sorted(set(int(k) for k in picks))


def qc_montage(
    flair: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    path,
    slices: Sequence[int] | None = None,
    n_slices: int = 6,
    columns: int = 3,
    panel_size: float = 3.0,
    dpi: float = 100,
    title: str | None = None,
    truth_color: str = "lime",
    pred_color: str = "red",
) -> Path:
    """A QC montage PNG: axial FLAIR slices with ground-truth and prediction outlines.

    Slices ``vol[:, :, k]`` are shown with X to the right and Y up (for RAS-canonical volumes: patient's
    right on the right, anterior up), the FLAIR windowed to its 1st-99.5th percentile.

    Args:
        flair: image ``[X, Y, Z]``.
        truth: ground-truth labels ``[X, Y, Z]`` (label 1 outlined, as WMH), or None for a prediction only.
        pred: prediction ``[X, Y, Z]`` (integer ``>= 1`` / float ``>= 0.5`` is lesion).
        path: the PNG to write (atomically).
        slices: axial indices to show; default :func:`choose_slices` with ``n_slices``.
        columns: panels per row; the image is ``columns * panel_size * dpi`` pixels wide and
            ``rows * panel_size * dpi`` high, ``rows = ceil(len(slices) / columns)``.

    Returns:
        the path written.
    """
    from matplotlib.lines import Line2D

    from wmhkeras.evaluation.metrics import binarize_result, truth_masks

    flair = np.asarray(flair, dtype=np.float32)
    r = binarize_result(pred)
    g = truth_masks(truth)[0] if truth is not None else np.zeros(flair.shape, dtype=bool)
    if not (flair.shape == r.shape == g.shape) or flair.ndim != 3:
        raise InputError(
            f"QC montage needs three volumes of one 3D shape, got FLAIR {flair.shape}, prediction {r.shape}"
            + (f", truth {np.shape(truth)}" if truth is not None else "")
        )
    if slices is None:
        slices = choose_slices(g, r, n_slices)
    bad = [k for k in slices if not 0 <= k < flair.shape[2]]
    if bad or not slices:
        raise InputError(f"QC slices {list(slices)} must be non-empty and within 0..{flair.shape[2] - 1}")
    columns = max(1, min(columns, len(slices)))
    rows = math.ceil(len(slices) / columns)
    lo, hi = np.percentile(flair, [1.0, 99.5])
    fig = _new_figure((columns * panel_size, rows * panel_size), dpi)
    for i, k in enumerate(slices):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(flair[:, :, k].T, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), origin="lower")
        for mask, color in ((g, truth_color), (r, pred_color)):
            if mask[:, :, k].any():
                ax.contour(mask[:, :, k].T.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8)
        ax.set_title(f"z = {k}", fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=pred_color, label="prediction")]
    if truth is not None:
        handles.insert(0, Line2D([], [], color=truth_color, label="ground truth"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.08, top=0.9 if title else 0.95, wspace=0.03, hspace=0.12)
    return _save_png(fig, path)
