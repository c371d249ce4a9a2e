"""wmhkeras evaluate: hand-computed metrics, report files, grid refusal, no TensorFlow (matching: test_matching)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras.cli.main  # noqa: F401  (the group, as the installed entry point loads it)
from tests.evaluation.helpers import SHAPE, _cohort, _write
from wmhkeras.cli.evaluate import evaluate_command
from wmhkeras.errors import InputError
from wmhkeras.evaluation.evaluate import evaluate
from wmhkeras.evaluation.matching import resolve_truth

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_end_to_end_reports(tmp_path):
    data, seg = _cohort(tmp_path)
    result = evaluate(seg, data / "manifest.csv", tmp_path / "ev", model_name="content loss")
    out = tmp_path / "ev"
    rows = _rows(out / "metrics.csv")
    assert list(rows[0])[:6] == ["subject", "dice", "hd95", "avd", "lesion_recall", "lesion_f1"]
    assert {"site", "status", "precision", "pcd", "truth_lesions", "qc_png"} <= set(rows[0])
    assert [(r["subject"], r["site"], r["status"]) for r in rows] == [("s1", "A", "ok"), ("s2", "B", "ok")]
    s1, s2 = rows
    assert float(s1["dice"]) == pytest.approx(8 / 11)
    assert float(s1["avd"]) == pytest.approx(20.0)
    assert float(s1["lesion_recall"]) == pytest.approx(0.5)
    assert float(s1["lesion_f1"]) == pytest.approx(2 / 3)
    assert (float(s2["dice"]), float(s2["hd95"]), float(s2["avd"])) == (1.0, 0.0, 0.0)

    summary = json.loads((out / "summary.json").read_text())
    dice = summary["overall"]["dice"]
    assert dice["mean"] == pytest.approx((8 / 11 + 1) / 2) and dice["sd"] == pytest.approx(np.std([8 / 11, 1], ddof=1))
    assert sorted(summary["by_site"]) == ["A", "B"] and summary["n_failed"] == 0
    files = summary["files"]
    for rel in [files[k] for k in ("metrics", "table", "figure5", "report")] + list(files["qc"].values()):
        assert not rel.startswith("/") and (out / rel).is_file()
    for png in [out / files["figure5"], out / files["qc"]["s1"], out / files["qc"]["s2"]]:
        assert png.read_bytes()[:8] == PNG_MAGIC
    table = (out / "table.md").read_text().splitlines()
    assert table[0] == "| data | model | Dice | HD95 (mm) | AVD (%) | lesion recall | lesion F1 |"
    assert table[2].startswith("| manifest.csv | content loss | 0.86 +- 0.19 |")
    assert len(table) == 5  # header, rule, all subjects, site A, site B
    report = (out / "report.md").read_text()
    assert "(qc/s1.png)" in report and "(figure5_avd_vs_pcd.png)" in report
    assert result.n_failed == 0 and result.files["report"] == out / "report.md"


def test_missing_prediction_fails_that_subject(tmp_path):
    data, seg = _cohort(tmp_path)
    for p in seg.glob("s2_*"):
        p.unlink()
    res = CliRunner().invoke(evaluate_command, ["--pred", str(seg), "--truth", str(data), "--out", str(tmp_path / "ev"),
                                                "--no-qc"])
    assert res.exit_code == 1, res.output
    assert "failed: s2: no prediction for subject s2" in res.output and "| data | model |" in res.output
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["n_subjects"] == 1 and summary["failed"][0]["subject"] == "s2" and summary["files"]["qc"] == {}


def test_grid_mismatch_is_refused(tmp_path):
    data, seg = _cohort(tmp_path)
    shifted = _write(tmp_path / "s1_shifted.nii.gz", np.zeros(SHAPE), np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(InputError, match="affine differs"):
        evaluate(shifted, data / "s1_wmh.nii.gz", tmp_path / "ev")
    small = _write(tmp_path / "s1_small.nii.gz", np.zeros((20, 20, 5)))
    res = CliRunner().invoke(evaluate_command, ["--pred", str(small), "--truth", str(data / "s1_wmh.nii.gz"),
                                                "--out", str(tmp_path / "ev")])
    assert res.exit_code == 2 and "shape (20, 20, 5) differs" in res.output
    assert not (tmp_path / "ev").exists()
    # within a cohort the off-grid subject fails alone
    _write(seg / "s2_wmh_mask.nii.gz", np.zeros(SHAPE), np.diag([1.0, 1.0, 2.0, 1.0]))
    result = evaluate(seg, data, tmp_path / "ev2", qc=False)
    assert [r["status"] for r in result.rows] == ["ok", "failed"] and "affine differs" in result.rows[1]["error"]


def test_run_folder_holdout(tmp_path):
    from wmhkeras.config import config_from_dict, save_config

    data, seg = _cohort(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    save_config(config_from_dict({"data": {"path": str(data / "manifest.csv")}}), run / "config.yaml")
    (run / "split.json").write_text(json.dumps({"train": ["s1"], "validation": [], "holdout": ["s2"]}))
    result = evaluate(seg, run, tmp_path / "ev", qc=False)
    assert [r["subject"] for r in result.rows] == ["s2"]


def test_real_labels_and_qc_flair_beside(open_ms, tmp_path):
    truth = open_ms / "patient07" / "GOLD_STANDARD.nii.gz"
    result = evaluate(truth, truth, tmp_path / "ev")
    (row,) = result.rows
    assert row["subject"] == "patient07" and row["dice"] == 1.0 and row["truth_lesions"] == row["pred_lesions"]
    assert resolve_truth(truth)[0].flair.name == "FLAIR.nii.gz"
    assert (tmp_path / "ev" / "qc" / "patient07.png").is_file()


def test_evaluate_never_imports_tensorflow(tmp_path):
    data, seg = _cohort(tmp_path)
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from wmhkeras.cli.main import main\n"
        "from wmhkeras.cli.evaluate import evaluate_command\n"
        f"res = CliRunner().invoke(evaluate_command, ['--pred', {str(seg)!r}, '--truth', {str(data)!r}, "
        f"'--out', {str(tmp_path / 'ev')!r}])\n"
        "assert res.exit_code == 0, res.output\n"
        "loaded = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
