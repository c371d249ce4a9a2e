"""WMH challenge metrics against values computed by hand on tiny 3D arrays."""

import math

import numpy as np
import pytest

from wmhkeras.errors import InputError
from wmhkeras.evaluation import metrics

EYE = np.eye(4)
ANISO = np.diag([1.0, 1.0, 3.0, 1.0])  # 1 x 1 mm in-plane, 3 mm slices


def vol(shape=(7, 7, 5), dtype=np.uint8):
    return np.zeros(shape, dtype=dtype)


# === Inputs ===


def test_label_2_is_ignored_in_integer_truth():
    truth = vol()
    truth[1, 1, 1] = 1
    truth[4, 4, 1] = 2
    pred = vol()
    pred[1, 1, 1] = pred[4, 4, 1] = 1  # the label-2 voxel is removed from the result
    g, r = metrics.prepare(truth, pred)
    assert g.sum() == 1 and r.sum() == 1
    assert metrics.dice(truth, pred) == 1.0
    assert metrics.evaluate_arrays(truth, pred, EYE)["pred_lesions"] == 1


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_label_values_decide_not_dtype(dtype):
    truth = vol(dtype=dtype)
    truth[1, 1, 1] = 1
    truth[1, 2, 1] = 2
    truth[5, 5, 3] = 1
    pred = vol()
    pred[1, 1, 1] = 1
    m = metrics.evaluate_arrays(truth, pred, EYE)
    assert m["truth_lesions"] == 2  # label 1 counted as WMH for every dtype
    assert m["dice"] == pytest.approx(2 * 1 / (2 + 1))
    assert m["lesion_recall"] == 0.5


def test_float_prediction_thresholded_at_half_and_int_at_one():
    truth = vol()
    truth[2, 2, 2] = truth[2, 3, 2] = 1
    pred = vol(dtype=np.float32)
    pred[2, 2, 2] = 0.5  # lesion (>= 0.5)
    pred[2, 3, 2] = 0.49  # not lesion
    assert metrics.dice(truth, pred) == pytest.approx(2 * 1 / (2 + 1))
    ints = vol(dtype=np.int16)
    ints[2, 2, 2], ints[2, 3, 2] = 1, 0
    np.testing.assert_array_equal(metrics.binarize_result(ints), metrics.binarize_result(pred))
    assert not metrics.binarize_result(np.array([np.nan]))[0]


def test_bad_inputs_raise_input_error():
    with pytest.raises(InputError, match="differs"):
        metrics.evaluate_arrays(vol((3, 3, 3)), vol((3, 3, 4)), EYE)
    with pytest.raises(InputError, match="4x4"):
        metrics.evaluate_arrays(vol(), vol(), np.eye(3))
    with pytest.raises(InputError, match="3D"):
        metrics.dice(np.zeros((3, 3)), np.zeros((3, 3)))


# === Overlap and volume ===


def test_dice_avd_precision_recall_by_hand():
    truth = vol()
    truth[1:3, 1:3, 1] = 1  # 4 voxels
    pred = vol()
    pred[1:3, 1, 1] = 1  # 2 voxels inside the truth
    pred[5, 5, 4] = 1  # 1 false positive
    # |G| = 4, |R| = 3, |G n R| = 2
    assert metrics.dice(truth, pred) == pytest.approx(4 / 7)
    assert metrics.avd(truth, pred) == pytest.approx(25.0)
    assert metrics.precision_recall(truth, pred) == pytest.approx((2 / 3, 2 / 4))
    assert metrics.pcd(truth) == pytest.approx(100 * 4 / (7 * 7 * 5))


def test_volumes_use_the_affine_determinant():
    truth = vol()
    truth[1:3, 1:3, 1] = 1  # 4 voxels of 1 x 1 x 3 mm = 12 mm^3
    pred = vol()
    pred[1, 1, 1] = 1
    m = metrics.evaluate_arrays(truth, pred, ANISO)
    assert m["truth_volume_ml"] == pytest.approx(0.012)
    assert m["pred_volume_ml"] == pytest.approx(0.003)
    flipped = ANISO.copy()
    flipped[0, 0] = -1.0  # negative determinant, same volume
    assert metrics.voxel_volume_ml(flipped) == pytest.approx(0.003)


def test_empty_truth():
    truth = vol()
    pred = vol()
    pred[3, 3, 2] = 1
    m = metrics.evaluate_arrays(truth, pred, EYE)
    assert m["dice"] == 0.0
    assert math.isnan(m["hd95"])  # toolkit convention: distance to an empty truth is undefined
    assert math.isnan(m["avd"])
    assert m["lesion_recall"] == 1.0  # no lesion to find
    # lesion precision 0/1 = 0, recall 1 -> F1 = 0
    assert m["lesion_f1"] == 0.0
    assert math.isnan(m["recall"]) and m["precision"] == 0.0
    assert m["truth_lesions"] == 0 and m["pred_lesions"] == 1 and m["pcd"] == 0.0


