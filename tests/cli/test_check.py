"""``wmhkeras check``: one line per subject, exit code 2 on a bad subject or a missing dataset, nothing written."""

from click.testing import CliRunner

from tests.data.helpers import _img
from wmhkeras.cli.main import main


def test_check_command_reports_and_exits_2_on_a_bad_subject(tmp_path):
    _img(tmp_path / "good.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not nifti")
    (tmp_path / "manifest.csv").write_text("subject,site,flair,t1,label\ng,a,good.nii.gz,,\nb,a,bad.nii.gz,,\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["check", str(tmp_path)])
    assert result.exit_code == 2
    assert "ok   g (a)" in result.output and "FAIL b:" in result.output and "1 of 2 subjects ok" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    missing = CliRunner().invoke(main, ["check", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "dataset not found" in missing.output
