"""``wmhkeras summarize``: shards' summaries combined into one table; overlaps and missing inputs exit 2."""

from click.testing import CliRunner

from tests.inference.helpers import read_rows
from wmhkeras.cli.main import main
from wmhkeras.inference.summary import write_summary


def _row(subject, volume):
    return {"subject": subject, "lesion_volume_ml": volume, "lesion_count": "1" if float(volume) else "0",
            "status": "ok", "error": "", "flair": f"/d/{subject}.nii.gz"}


def test_summarize_combines_shards_and_recomputes_the_cohort_flags(tmp_path):
    # Each shard alone is too small for a volume range (5 non-empty masks are needed); together they have one.
    write_summary(tmp_path / "a" / "summary.csv", [_row("s1", "1.0000"), _row("s3", "4.0000"), _row("s5", "16.0000")])
    write_summary(tmp_path / "b" / "summary.csv", [_row("s2", "2.0000"), _row("s4", "8.0000"), _row("s6", "1000.0000"),
                                                   _row("s7", "0.0000")])
    assert all(r["qc_flag"] == "" for r in read_rows(tmp_path / "b" / "summary.csv") if r["subject"] != "s7")
    res = CliRunner().invoke(main, ["summarize", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                                    str(tmp_path / "all.csv")])
    assert res.exit_code == 0, res.output
    assert "7 subjects from 2 summaries (0 failed, 2 flagged)" in res.output
    assert "s6: high_volume (1000.0000 mL)" in res.output and "s7: empty_mask" in res.output
    rows = read_rows(tmp_path / "all.csv")
    assert [r["subject"] for r in rows] == ["s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    assert [r["qc_flag"] for r in rows] == ["", "", "", "", "", "high_volume", "empty_mask"]


def test_overlapping_or_missing_summaries_exit_2(tmp_path):
    write_summary(tmp_path / "a" / "summary.csv", [_row("s1", "1.0000")])
    write_summary(tmp_path / "b" / "summary.csv", [_row("s1", "1.0000")])
    res = CliRunner().invoke(main, ["summarize", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "error: subject 's1' is in" in res.output
    res = CliRunner().invoke(main, ["summarize", str(tmp_path / "nope"), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "c").mkdir()
    res = CliRunner().invoke(main, ["summarize", str(tmp_path / "c"), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "no summary.csv found" in res.output
    assert not (tmp_path / "x.csv").exists()
