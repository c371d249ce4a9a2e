"""Evaluation figures: Figure 5 and QC montage PNGs that open with the right size, no temporary file left."""

import numpy as np
import pytest
from matplotlib import image as mpimg

from wmhkeras.errors import InputError
from wmhkeras.evaluation import figures


def test_avd_vs_pcd_png(tmp_path):
    rng = np.random.default_rng(1)
    pcd = rng.uniform(0, 0.55, 30)
    series = {"Dice loss": (pcd, rng.uniform(5, 60, 30)), "Siamese content loss": (pcd, rng.uniform(5, 40, 30))}
    path = figures.plot_avd_vs_pcd(series, tmp_path / "fig5.png", figsize=(6, 4), dpi=50)
    img = mpimg.imread(path)
    assert img.shape[:2] == (200, 300)
    assert [p.name for p in tmp_path.iterdir()] == ["fig5.png"]  # no temporary file left behind


def test_qc_montage_png(tmp_path):
    flair = np.random.default_rng(2).random((32, 28, 10)).astype(np.float32)
    truth = np.zeros(flair.shape, np.uint8)
    truth[10:15, 10:14, 2:5] = 1
    truth[20, 20, 7] = 2  # not WMH
    pred = np.zeros(flair.shape, np.float32)
    pred[11:16, 10:13, 3:8] = 0.9
    assert figures.choose_slices(truth > 0, pred > 0.5, 4) == [2, 4, 5, 7]
    path = figures.qc_montage(
        flair, truth, pred, tmp_path / "qc" / "s01.png", n_slices=4, columns=2, panel_size=1.5, dpi=40
    )
    img = mpimg.imread(path)
    assert img.shape[:2] == (120, 120)  # 2 rows x 2 columns of 1.5 in at 40 dpi
    # no lesion anywhere: falls back to the middle of the volume
    empty = np.zeros(flair.shape, np.uint8)
    assert figures.choose_slices(empty, empty, 3) == [2, 4, 7]
    path = figures.qc_montage(flair, None, empty, tmp_path / "empty.png", n_slices=3, columns=3, panel_size=1, dpi=30)
    assert mpimg.imread(path).shape[:2] == (30, 90)
    with pytest.raises(InputError, match="shape"):
        figures.qc_montage(flair, truth[:-1], pred, tmp_path / "bad.png")


def test_montages_show_slices_that_hold_brain():
    """A false positive in the first slice (no brain there) is not shown; one lesion slice is completed to
    six panels with slices spread over the brain; without lesion, six brain slices."""
    flair = np.zeros((20, 20, 16), np.float32)
    flair[4:16, 4:16, 3:13] = 1.0  # brain in slices 3..12
    flair[9:11, 9:11, 2] = 1.0  # a sliver of brain in slice 2: under a quarter of the fullest slice
    pred = np.zeros(flair.shape, np.uint8)
    pred[5:7, 5:7, 0] = 1  # outside the brain, in an empty edge slice
    pred[8:10, 8:10, 7] = 1
    empty = np.zeros(flair.shape, np.uint8)
    assert list(figures.brain_slices(flair)) == list(range(3, 13))
    chosen = figures.choose_slices(empty, pred, 6, flair)
    assert 7 in chosen and len(chosen) == 6 and all(3 <= k <= 12 for k in chosen)
    assert figures.choose_slices(empty, empty, 6, flair) == [3, 5, 7, 8, 10, 12]
    edge = np.zeros(flair.shape, np.uint8)
    edge[9, 9, 2] = 1  # a lesion only where little brain shows: that slice is still shown
    assert 2 in figures.choose_slices(empty, edge, 6, flair)
    assert figures.choose_slices(empty, empty, 3, np.zeros(flair.shape)) == [0, 8, 15]  # blank: anywhere


def test_figure5_has_an_open_last_bin_so_no_subject_is_dropped(tmp_path, caplog):
    # 0.2 is the last edge: 0.2 and 3.0 fall in ">= 0.2"; the NaN subject alone is left out.
    pcd = [0.05, 0.15, 0.2, 3.0, float("nan")]
    avd = [10.0, 20.0, 30.0, 50.0, 1.0]
    labels, means, counts = figures.open_bins(pcd, avd, [0.0, 0.1, 0.2])
    assert labels == ["0-0.1", "0.1-0.2", ">= 0.2"]
    assert counts.tolist() == [1, 1, 2]
    np.testing.assert_allclose(means, [10.0, 20.0, 40.0])
    # the default (the paper's) edges end at 0.55 %: a subject at 2 % used to vanish from the figure
    labels, _, counts = figures.open_bins([0.01, 2.0], [5.0, 7.0])
    assert labels[-1] == ">= 0.55" and counts[-1] == 1 and counts.sum() == 2
    with caplog.at_level("INFO", logger="wmhkeras.evaluation.figures"):
        figures.plot_avd_vs_pcd({"dice": ([0.01, 2.0], [5.0, 7.0])}, tmp_path / "fig5.png", dpi=30)
    assert "subjects per bin [1, 0, 0, 0, 0, 0, 0, 0, 1]" in caplog.text
