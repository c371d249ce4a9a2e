"""The MICCAI 2017 WMH Segmentation Challenge metrics, computed as the challenge's evaluation does.

Pure NumPy/SciPy (no TensorFlow, no SimpleITK). Definitions and edge cases: ``docs/metrics.md``; Kuijf et al., "Standardized Assessment of Automatic Segmentation of White
Matter Hyperintensities and Results of the WMH Segmentation Challenge", IEEE TMI 38(11), 2019.

Every function takes the raw arrays, with shape ``[X, Y, Z]``:

- ``truth``: labels 0 (background), 1 (WMH), 2 (other pathology), of any dtype. Only label 1 is WMH;
  voxels of label 2 are removed from the result before anything is computed (:func:`prepare`).
- ``pred``: the result on the same grid. Integer (and bool) images count as lesion where ``>= 1``,
  floating-point images where ``>= 0.5``.
- ``affine``: the truth's 4x4 voxel-to-world matrix (NIfTI sform/qform, as ``nibabel`` returns it). It
  gives spacing *and* direction, so boundary points are compared in mm exactly as the challenge script's
  ``TransformIndexToPhysicalPoint`` does; the first two array axes are the in-plane axes.

Undefined values are ``nan`` (edge cases: ``docs/metrics.md``), so that reports can average NaN-aware
and count them. Lesions are sparse, so the work runs inside their bounding box: a 182x218x182 1 mm
subject evaluates in a fraction of a second.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from wmhkeras.errors import InputError

log = logging.getLogger(__name__)

#: The five challenge metrics, in the order of the paper's Table 1.
CHALLENGE_KEYS = ("dice", "hd95", "avd", "lesion_recall", "lesion_f1")
#: Every key :func:`evaluate_arrays` returns, in order.
METRIC_KEYS = CHALLENGE_KEYS + (
    "precision",
    "recall",
    "truth_volume_ml",
    "pred_volume_ml",
    "truth_lesions",
    "pred_lesions",
    "pcd",
)
#: Full (26-neighbourhood) connectivity for lesion components, as the challenge's
#: ``ConnectedComponentImageFilter`` with ``FullyConnected`` on.
CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)
#: In-plane 3x3x1 structuring element: ITK's ball of radius (1, 1, 0) used by the challenge's erosion.
_IN_PLANE_3x3 = np.ones((3, 3, 1), dtype=bool)


# === Inputs ===


def _check_affine(affine) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise InputError(f"affine: expected a 4x4 voxel-to-world matrix, got shape {affine.shape}")
    if not np.all(np.isfinite(affine)):
        raise InputError("affine: contains NaN or infinity; expected a finite 4x4 voxel-to-world matrix")
    if abs(np.linalg.det(affine[:3, :3])) == 0.0:
        raise InputError("affine: the 3x3 voxel-to-world part is singular (zero voxel volume)")
    return affine


def binarize_result(pred) -> np.ndarray:
    """Binarise a segmentation result like the challenge: integer/bool ``>= 1``, float ``>= 0.5``.

    Args:
        pred: array of any shape, integer, bool or floating-point dtype.

    Returns:
        bool array of the same shape.
    """
    pred = np.asarray(pred)
    if pred.dtype == bool:
        return pred
    if np.issubdtype(pred.dtype, np.integer):
        return pred >= 1
    if np.issubdtype(pred.dtype, np.floating):
        return pred >= 0.5  # NaN compares False: not lesion
    raise InputError(f"prediction: dtype {pred.dtype} is not a number; expected an integer, bool or float image")


def truth_masks(truth) -> tuple[np.ndarray, np.ndarray]:
    """Split a challenge label image into (WMH, ignored) bool masks, for any dtype.

    Label 1 is WMH and label 2 is "other pathology" (ignored). The windows ``[0.5, 1.5)`` and
    ``[1.5, 2.5)`` equal ``== 1`` and ``== 2`` on integers and tolerate float labels stored as 0.9999;
    comparing values (not thresholds cast to the dtype) avoids the official script's integer pitfall
    (``docs/metrics.md``).

    Args:
        truth: label array ``[X, Y, Z]``, any numeric dtype.

    Returns:
        ``(wmh, ignore)``, two bool arrays of ``truth``'s shape.
    """
    truth = np.asarray(truth)
    if not (np.issubdtype(truth.dtype, np.number) or truth.dtype == bool):
        raise InputError(f"truth: dtype {truth.dtype} is not a number; expected a label image (0, 1, 2)")
    if truth.dtype == bool:
        return truth, np.zeros(truth.shape, dtype=bool)
    wmh = (truth >= 0.5) & (truth < 1.5)
    ignore = (truth >= 1.5) & (truth < 2.5)
    return wmh, ignore


def prepare(truth, pred) -> tuple[np.ndarray, np.ndarray]:
    """Challenge preprocessing: WMH mask of the truth, binarised result with label-2 voxels removed.

    Idempotent: bool inputs pass through, so the metric functions below accept either raw arrays or
    masks already prepared by :func:`evaluate_arrays`.

    Args:
        truth: label array ``[X, Y, Z]`` (0, 1, 2), any dtype.
        pred: result array of the same shape (integer ``>= 1`` or float ``>= 0.5`` is lesion).

    Returns:
        ``(g, r)``: bool arrays ``[X, Y, Z]``.

    Raises:
        InputError: if the shapes differ or are not 3D, or a dtype is not numeric.
    """
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from the truth's {truth.shape}; both must share one grid"
        )
    if truth.ndim != 3:
        raise InputError(f"truth: expected a 3D volume [X, Y, Z], got shape {truth.shape}")
    g, ignore = truth_masks(truth)
    r = binarize_result(pred)
    if ignore.any():
        r = r & ~ignore
    return g, r


def _bbox(mask: np.ndarray, margin: tuple[int, ...] = (0, 0, 0)) -> tuple[slice, ...] | None:
    """Bounding box of the True voxels, grown by ``margin`` per axis and clipped to the array; None if empty.

    Lesions fill well under 1 % of a volume, so labelling and eroding inside this box instead of the whole
    grid is what keeps a 182x218x182 subject well under a second.
    """
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=others))
        if hit.size == 0:
            return None
        lo = max(int(hit[0]) - margin[axis], 0)
        hi = min(int(hit[-1]) + 1 + margin[axis], mask.shape[axis])
        box.append(slice(lo, hi))
    return tuple(box)


# === Overlap and volume ===


def dice(truth, pred) -> float:
    """Dice similarity coefficient ``2|G n R| / (|G| + |R|)``; NaN if both ``G`` and ``R`` are empty.

    Both-empty is 0/0 in the challenge script too (SciPy's ``dice`` returns NaN there).

    Args:
        truth, pred: arrays ``[X, Y, Z]`` as for :func:`prepare`.
    """
    g, r = prepare(truth, pred)
    total = np.count_nonzero(g) + np.count_nonzero(r)
    if total == 0:
        return float("nan")
    return float(2.0 * np.count_nonzero(g & r) / total)


def mask_dice(a, b) -> float:
    """Dice of two boolean masks of any (equal) shape, as a parity check: 1 when both are empty, since two
    empty masks agree (unlike :func:`dice`, which scores a segmentation against a truth)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(a & b)) / total


