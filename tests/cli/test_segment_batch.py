"""``wmhkeras segment`` in long batch runs, through the CLI: --skip-existing resumes (only missing subjects
are segmented again, summary.csv is the table one run writes), --shard i/n plus ``wmhkeras summarize``
give one run's table, bad values exit 2 before any work, --threads."""

import pytest

from tests.cli.helpers import run_cli, write_blob_scans
from tests.inference.helpers import read_rows

SUBJECTS = ["s1", "s2", "s3", "s4", "s5"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_blob_scans(tmp_path_factory.mktemp("cohort"), SUBJECTS)


def _mtimes(out):
    """Modification times of the subjects' output files."""
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.split("_")[0] in SUBJECTS}


def test_skip_existing_segments_only_the_subject_whose_outputs_are_gone(model, cohort, tmp_path):
    out = tmp_path / "out"
    first = run_cli("segment", model, cohort, "--out", out)
    assert first.exit_code == 0, first.output
    table = (out / "summary.csv").read_bytes()
    before = _mtimes(out)
    (out / "s3_wmh_mask.nii.gz").unlink()
    again = run_cli("segment", model, cohort, "--out", out, "--skip-existing")
    assert again.exit_code == 0, again.output
    assert again.output.count("(complete from an earlier run)") == 4 and "(4 kept from an earlier run)" in again.output
    after = _mtimes(out)
    assert after.keys() == before.keys()
    changed = sorted(name for name in after if after[name] != before[name])
    assert changed == ["s3_lesions.csv", "s3_wmh_mask.nii.gz", "s3_wmh_prob.nii.gz"]
    assert (out / "summary.csv").read_bytes() == table  # the table one run wrote, row for row


def test_an_interrupted_run_resumes_where_it_stopped(model, cohort, tmp_path):
    """A run stopped after two subjects (its folder holds their outputs, their rows and a stray temporary
    file) is finished by --skip-existing: the three others are segmented, the table is one run's."""
    out = tmp_path / "out"
    assert run_cli("segment", model, cohort / "s1.nii.gz", cohort / "s2.nii.gz", "--out", out).exit_code == 0
    (out / ".tmp-s3-x.nii.gz").write_bytes(b"partial")  # what a kill during a write leaves
    before = _mtimes(out)
    res = run_cli("segment", model, cohort, "--out", out, "--skip-existing")
    assert res.exit_code == 0, res.output
    after = _mtimes(out)
    assert all(after[name] == before[name] for name in before)  # s1 and s2 untouched
    assert {name.split("_")[0] for name in after if name not in before} == {"s3", "s4", "s5"}
    full = tmp_path / "full"
    assert run_cli("segment", model, cohort, "--out", full).exit_code == 0
    assert (out / "summary.csv").read_bytes() == (full / "summary.csv").read_bytes()
    assert [r["subject"] for r in read_rows(out / "summary.csv")] == SUBJECTS


def test_skip_existing_refuses_a_folder_made_with_other_settings(model, cohort, tmp_path):
    out = tmp_path / "out"
    assert run_cli("segment", model, cohort / "s1.nii.gz", "--out", out).exit_code == 0
    before = _mtimes(out)
    res = run_cli("segment", model, cohort, "--out", out, "--skip-existing", "--threshold", "0.3")
    assert res.exit_code == 2 and "threshold 0.5, now 0.3" in res.output
    assert _mtimes(out) == before


def test_two_shards_and_summarize_give_one_runs_table(model, cohort, tmp_path):
    full = tmp_path / "full"
    assert run_cli("segment", model, cohort, "--out", full).exit_code == 0
    for i in (1, 2):
        res = run_cli("segment", model, cohort, "--out", tmp_path / f"shard{i}", "--shard", f"{i}/2", "--qc")
        assert res.exit_code == 0, res.output
        assert f"in shard {i}/2" in res.output
    assert [r["subject"] for r in read_rows(tmp_path / "shard1" / "summary.csv")] == ["s1", "s3", "s5"]
    assert [r["subject"] for r in read_rows(tmp_path / "shard2" / "summary.csv")] == ["s2", "s4"]
    res = run_cli("summarize", tmp_path / "shard1", tmp_path / "shard2" / "summary.csv", "--out", tmp_path / "all.csv",
               "--qc-html", tmp_path / "qc.html")
    assert res.exit_code == 0, res.output
    assert "5 subjects from 2 summaries" in res.output
    assert (tmp_path / "all.csv").read_bytes() == (full / "summary.csv").read_bytes()
    page = (tmp_path / "qc.html").read_text()
    assert 'src="shard1/qc/s5.png"' in page and 'src="shard2/qc/s2.png"' in page


@pytest.mark.parametrize("shard", ["0/2", "3/2", "2", "x/y"])
def test_a_bad_shard_exits_2_before_any_work(model, cohort, tmp_path, shard):
    res = run_cli("segment", model, cohort, "--out", tmp_path / "out", "--shard", shard)
    assert res.exit_code == 2 and "--shard" in res.output and "1 <= i <= n" in res.output
    assert not (tmp_path / "out").exists()


def test_threads(model, cohort, tmp_path):
    res = run_cli("segment", model, cohort / "s1.nii.gz", "--out", tmp_path / "out", "--threads", "1")
    assert res.exit_code == 0, res.output
    res = run_cli("segment", model, cohort / "s1.nii.gz", "--out", tmp_path / "out2", "--threads", "0")
    assert res.exit_code == 2 and "--threads" in res.output and not (tmp_path / "out2").exists()


def test_an_empty_shard_writes_an_empty_table(model, cohort, tmp_path):
    res = run_cli("segment", model, cohort / "s1.nii.gz", cohort / "s2.nii.gz", "--out", tmp_path / "out", "--shard", "3/3")
    assert res.exit_code == 0, res.output
    assert "segmented 0 of 0 subjects in shard 3/3" in res.output
    assert read_rows(tmp_path / "out" / "summary.csv") == []
