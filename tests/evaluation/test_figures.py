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