def test_empty_prediction():
    truth = vol()
    truth[3, 3, 2] = 1
    m = metrics.evaluate_arrays(truth, vol(), EYE)
    assert m["dice"] == 0.0
    assert math.isnan(m["hd95"])  # challenge rule: undefined when nothing is detected
    assert m["avd"] == 100.0
    assert m["lesion_recall"] == 0.0
    # lesion precision 1.0 (no component), recall 0 -> F1 = 2*1*0/1 = 0
    assert m["lesion_f1"] == 0.0
    assert math.isnan(m["precision"]) and m["recall"] == 0.0


def test_both_empty():
    m = metrics.evaluate_arrays(vol(), vol(), EYE)
    assert math.isnan(m["dice"]) and math.isnan(m["hd95"]) and math.isnan(m["avd"])
    assert m["lesion_recall"] == 1.0 and m["lesion_f1"] == 1.0  # P = R = 1


# === Lesion-wise ===


def test_diagonal_lesions_join_with_26_connectivity():
    truth = vol()
    truth[1, 1, 1] = 1
    truth[2, 2, 2] = 1  # touches only at a corner: one 26-connected lesion
    labels, n = metrics.lesion_components(truth)
    assert n == 1 and labels[1, 1, 1] == labels[2, 2, 2] == 1
    pred = vol()
    pred[2, 2, 2] = 1  # hits the joint lesion
    assert metrics.lesion_recall(truth, pred) == 1.0
    assert metrics.evaluate_arrays(truth, pred, EYE)["truth_lesions"] == 1


def test_lesion_recall_and_f1_by_hand():
    truth = vol((9, 9, 3))
    truth[1, 1, 1] = 1  # lesion A, hit
    truth[4, 4, 1] = 1  # lesion B, hit
    truth[7, 7, 1] = 1  # lesion C, missed
    pred = vol((9, 9, 3))
    pred[1, 1, 1] = 1  # detection on A
    pred[4, 4, 1:3] = 1  # detection on B
    pred[7, 1, 1] = 1  # false positive
    pred[1, 7, 1] = 1  # false positive
    recall, precision = 2 / 3, 2 / 4
    assert metrics.lesion_recall(truth, pred) == pytest.approx(recall)
    assert metrics.lesion_precision(truth, pred) == pytest.approx(precision)
    assert metrics.lesion_f1(truth, pred) == pytest.approx(2 * recall * precision / (recall + precision))