def avd(truth, pred) -> float:
    """Average volume difference ``|V_G - V_R| / V_G * 100`` (%) on voxel counts; NaN if ``G`` is empty."""
    g, r = prepare(truth, pred)
    vg = np.count_nonzero(g)
    if vg == 0:
        return float("nan")
    return float(abs(int(vg) - int(np.count_nonzero(r))) / vg * 100.0)


def precision_recall(truth, pred) -> tuple[float, float]:
    """Voxel precision ``|G n R| / |R|`` (NaN if ``R`` empty) and sensitivity ``|G n R| / |G|`` (NaN if ``G`` empty)."""
    g, r = prepare(truth, pred)
    tp = np.count_nonzero(g & r)
    ng, nr = np.count_nonzero(g), np.count_nonzero(r)
    return (float(tp / nr) if nr else float("nan")), (float(tp / ng) if ng else float("nan"))


def voxel_volume_ml(affine) -> float:
    """Volume of one voxel in mL: ``|det(affine[:3, :3])|`` mm^3 / 1000."""
    affine = _check_affine(affine)
    return abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0


def pcd(truth) -> float:
    """Positive class density of the paper: ``100 * |G| / number of voxels`` (%), ``G`` = label 1 only."""
    g, _ = truth_masks(truth)
    return float(100.0 * np.count_nonzero(g) / g.size) if g.size else float("nan")


# === Surface distance ===


