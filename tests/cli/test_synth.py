"""``wmhkeras synth``: a cohort that ``wmhkeras check`` accepts; bad options exit 2 and write nothing."""

from click.testing import CliRunner

from wmhkeras.cli.main import main
from wmhkeras.data.datasets import load_dataset


def test_synth_command_writes_a_cohort_that_passes_check(tmp_path):
    out = tmp_path / "cohort"
    result = CliRunner().invoke(main, ["synth", str(out), "--subjects", "2", "--sites", "2", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "sub-001" in result.output and "manifest.csv" in result.output
    subjects = load_dataset(out)
    assert [s.site for s in subjects] == ["site1", "site2"]
    checked = CliRunner().invoke(main, ["check", str(out), "--t1", "--labels"])
    assert checked.exit_code == 0 and "2 of 2 subjects ok" in checked.output
    bad = CliRunner().invoke(main, ["synth", str(tmp_path / "x"), "--lesion-fraction", "0.1", "0.2"])
    assert bad.exit_code == 2 and "lesion_fraction" in bad.output and not (tmp_path / "x").exists()
