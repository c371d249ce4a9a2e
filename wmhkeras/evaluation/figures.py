"""Evaluation figures: the paper's Figure 5 (AVD against PCD) and per-subject QC montages, as PNGs.

Plots draw on a :class:`matplotlib.figure.Figure` rendered by the Agg canvas directly, so nothing here
touches ``pyplot`` or the process-wide backend; matplotlib is imported only when a figure is drawn.
Every PNG is written atomically (:func:`wmhkeras.io.files.atomic_path`) and is exactly
``figsize * dpi`` pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wmhkeras.errors import InputError
from wmhkeras.evaluation.metrics import binarize_result, truth_masks
from wmhkeras.evaluation.reports import PCD_BIN_EDGES, bin_means, check_edges
from wmhkeras.io.files import atomic_path

log = logging.getLogger(__name__)


def _new_figure(figsize: tuple[float, float], dpi: float):
    """A Figure on its own Agg canvas: no pyplot, no global backend switch, freed with the object."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> Path:
    # No bbox_inches="tight": the PNG keeps exactly figsize * dpi pixels.
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=fig.dpi)
    return Path(path)


# === Figure 5: AVD against PCD ===


def open_bins(pcd, avd, edges: Sequence[float] = PCD_BIN_EDGES) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Figure 5's bins: ``edges`` plus an open-ended last bin ``>= edges[-1]``, so that no subject is dropped.

    Bins are ``[lo, hi)`` (:func:`~wmhkeras.evaluation.reports.bin_means` over ``edges + [inf]``); a subject
    at or above the last edge falls in the open bin. Only subjects with NaN, or below the first edge, are
    left out.

    Returns:
        ``(labels, means, counts)``, one per bin (``len(edges)``): labels ``"0-0.03"`` ... ``">= 0.55"``,
        the mean AVD (NaN for an empty bin) and the number of subjects.
    """
    edges = check_edges(edges)
    means, counts = bin_means(pcd, avd, np.append(edges, np.inf))
    return _bin_labels(edges), means, counts


def _bin_labels(edges: np.ndarray) -> list[str]:
    return [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)] + [f">= {edges[-1]:g}"]


def plot_avd_vs_pcd(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path,
    edges: Sequence[float] = PCD_BIN_EDGES,
    title: str = "AVD against positive class density",
    figsize: tuple[float, float] = (8.0, 5.0),
    dpi: float = 100,
) -> Path:
    """The paper's Figure 5 as a PNG: mean AVD per PCD bin (:func:`open_bins`: the given bins and an
    open-ended last one, ``>= edges[-1]``), one line per model/loss.

    Args:
        series: ``{label: (pcd per subject, avd per subject)}``, e.g. one entry per loss.
        path: the PNG to write (atomically).
        edges: PCD bin edges in %, default :data:`~wmhkeras.evaluation.reports.PCD_BIN_EDGES`
            (0-0.03, ..., 0.45-0.55, then >= 0.55).
        figsize, dpi: the image is ``figsize * dpi`` pixels (default 800 x 500).

    Returns:
        the path written. Empty bins leave a gap in their line; subject counts per bin are in the log.
    """
    edges = check_edges(edges)
    fig = _new_figure(figsize, dpi)
    ax = fig.add_subplot()
    x = np.arange(edges.size)
    for label, (pcd_values, avd_values) in series.items():
        _, means, counts = open_bins(pcd_values, avd_values, edges)
        log.info("AVD vs PCD, %s: subjects per bin %s", label, counts.tolist())
        ax.plot(x, means, marker="o", label=label)
    ax.set_xticks(x, _bin_labels(edges), rotation=30)
    ax.set_xlabel("positive class density, PCD (%)")
    ax.set_ylabel("mean AVD (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    return _save_png(fig, path)


# === QC montage ===


#: A voxel is foreground (brain, in a skull-stripped scan) above this fraction of the volume's 99.5th percentile.
FOREGROUND_FRACTION = 0.1
#: A slice holds brain when its foreground covers at least this fraction of the fullest slice's.
BRAIN_SLICE_FRACTION = 0.25


def brain_slices(flair: np.ndarray) -> np.ndarray:
    """Axial indices of the slices of ``flair`` ``[X, Y, Z]`` that hold brain: a foreground (voxels above
    :data:`FOREGROUND_FRACTION` of the 99.5th percentile) of at least :data:`BRAIN_SLICE_FRACTION` of the
    fullest slice's. Every slice of a volume without foreground."""
    flair = np.asarray(flair, dtype=np.float32)
    top = float(np.percentile(flair, 99.5))
    area = (flair > FOREGROUND_FRACTION * top).sum(axis=(0, 1)) if top > 0 else np.zeros(flair.shape[2])
    if not area.max() > 0:
        return np.arange(flair.shape[2])
    return np.flatnonzero(area >= BRAIN_SLICE_FRACTION * area.max())


