"""QC without ground truth: the cohort's volume range and flags (worked out by hand), the order of qc.html,
and ``segment(qc=True)``: one prediction-only montage per subject and an index linking each of them."""

import math
import re

import numpy as np
import pytest
from matplotlib import image as mpimg

from tests.inference.helpers import SHAPE, bright_segmenter, read_rows, write_nifti
from wmhkeras.inference import qc
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.inference.segment import segment


def _row(subject, volume, status="ok"):
    return {"subject": subject, "lesion_volume_ml": "" if volume is None else f"{volume:.4f}",
            "lesion_count": "" if volume is None else str(int(volume > 0)), "status": status, "error": "",
            "flair": f"/data/{subject}.nii.gz"}


# Volumes 1, 2, 4, 8, 16, 1000 mL (non-empty), one empty mask and one failed subject.
ROWS = [_row("a", 1.0), _row("b", 2.0), _row("c", 4.0), _row("d", 8.0), _row("e", 16.0), _row("f", 1000.0),
        _row("g", 0.0), _row("h", None, status="failed")]


def test_volume_range_on_log_volumes_by_hand():
    cohort = qc.volume_range(ROWS)
    # ln volumes: 0, ln2, 2ln2, 3ln2, 4ln2, ln1000 -> median (2ln2 + 3ln2) / 2 = 2.5 ln2;
    # |deviations|: 2.5, 1.5, 0.5, 0.5, 1.5 (x ln2) and ln1000 - 2.5ln2 -> MAD = 1.5 ln2.
    assert cohort.n == 6
    assert cohort.center == pytest.approx(2.5 * math.log(2))
    assert cohort.scale == pytest.approx(1.4826 * 1.5 * math.log(2))
    assert cohort.median_ml == pytest.approx(2 ** 2.5)
    assert cohort.high_ml == pytest.approx(2 ** (2.5 + 3 * 1.4826 * 1.5))
    assert cohort.low_ml == pytest.approx(2 ** (2.5 - 3 * 1.4826 * 1.5))
    assert cohort.low_ml < 1.0 < 16.0 < cohort.high_ml < 1000.0


def test_flags_empty_masks_and_volumes_outside_the_range():
    flagged = {r["subject"]: r for r in qc.flag_rows(ROWS)}
    assert flagged["f"]["qc_flag"] == "high_volume"
    z_f = (math.log(1000) - 2.5 * math.log(2)) / (1.4826 * 1.5 * math.log(2))
    assert float(flagged["f"]["volume_z"]) == pytest.approx(z_f, abs=0.005) and z_f > 3
    assert float(flagged["a"]["volume_z"]) == pytest.approx(-2.5 / (1.4826 * 1.5), abs=0.005)
    assert [flagged[s]["qc_flag"] for s in "abcde"] == [""] * 5
    assert (flagged["g"]["qc_flag"], flagged["g"]["volume_z"]) == ("empty_mask", "")
    assert (flagged["h"]["qc_flag"], flagged["h"]["volume_z"]) == ("", "")
    assert ROWS[0].get("qc_flag") is None  # copies: the input rows are left alone


def test_a_low_volume_and_no_range_for_a_small_cohort():
    rows = [_row(s, v) for s, v in zip("abcdef", [8.0, 8.5, 9.0, 9.5, 10.0, 0.01], strict=True)]
    assert {r["subject"]: r["qc_flag"] for r in qc.flag_rows(rows)}["f"] == "low_volume"
    assert qc.volume_range(rows[:4]) is None  # fewer than MIN_COHORT non-empty masks
    assert all(r["volume_z"] == "" and r["qc_flag"] == "" for r in qc.flag_rows(rows[:4]))


def test_alike_volumes_cannot_narrow_the_range_below_its_floor():
    """Five scans of nearly one volume, and one simply lighter: without a floor its robust z would be about
    -136 (MAD 0.01 mL around 5 mL); with the floor (SD 0.5 of ln volume) it is -0.71, and nothing is flagged."""
    rows = [_row(s, v) for s, v in zip("abcdef", [5.0, 5.01, 4.99, 5.02, 5.0, 3.5], strict=True)]
    cohort = qc.volume_range(rows)
    assert cohort.floored and cohort.scale == qc.MIN_LOG_SD and cohort.center == pytest.approx(math.log(5.0))
    flagged = {r["subject"]: r for r in qc.flag_rows(rows)}
    assert float(flagged["f"]["volume_z"]) == pytest.approx(math.log(3.5 / 5.0) / 0.5, abs=0.005)
    assert all(r["qc_flag"] == "" for r in flagged.values())
    assert qc.volume_range([_row(s, 5.0) for s in "abcde"]).scale == qc.MIN_LOG_SD  # no spread at all
    assert "the spread taken as its floor" in qc._cohort_line(qc.flag_rows(rows), cohort)


def test_repeated_scans_of_one_person_count_once():
    one = [{**_row(f"p1-ses{i}", v), "participant": "p1"} for i, v in enumerate([5.0, 5.1, 4.9, 5.2, 3.0, 5.0])]
    assert qc.volume_range(one) is None
    assert all(r["volume_z"] == "" and r["qc_flag"] == "" for r in qc.flag_rows(one))
    line = qc._cohort_line(qc.flag_rows(one), None)
    assert "No range: too few independent scans, 6 non-empty masks of 1 participant; a range needs 5" in line
    # five people, one of them scanned three times: five values, that person's the median of its three
    people = [{**_row(f"q{i}", v), "participant": f"q{i}"} for i, v in enumerate([1.0, 2.0, 4.0, 8.0])]
    people += [{**_row(f"r-{i}", v), "participant": "r"} for i, v in enumerate([16.0, 32.0, 1000.0])]
    cohort = qc.volume_range(people)
    assert (cohort.n, cohort.scans) == (5, 7)
    assert cohort.center == pytest.approx(math.log(4.0))  # median of 1, 2, 4, 8 and r's median 32


