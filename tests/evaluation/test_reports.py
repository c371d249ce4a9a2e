"""Report helpers: summaries against NumPy by hand, Table 1 layout, Figure 5 binning (PNGs: test_figures)."""

import math

import numpy as np
import pytest

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


def test_bin_means():
    edges = [0.0, 0.1, 0.2, 0.3]
    means, counts = reports.bin_means([0.05, 0.07, 0.15, 0.3, 0.5, float("nan")], [10, 20, 40, 5, 99, 1], edges)
    assert counts.tolist() == [2, 1, 1]  # 0.3 falls in the closed last bin; 0.5 and NaN are left out
    assert means.tolist() == pytest.approx([15.0, 40.0, 5.0])
    means, counts = reports.bin_means([0.05], [10.0], edges)
    assert np.isnan(means[1]) and counts.tolist() == [1, 0, 0]
    with pytest.raises(InputError, match="increasing"):
        reports.bin_means([0.1], [1.0], [0.2, 0.1])