def boundary(mask: np.ndarray) -> np.ndarray:
    """Lesion boundary as the challenge defines it: the mask minus its in-plane binary erosion.

    Erosion uses a 3x3x1 structuring element (axes 0 and 1 in-plane, none across slices), so a lesion
    voxel is boundary when one of its 8 in-plane neighbours *in its own slice* is background. Voxels outside
    the grid count as lesion (ITK's ``BinaryErode`` default, ``boundaryToForeground``), so the edge of the
    array does not create boundary.

    Args:
        mask: bool array ``[X, Y, Z]``.

    Returns:
        bool array ``[X, Y, Z]``.
    """
    eroded = ndimage.binary_erosion(mask, structure=_IN_PLANE_3x3, border_value=1)
    return mask & ~eroded


def _boundary_points_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the boundary voxels of a non-empty mask, shape ``(N, 3)``.

    Works on the bounding box grown by one voxel in-plane: the erosion sees the same neighbours there
    (background inside the grid, "lesion" outside it) as on the whole grid.
    """
    box = _bbox(mask, margin=(1, 1, 0))
    ijk = np.argwhere(boundary(mask[box])) + np.array([s.start for s in box])
    return ijk.astype(np.float64) @ affine[:3, :3].T + affine[:3, 3]


def hd95(truth, pred, affine) -> float:
    """95th-percentile Hausdorff distance (mm) between the lesion boundaries of truth and result.

    ``max(P95(d(G -> R)), P95(d(R -> G)))`` where ``d(A -> B)`` holds, for every boundary point of ``A``,
    the Euclidean distance in mm to the nearest boundary point of ``B``. Boundary voxel indices ``ijk``
    become points ``affine[:3, :3] @ ijk + affine[:3, 3]``, the truth's geometry for both masks; P95 is
    ``numpy.percentile``'s default (linear interpolation).

    NaN when ``R`` is empty (challenge rule) and, by this toolkit's choice, when ``G`` is empty (a
    distance to an empty set is undefined; the challenge script fails there).

    Args:
        truth, pred: arrays ``[X, Y, Z]`` as for :func:`prepare`.
        affine: the truth's 4x4 voxel-to-world matrix.
    """
    affine = _check_affine(affine)
    g, r = prepare(truth, pred)
    if not r.any() or not g.any():
        return float("nan")
    pg = _boundary_points_mm(g, affine)
    pr = _boundary_points_mm(r, affine)
    if len(pg) == 0 or len(pr) == 0:  # only when a mask fills whole slices edge to edge
        return float("nan")
    d_g_to_r = cKDTree(pr).query(pg, k=1)[0]
    d_r_to_g = cKDTree(pg).query(pr, k=1)[0]
    return float(max(np.percentile(d_g_to_r, 95), np.percentile(d_r_to_g, 95)))


# === Lesion-wise ===


def lesion_components(mask) -> tuple[np.ndarray, int]:
    """26-connected components of a mask: ``(labels int32 [X, Y, Z], count)``, labels ``1..count``.

    Args:
        mask: array ``[X, Y, Z]``, binarised like a result (integer ``>= 1``, float ``>= 0.5``).
    """
    labels, n = ndimage.label(binarize_result(mask), structure=CONNECTIVITY_26)
    return labels, int(n)


def _components_hit(mask: np.ndarray, other: np.ndarray) -> tuple[int, int]:
    """(number of 26-connected components of ``mask``, number of them sharing a voxel with ``other``)."""
    box = _bbox(mask)
    if box is None:
        return 0, 0
    labels, n = ndimage.label(mask[box], structure=CONNECTIVITY_26)
    hit = np.unique(labels[other[box]])
    return int(n), int(np.count_nonzero(hit))


def lesion_recall(truth, pred) -> float:
    """Lesion recall ("detection"): fraction of truth components overlapping ``R``; 1.0 when ``G`` is empty."""
    g, r = prepare(truth, pred)
    n, hit = _components_hit(g, r)
    return 1.0 if n == 0 else hit / n


def lesion_precision(truth, pred) -> float:
    """Fraction of result components overlapping ``G``; 1.0 when ``R`` has no component."""
    g, r = prepare(truth, pred)
    n, hit = _components_hit(r, g)
    return 1.0 if n == 0 else hit / n


def lesion_f1(truth, pred) -> float:
    """Lesion F1 ``2PR / (P + R)`` of :func:`lesion_precision` and :func:`lesion_recall`; 0 when ``P + R == 0``."""
    g, r = prepare(truth, pred)
    rec, prec = lesion_recall(g, r), lesion_precision(g, r)
    return 0.0 if prec + rec == 0 else 2.0 * prec * rec / (prec + rec)


# === Everything for one subject ===


def evaluate_arrays(truth, pred, affine) -> dict[str, float]:
    """All metrics of one subject, as the WMH challenge computes them, plus a few extras.

    Args:
        truth: label array ``[X, Y, Z]`` (0 background, 1 WMH, 2 ignored), any dtype.
        pred: result array of the same shape; integer ``>= 1`` / float ``>= 0.5`` is lesion.
        affine: the truth's 4x4 voxel-to-world matrix (spacing and direction), used for both.

    Returns:
        dict with the keys of :data:`METRIC_KEYS`, in that order: ``dice``, ``hd95`` (mm), ``avd`` (%),
        ``lesion_recall``, ``lesion_f1``, voxel ``precision`` and ``recall``, ``truth_volume_ml``,
        ``pred_volume_ml``, ``truth_lesions`` and ``pred_lesions`` (ints), ``pcd`` (%). Undefined values
        are NaN (``docs/metrics.md``).

    Raises:
        InputError: shapes differ, not 3D, non-numeric dtypes, or a bad affine.
    """
    affine = _check_affine(affine)
    g, r = prepare(truth, pred)
    if not g.any():
        log.debug("truth has no WMH voxel: hd95 and avd are NaN, lesion recall is 1.0")
    n_g, hit_g = _components_hit(g, r)
    n_r, hit_r = _components_hit(r, g)
    rec = 1.0 if n_g == 0 else hit_g / n_g
    prec = 1.0 if n_r == 0 else hit_r / n_r
    vox_precision, vox_recall = precision_recall(g, r)
    vox_ml = voxel_volume_ml(affine)
    return {
        "dice": dice(g, r),
        "hd95": hd95(g, r, affine),
        "avd": avd(g, r),
        "lesion_recall": rec,
        "lesion_f1": 0.0 if prec + rec == 0 else 2.0 * prec * rec / (prec + rec),
        "precision": vox_precision,
        "recall": vox_recall,
        "truth_volume_ml": float(np.count_nonzero(g) * vox_ml),
        "pred_volume_ml": float(np.count_nonzero(r) * vox_ml),
        "truth_lesions": n_g,
        "pred_lesions": n_r,
        "pcd": pcd(g),
    }


def lesion_table(mask, affine) -> list[dict[str, float]]:
    """Per-lesion table of a segmentation, one row per 26-connected component (for per-subject CSVs).

    Args:
        mask: segmentation ``[X, Y, Z]`` (integer ``>= 1`` / float ``>= 0.5`` is lesion, as for results).
        affine: its 4x4 voxel-to-world matrix.

    Returns:
        list of dicts ``{"lesion", "voxels", "volume_ml", "x_mm", "y_mm", "z_mm"}`` ordered by lesion id
        (the scan order of :func:`scipy.ndimage.label`); the centroid is the mean voxel centre in world mm.
    """
    affine = _check_affine(affine)
    mask = binarize_result(mask)
    if mask.ndim != 3:
        raise InputError(f"mask: expected a 3D volume [X, Y, Z], got shape {mask.shape}")
    box = _bbox(mask)
    if box is None:
        return []
    sub = mask[box]
    labels, n = ndimage.label(sub, structure=CONNECTIVITY_26)
    ids = labels[sub]
    ijk = np.argwhere(sub) + np.array([s.start for s in box])  # same C order as labels[sub]
    counts = np.bincount(ids, minlength=n + 1)[1:]
    centroid_ijk = np.stack([np.bincount(ids, weights=ijk[:, a], minlength=n + 1)[1:] for a in range(3)], axis=1)
    centroid_mm = (centroid_ijk / counts[:, None]) @ affine[:3, :3].T + affine[:3, 3]
    vox_ml = voxel_volume_ml(affine)
    return [
        {
            "lesion": i + 1,
            "voxels": int(counts[i]),
            "volume_ml": float(counts[i] * vox_ml),
            "x_mm": float(centroid_mm[i, 0]),
            "y_mm": float(centroid_mm[i, 1]),
            "z_mm": float(centroid_mm[i, 2]),
        }
        for i in range(n)
    ]