def test_qc_order_puts_outliers_first():
    order = [r["subject"] for r in qc.qc_order(qc.flag_rows(ROWS))]
    # failed, empty, then |z| as written: f 3.36, a 1.12, b and e 0.67, c and d 0.22 (ties by name)
    assert order == ["h", "g", "f", "a", "b", "e", "c", "d"]


def test_qc_html_links_relative_and_escapes(tmp_path):
    montages = {}
    for subject in ("a", "f"):
        montages[subject] = tmp_path / "shard1" / "qc" / f"{subject}.png"
        montages[subject].parent.mkdir(parents=True, exist_ok=True)
        montages[subject].write_bytes(b"\x89PNG\r\n\x1a\n")
    rows = qc.flag_rows([*ROWS, _row("<x>", 3.0)])
    page = qc.write_qc_html(tmp_path / "index" / "qc.html", rows, montages, qc.volume_range(rows)).read_text()
    assert '<img src="../shard1/qc/f.png"' in page and '<a href="../shard1/qc/a.png">' in page
    assert "&lt;x&gt;" in page and "<x>" not in page
    subjects = re.findall(r"<tr[^>]*><td>\d+</td><td>([^<]*)</td>", page)
    assert subjects[:3] == ["h", "g", "f"] and len(subjects) == 9
    assert page.count("no montage") == 7
    assert "9 subjects: 1 failed, 1 empty masks, 1 volumes outside the cohort's range" in page


def test_segment_qc_writes_a_montage_per_subject_and_the_index(tmp_path):
    """Five subjects with bright blobs of 8, 16, 24, 32 and 800 voxels, and one with none: the big one is
    flagged high, the blank one empty; each montage is a PNG of the expected size."""
    files = []
    for i, depth in enumerate([1, 2, 3, 4]):
        vol = np.full(SHAPE, 0.1, np.float32)
        vol[4:6, 4:8, 2:2 + depth] = 1.0  # 8 x depth voxels
        files.append(write_nifti(tmp_path / f"s{i}.nii.gz", vol, np.eye(4)))
    big = np.full(SHAPE, 0.1, np.float32)
    big[2:22, 2:22, 1:3] = 1.0  # 800 voxels
    files.append(write_nifti(tmp_path / "s4.nii.gz", big, np.eye(4)))
    lone = np.full(SHAPE, 0.1, np.float32)
    lone[16, 16, 5] = 1.0  # a one-voxel 'lesion', removed by min_lesion_voxels=2: an empty mask
    files.append(write_nifti(tmp_path / "s5.nii.gz", lone, np.eye(4)))
    result = segment(bright_segmenter(), files, tmp_path / "out", SegmentSettings(qc=True, min_lesion_voxels=2))
    assert result.ok
    out = tmp_path / "out"
    rows = {r["subject"]: r for r in read_rows(out / "summary.csv")}
    assert [rows[f"s{i}"]["lesion_volume_ml"] for i in range(6)] == ["0.0080", "0.0160", "0.0240", "0.0320",
                                                                     "0.8000", "0.0000"]
    assert (rows["s4"]["qc_flag"], rows["s5"]["qc_flag"]) == ("high_volume", "empty_mask")
    assert all(rows[f"s{i}"]["qc_flag"] == "" for i in range(4))
    # panels of 3 in at 100 dpi, 3 per row: six, the slices with lesion completed by slices that hold brain
    # (foreground above a tenth of the 99.5th percentile); in s4 only the big blob's two slices are that bright
    sizes = {i: mpimg.imread(out / "qc" / f"s{i}.png").shape[:2] for i in (0, 4, 5)}
    assert sizes == {0: (600, 900), 4: (300, 600), 5: (600, 900)}
    page = (out / "qc.html").read_text()
    assert re.findall(r"<tr[^>]*><td>\d+</td><td>([^<]*)</td>", page)[:2] == ["s5", "s4"]
    assert all(f'src="qc/s{i}.png"' in page for i in range(6))
    assert "qc" in result.subjects[0].files and not list(out.rglob(".tmp-*"))


def test_summary_names_the_participant_of_each_scan(tmp_path):
    """A manifest's participant column reaches summary.csv, where the cohort range counts people."""
    rows = ["subject,site,flair,t1,label,participant"]
    for i in range(3):
        vol = np.full(SHAPE, 0.1, np.float32)
        vol[4:6, 4:8, 2:2 + i + 1] = 1.0
        write_nifti(tmp_path / f"s{i}.nii.gz", vol, np.eye(4))
        rows.append(f"s{i},A,s{i}.nii.gz,,,{'p1' if i < 2 else 'p2'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    segment(bright_segmenter(), [tmp_path / "m.csv"], tmp_path / "out", SegmentSettings(qc=True))
    table = read_rows(tmp_path / "out" / "summary.csv")
    assert list(table[0])[:2] == ["subject", "participant"]
    assert [r["participant"] for r in table] == ["p1", "p1", "p2"]
    assert "3 non-empty masks of 2 participants" in (tmp_path / "out" / "qc.html").read_text()
