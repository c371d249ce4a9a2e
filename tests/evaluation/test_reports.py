"""Report helpers: summaries against NumPy by hand, Table 1 layout, PNGs that open with the right size."""

import json
import math

import numpy as np
import pytest
from matplotlib import image as mpimg

from wmhkeras.errors import InputError
from wmhkeras.evaluation import reports

ROWS = [
    {"subject": "a1", "site": "A", "dice": 0.8, "hd95": 4.0, "avd": 10.0},
    {"subject": "a2", "site": "A", "dice": 0.6, "hd95": float("nan"), "avd": 30.0},
    {"subject": "b1", "site": "B", "dice": 0.7, "hd95": 6.0, "avd": "20.0"},  # strings as from a CSV
]


def test_describe_matches_numpy_by_hand():
    s = reports.describe([0.8, 0.6, 0.7, float("nan"), None])
    assert s["mean"] == pytest.approx(0.7)
    # sample SD (ddof=1): sqrt(((0.1)^2 + (0.1)^2 + 0) / 2) = 0.1
    assert s["sd"] == pytest.approx(0.1)
    assert s["sd"] == pytest.approx(np.std([0.8, 0.6, 0.7], ddof=1))
    assert (s["n"], s["n_nan"]) == (3, 2)
    one = reports.describe([5.0])
    assert one["mean"] == 5.0 and math.isnan(one["sd"])
    none = reports.describe([float("nan")])
    assert math.isnan(none["mean"]) and none["n"] == 0 and none["n_nan"] == 1


def test_summarize_overall_and_per_site():
    summary = reports.summarize(ROWS)
    assert summary["n_subjects"] == 3 and summary["sd_ddof"] == 1
    assert list(summary["overall"]) == ["dice", "hd95", "avd"]  # METRIC_KEYS order
    assert summary["overall"]["dice"]["mean"] == pytest.approx(0.7)
    assert summary["overall"]["hd95"]["mean"] == pytest.approx(5.0)
    assert summary["overall"]["hd95"]["sd"] == pytest.approx(np.std([4.0, 6.0], ddof=1))
    assert summary["overall"]["hd95"]["n_nan"] == 1
    assert summary["overall"]["avd"]["mean"] == pytest.approx(20.0)
    assert list(summary["by_site"]) == ["A", "B"]
    assert summary["by_site"]["A"]["dice"]["mean"] == pytest.approx(0.7)
    assert summary["by_site"]["A"]["hd95"]["n"] == 1
    assert summary["by_site"]["B"]["avd"]["mean"] == pytest.approx(20.0)
    assert reports.summarize([{"dice": 1.0}])["by_site"] == {}


def test_markdown_table_layout():
    siamese = {
        "dice": {"mean": 0.79, "sd": 0.06},
        "hd95": {"mean": 9.14, "sd": 9.96},
        "avd": {"mean": 11.82, "sd": 7.52},
        "lesion_recall": {"mean": 0.79, "sd": 0.14},
        "lesion_f1": {"mean": 0.62, "sd": 0.17},
    }
    dice_loss = {
        "overall": dict(siamese, dice={"mean": 0.734, "sd": 0.071}, hd95={"mean": float("nan"), "sd": float("nan")})
    }
    text = reports.markdown_table(
        {"MICCAI hold-out": {"Dice loss": dice_loss, "Siamese content loss": siamese}, "CAIN": {"Dice loss": siamese}}
    )
    lines = text.splitlines()
    assert lines[0] == "| data | model | Dice | HD95 (mm) | AVD (%) | lesion recall | lesion F1 |"
    assert lines[1] == "| --- | --- | --- | --- | --- | --- | --- |"
    assert (
        lines[2] == "| MICCAI hold-out | Dice loss | 0.73 +- 0.07 | n/a | 11.82 +- 7.52 | 0.79 +- 0.14 | 0.62 +- 0.17 |"
    )
    assert (
        lines[3]
        == "|  | Siamese content loss | 0.79 +- 0.06 | 9.14 +- 9.96 | 11.82 +- 7.52 | 0.79 +- 0.14 | 0.62 +- 0.17 |"
    )
    assert lines[4].startswith("| CAIN | Dice loss | 0.79 +- 0.06 |")
    assert len(lines) == 5