def test_lesion_table():
    mask = vol((6, 6, 6))
    mask[1, 1, 1] = mask[1, 2, 1] = 1  # lesion 1: centroid (1, 1.5, 1)
    mask[4, 4, 4] = 1  # lesion 2
    affine = np.diag([2.0, 1.0, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 0.0, 5.0]
    rows = metrics.lesion_table(mask, affine)
    assert [r["lesion"] for r in rows] == [1, 2]
    assert rows[0]["voxels"] == 2 and rows[0]["volume_ml"] == pytest.approx(2 * 6 / 1000)
    assert (rows[0]["x_mm"], rows[0]["y_mm"], rows[0]["z_mm"]) == pytest.approx((-8.0, 1.5, 8.0))
    assert (rows[1]["x_mm"], rows[1]["y_mm"], rows[1]["z_mm"]) == pytest.approx((-2.0, 4.0, 17.0))
    assert metrics.lesion_table(vol(), EYE) == []


# === HD95 ===


def test_boundary_is_in_plane_only():
    mask = vol((5, 5, 3), dtype=bool)
    mask[1:4, 1:4, :] = True  # a 3x3 column through all slices
    b = metrics.boundary(mask)
    # the centre voxel of every slice is interior in-plane; no erosion across slices
    assert not b[2, 2, :].any()
    assert b.sum() == 8 * 3
    full = np.ones((4, 4, 2), dtype=bool)  # outside the grid counts as lesion (ITK default)
    assert not metrics.boundary(full).any()


def diamond() -> np.ndarray:
    """A diamond of radius 2 (13 voxels, ``|dx| + |dy| <= 2`` around (3, 3)) in one 7 x 7 slice."""
    mask = vol((7, 7, 1), dtype=bool)
    for dx in range(-2, 3):
        for dy in range(-2, 3):
            mask[3 + dx, 3 + dy, 0] = abs(dx) + abs(dy) <= 2
    return mask


def test_boundary_uses_all_8_in_plane_neighbours():
    """A diamond's 4-neighbour and 8-neighbour boundaries differ: the voxels beside the centre see only
    lesion along the axes, but background diagonally (e.g. (4, 3) touches (5, 4)), so the challenge's
    3x3 ball makes them boundary and only the centre is interior."""
    b = metrics.boundary(diamond())
    assert np.argwhere(~b[..., 0] & diamond()[..., 0]).tolist() == [[3, 3]]
    assert b.sum() == 12  # a 4-neighbour cross would keep (2, 3), (4, 3), (3, 2), (3, 4) inside: 8


def test_hd95_of_a_diamond_by_hand():
    """Truth: the diamond; result: the single voxel at its tip (5, 3), its own boundary.

    d(G -> R) over the 12 boundary voxels, as offsets from the centre: (2, 0) 0; (1, 0) 1; (1, +-1) sqrt 2
    each; (0, +-1) sqrt 5 each; (0, +-2) sqrt 8 each; (-1, 0) 3; (-1, +-1) sqrt 10 each; (-2, 0) 4.
    Sorted, P95 sits at index 0.95 * 11 = 10.45, between sqrt 10 and 4. d(R -> G) = [0].
    (With a 4-neighbour boundary the 8 points give index 6.65: sqrt 10 + 0.65 (4 - sqrt 10) = 3.707.)
    """
    pred = vol((7, 7, 1))
    pred[5, 3, 0] = 1
    expected = math.sqrt(10) + 0.45 * (4 - math.sqrt(10))  # 3.5393
    assert metrics.hd95(diamond(), pred, EYE) == pytest.approx(expected)
    assert metrics.hd95(pred, diamond(), EYE) == pytest.approx(expected)  # symmetric: the max of both ways


def test_hd95_two_single_voxels_anisotropic():
    truth = vol()
    truth[1, 1, 1] = 1
    pred = vol()
    pred[1, 1, 3] = 1  # two slices apart: 2 x 3 mm
    assert metrics.hd95(truth, pred, ANISO) == pytest.approx(6.0)
    assert metrics.hd95(truth, pred, EYE) == pytest.approx(2.0)


def test_hd95_short_lines_by_hand():
    # truth: a 1x5 line in slice 0 (every voxel is boundary); result: a single voxel at its first end.
    truth = vol((7, 7, 1))
    truth[1, 1:6, 0] = 1
    pred = vol((7, 7, 1))
    pred[1, 1, 0] = 1
    # d(G -> R) = [0, 1, 2, 3, 4] mm, P95 by linear interpolation = 3 + 0.8 * (4 - 3) = 3.8
    # d(R -> G) = [0]
    assert metrics.hd95(truth, pred, EYE) == pytest.approx(3.8)
    spacing = np.diag([1.0, 0.5, 3.0, 1.0])  # along axis 1 the points are 0.5 mm apart
    assert metrics.hd95(truth, pred, spacing) == pytest.approx(1.9)


def test_hd95_direction_does_not_change_distances():
    truth = vol((8, 8, 4))
    truth[1:4, 2:5, 1] = 1
    pred = vol((8, 8, 4))
    pred[2:6, 3:6, 2] = 1
    base = np.diag([0.9, 1.2, 3.0, 1.0])
    flipped = base.copy()
    flipped[0, :] *= -1  # flipped x axis (e.g. LAS instead of RAS)
    flipped[:3, 3] = [50.0, -20.0, 7.0]
    c, s = np.cos(0.4), np.sin(0.4)
    rotated = base.copy()
    rotated[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ base[:3, :3]
    reference = metrics.hd95(truth, pred, base)
    assert reference > 0
    assert metrics.hd95(truth, pred, flipped) == pytest.approx(reference)
    assert metrics.hd95(truth, pred, rotated) == pytest.approx(reference)
    # but the spacing matters: with 1 mm slices the 1-slice offset shrinks
    assert metrics.hd95(truth, pred, EYE) != pytest.approx(reference)


def test_evaluate_arrays_keys_and_consistency():
    rng = np.random.default_rng(0)
    truth = (rng.random((12, 12, 6)) > 0.85).astype(np.uint8)
    pred = (rng.random((12, 12, 6)) > 0.85).astype(np.float32)
    m = metrics.evaluate_arrays(truth, pred, ANISO)
    assert tuple(m) == metrics.METRIC_KEYS
    assert tuple(m)[:5] == ("dice", "hd95", "avd", "lesion_recall", "lesion_f1")
    assert m["dice"] == metrics.dice(truth, pred)
    assert m["hd95"] == metrics.hd95(truth, pred, ANISO)
    assert m["lesion_f1"] == metrics.lesion_f1(truth, pred)
    assert isinstance(m["truth_lesions"], int) and all(isinstance(v, (int, float)) for v in m.values())


def test_mask_dice():
    empty = np.zeros((2, 2), bool)
    assert metrics.mask_dice(empty, empty) == 1.0
    assert metrics.mask_dice([[1, 1], [0, 0]], [[1, 0], [0, 0]]) == pytest.approx(2 / 3)
