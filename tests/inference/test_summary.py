"""summary.csv as a table of rows: merging (new rows win, sorted by subject), columns, reading back, and
combining shards (:func:`wmhkeras.inference.summary.summarize`)."""

import pytest

from tests.inference.helpers import read_rows
from wmhkeras.errors import InputError
from wmhkeras.inference import summary


def _row(subject, volume="1.0000", status="ok", **extra):
    return {"subject": subject, "lesion_volume_ml": volume, "lesion_count": "1", "status": status, "error": "",
            "flair": f"/d/{subject}.nii.gz", **extra}


def test_merge_keeps_one_row_per_subject_the_new_one_winning_sorted():
    old = [_row("s2", "2.0000"), _row("s1", status="failed")]
    new = [_row("s3"), _row("s1", "5.0000")]
    merged = summary.merge_rows(old, new)
    assert [(r["subject"], r["lesion_volume_ml"], r["status"]) for r in merged] == [
        ("s1", "5.0000", "ok"), ("s2", "2.0000", "ok"), ("s3", "1.0000", "ok")]


def test_write_and_read_back(tmp_path):
    path = summary.write_summary(tmp_path / "summary.csv", [_row("b", "0.0000"), _row("a")])
    assert path.read_text().splitlines()[0] == "subject,lesion_volume_ml,lesion_count,qc_flag,volume_z,status,error,flair"
    rows = summary.read_summary(path)
    assert [r["subject"] for r in rows] == ["a", "b"] and rows[1]["qc_flag"] == "empty_mask"
    with_brain = summary.write_summary(tmp_path / "brain.csv", [_row("a", brain_volume_ml="1200.0000"), _row("b")])
    assert read_rows(with_brain)[0].keys() >= {"brain_volume_ml"}
    assert [r["brain_volume_ml"] for r in read_rows(with_brain)] == ["1200.0000", ""]


def test_read_refuses_what_is_not_a_summary(tmp_path):
    (tmp_path / "x.csv").write_text("subject,dice\na,0.5\n")
    with pytest.raises(InputError, match="no column lesion_volume_ml"):
        summary.read_summary(tmp_path / "x.csv")
    summary.write_summary(tmp_path / "twice.csv", [_row("a")])
    text = (tmp_path / "twice.csv").read_text()
    (tmp_path / "twice.csv").write_text(text + text.splitlines()[1] + "\n")
    with pytest.raises(InputError, match="'a' has two rows"):
        summary.read_summary(tmp_path / "twice.csv")
    with pytest.raises(InputError, match="cannot read"):
        summary.read_summary(tmp_path / "missing.csv")


def test_summarize_combines_folders_and_files_and_refuses_overlaps(tmp_path):
    summary.write_summary((tmp_path / "s1").joinpath("summary.csv"), [_row("c"), _row("a")])
    summary.write_summary(tmp_path / "s2.csv", [_row("b", status="failed", volume="")])
    result = summary.summarize([tmp_path / "s1", tmp_path / "s2.csv"], tmp_path / "all.csv")
    assert [r["subject"] for r in read_rows(result.summary_csv)] == ["a", "b", "c"]
    assert result.qc_html is None
    summary.write_summary(tmp_path / "s3.csv", [_row("a")])
    with pytest.raises(InputError, match="'a' is in .* and .*s3.csv"):
        summary.summarize([tmp_path / "s1", tmp_path / "s3.csv"], tmp_path / "again.csv")
    with pytest.raises(InputError, match="no summary.csv found"):
        summary.summarize([tmp_path / "empty"], tmp_path / "again.csv")
    with pytest.raises(InputError, match="is one of the summaries"):
        summary.summarize([tmp_path / "s1", tmp_path / "s2.csv"], tmp_path / "s2.csv")
    assert not (tmp_path / "again.csv").exists()
