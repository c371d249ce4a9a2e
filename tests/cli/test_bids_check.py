"""``wmhkeras check`` on a BIDS dataset: one line per FLAIR image keyed by its entities; a choice of pipeline."""

import shutil

import pytest
from click.testing import CliRunner

from tests.io.bids_tree import add_pipeline, make_bids_tree
from wmhkeras.cli.main import main


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_bids_tree(tmp_path_factory.mktemp("bids") / "ds")


def test_check_reads_a_bids_root(tree):
    result = CliRunner().invoke(main, ["check", str(tree), "--t1", "--labels"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[1] for line in lines[:3]] == ["sub-01_acq-3d", "sub-02_ses-01", "sub-02_ses-02"]
    assert "ok   sub-01_acq-3d (scannerA): 32x32x8," in lines[0] and "lesion voxels" in lines[0]
    assert lines[-1] == "3 of 3 subjects ok"


def test_check_asks_for_a_pipeline_when_there_are_several(tree, tmp_path):
    root = shutil.copytree(tree, tmp_path / "ds")
    add_pipeline(root, "auto")
    result = CliRunner().invoke(main, ["check", str(root), "--labels"])
    assert result.exit_code == 2
    assert "several derivative pipelines (auto, manual)" in result.output and "derivatives/auto" in result.output
    chosen = CliRunner().invoke(main, ["check", str(root / "derivatives" / "manual"), "--labels"])
    assert chosen.exit_code == 0 and chosen.output.splitlines()[-1] == "3 of 3 subjects ok"


def test_check_reports_an_image_without_its_mask(tree, tmp_path):
    root = shutil.copytree(tree, tmp_path / "ds")
    next((root / "derivatives" / "manual" / "sub-01").rglob("*_mask.nii.gz")).unlink()
    result = CliRunner().invoke(main, ["check", str(root), "--labels"])
    assert result.exit_code == 2
    assert "FAIL sub-01_acq-3d: subject sub-01_acq-3d: no label file" in result.output
    assert result.output.splitlines()[-1] == "2 of 3 subjects ok"