def test_rank_models_min_max_scaled():
    def s(d, h, a, r, f):
        return {
            k: {"mean": v}
            for k, v in zip(("dice", "hd95", "avd", "lesion_recall", "lesion_f1"), (d, h, a, r, f), strict=True)
        }

    ranked = reports.rank_models(
        {"x": s(0.8, 5.0, 10.0, 0.6, 0.7), "y": s(0.6, 9.0, 30.0, 0.8, 0.7), "z": s(0.7, 7.0, 20.0, 0.7, 0.7)}
    )
    # x: dice 1, hd95 1, avd 1, recall 0, f1 tie 1 -> 4/5; y: 0,0,0,1,1 -> 2/5; z: .5,.5,.5,.5,1 -> 3/5
    assert [name for name, _ in ranked] == ["x", "z", "y"]
    assert [score for _, score in ranked] == pytest.approx([0.8, 0.6, 0.4])


def test_bin_means():
    edges = [0.0, 0.1, 0.2, 0.3]
    means, counts = reports.bin_means([0.05, 0.07, 0.15, 0.3, 0.5, float("nan")], [10, 20, 40, 5, 99, 1], edges)
    assert counts.tolist() == [2, 1, 1]  # 0.3 falls in the closed last bin; 0.5 and NaN are left out
    assert means.tolist() == pytest.approx([15.0, 40.0, 5.0])
    means, counts = reports.bin_means([0.05], [10.0], edges)
    assert np.isnan(means[1]) and counts.tolist() == [1, 0, 0]
    with pytest.raises(InputError, match="increasing"):
        reports.bin_means([0.1], [1.0], [0.2, 0.1])


def test_avd_vs_pcd_png(tmp_path):
    rng = np.random.default_rng(1)
    pcd = rng.uniform(0, 0.55, 30)
    series = {"Dice loss": (pcd, rng.uniform(5, 60, 30)), "Siamese content loss": (pcd, rng.uniform(5, 40, 30))}
    path = reports.plot_avd_vs_pcd(series, tmp_path / "fig5.png", figsize=(6, 4), dpi=50)
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
    assert reports.choose_slices(truth > 0, pred > 0.5, 4) == [2, 4, 5, 7]
    path = reports.qc_montage(
        flair, truth, pred, tmp_path / "qc" / "s01.png", n_slices=4, columns=2, panel_size=1.5, dpi=40
    )
    img = mpimg.imread(path)
    assert img.shape[:2] == (120, 120)  # 2 rows x 2 columns of 1.5 in at 40 dpi
    # no lesion anywhere: falls back to the middle of the volume
    empty = np.zeros(flair.shape, np.uint8)
    assert reports.choose_slices(empty, empty, 3) == [2, 4, 7]
    path = reports.qc_montage(flair, None, empty, tmp_path / "empty.png", n_slices=3, columns=3, panel_size=1, dpi=30)
    assert mpimg.imread(path).shape[:2] == (30, 90)
    with pytest.raises(InputError, match="shape"):
        reports.qc_montage(flair, truth[:-1], pred, tmp_path / "bad.png")


def test_atomic_writers(tmp_path):
    out = reports.write_json({"a": float("nan"), "b": np.float32(1.5), "c": [np.int64(2)]}, tmp_path / "s.json")
    assert json.loads(out.read_text()) == {"a": None, "b": 1.5, "c": [2]}
    out = reports.write_csv([{"x": 1, "y": 2.5}, {"x": 3, "z": "q"}], tmp_path / "rows.csv")
    assert out.read_text().splitlines() == ["x,y,z", "1,2.5,", "3,,q"]
    reports.write_text("v2\n", reports.write_text("v1\n", tmp_path / "t.md"))
    assert (tmp_path / "t.md").read_text() == "v2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv", "s.json", "t.md"]