def _spread(candidates: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` of ``candidates`` spread evenly (the first and last included)."""
    n = min(n, candidates.size)
    return [int(k) for k in candidates[np.round(np.linspace(0, candidates.size - 1, n)).astype(int)]] if n else []


def choose_slices(truth: np.ndarray, pred: np.ndarray, n: int = 6, flair: np.ndarray | None = None) -> list[int]:
    """Up to ``n`` axial slice indices spread evenly over the slices where truth or prediction has lesion.

    With ``flair``, only slices that hold brain (:func:`brain_slices`) are shown: a lesion voxel in an edge
    slice (noise, a false positive outside the brain) never brings in a nearly empty slice; lesion slices
    with little brain are kept only when no lesion slice holds more. Fewer lesion slices than ``n`` are
    completed with brain slices spread over the volume. Without lesion: ``n`` brain slices spread evenly,
    or (no ``flair``) ``n`` slices spread over the middle half of the volume.

    Args:
        truth, pred: masks ``[X, Y, Z]`` (nonzero is lesion).
        flair: the image ``[X, Y, Z]``.
    """
    depth = truth.shape[2]
    lesion = np.flatnonzero(np.any((truth != 0) | (pred != 0), axis=(0, 1)))
    if flair is None:
        candidates = lesion if lesion.size else np.arange(depth // 4, max(depth - depth // 4, depth // 4 + 1))
        return sorted(set(_spread(candidates, n)))
    brain = brain_slices(flair)
    in_brain = np.intersect1d(lesion, brain)
    if not in_brain.size and lesion.size:  # lesions only where little brain shows: those slices, not none
        area = (np.asarray(flair) > 0).sum(axis=(0, 1))
        in_brain = lesion[area[lesion] > 0]
    chosen = set(_spread(in_brain, n))
    rest = np.setdiff1d(brain, np.fromiter(chosen, int, len(chosen)))
    chosen |= set(_spread(rest, n - len(chosen)))
    return sorted(chosen)


def _montage_masks(flair, truth, pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(flair, truth WMH, prediction)`` as float32 and two bool masks, checked to share one 3D shape."""
    flair = np.asarray(flair, dtype=np.float32)
    r = binarize_result(pred)
    g = truth_masks(truth)[0] if truth is not None else np.zeros(flair.shape, dtype=bool)
    if not (flair.shape == r.shape == g.shape) or flair.ndim != 3:
        raise InputError(
            f"QC montage needs three volumes of one 3D shape, got FLAIR {flair.shape}, prediction {r.shape}"
            + (f", truth {np.shape(truth)}" if truth is not None else "")
        )
    return flair, g, r


def _draw_slice(ax, flair, window, outlines, k: int) -> None:
    """One panel: FLAIR slice ``k`` (X right, Y up) with the ``(mask, colour)`` outlines drawn on it."""
    lo, hi = window
    ax.imshow(flair[:, :, k].T, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), origin="lower")
    for mask, color in outlines:
        if mask[:, :, k].any():
            ax.contour(mask[:, :, k].T.astype(np.float32), levels=[0.5], colors=[color], linewidths=0.8)
    ax.set_title(f"z = {k}", fontsize=9)
    ax.set_axis_off()


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
        slices: axial indices to show; default :func:`choose_slices` with ``n_slices``: slices that hold
            brain, and lesion where there is any.
        columns: panels per row; the image is ``columns * panel_size * dpi`` pixels wide and
            ``rows * panel_size * dpi`` high, ``rows = ceil(len(slices) / columns)``.

    Returns:
        the path written.
    """
    from matplotlib.lines import Line2D

    flair, g, r = _montage_masks(flair, truth, pred)
    if slices is None:
        slices = choose_slices(g, r, n_slices, flair)
    bad = [k for k in slices if not 0 <= k < flair.shape[2]]
    if bad or not slices:
        raise InputError(f"QC slices {list(slices)} must be non-empty and within 0..{flair.shape[2] - 1}")
    columns = max(1, min(columns, len(slices)))
    rows = math.ceil(len(slices) / columns)
    window = tuple(np.percentile(flair, [1.0, 99.5]))
    fig = _new_figure((columns * panel_size, rows * panel_size), dpi)
    for i, k in enumerate(slices):
        _draw_slice(fig.add_subplot(rows, columns, i + 1), flair, window, ((g, truth_color), (r, pred_color)), k)
    handles = [Line2D([], [], color=pred_color, label="prediction")]
    if truth is not None:
        handles.insert(0, Line2D([], [], color=truth_color, label="ground truth"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.08, top=0.9 if title else 0.95, wspace=0.03, hspace=0.12)
    return _save_png(fig, path)
