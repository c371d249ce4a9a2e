"""``wmhkeras train`` on a BIDS dataset, and the day after: segment the root with the run, evaluate its hold-out."""

import csv
import json
import shutil

import pytest
import yaml
from click.testing import CliRunner

from tests.io.bids_tree import add_pipeline, make_bids_tree
from tests.training.helpers import TINY
from wmhkeras.cli.main import main


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_bids_tree(tmp_path_factory.mktemp("bids") / "ds")


@pytest.fixture
def config(tmp_path):
    """The trainer tests' tiny setup for one short epoch; 2 participants (3 images) split 1 / 0 / 1."""
    data = {**TINY, "data": {**TINY["data"], "split": [0.5, 0.0, 0.5]},
            "train": {**TINY["train"], "epochs": 1, "steps_per_epoch": 2, "image_summary_every": 0}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_refuses_an_unchosen_pipeline_before_any_work(tree, config, tmp_path):
    root = shutil.copytree(tree, tmp_path / "ds")
    add_pipeline(root, "auto")
    result = CliRunner().invoke(main, ["train", str(config), "--data", str(root), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "several derivative pipelines (auto, manual)" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_train_segment_evaluate_on_a_bids_root(tree, config, tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(config), "--data", str(tree / "derivatives" / "manual"),
                                       "--out", str(run)])
    assert result.exit_code == 0, result.output
    split = json.loads((run / "split.json").read_text())
    assert sorted(sum(split.values(), [])) == ["sub-01_acq-3d", "sub-02_ses-01", "sub-02_ses-02"]
    # one participant trains, the other is held out; sub-02's two sessions stay together
    assert sorted([split["train"], split["holdout"]]) == [["sub-01_acq-3d"], ["sub-02_ses-01", "sub-02_ses-02"]]
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"].endswith("derivatives/manual")

    out = tmp_path / "derivative"
    seg = CliRunner().invoke(main, ["segment", str(run), str(tree), "--out", str(out)])
    assert seg.exit_code == 0, seg.output
    assert len(list(out.glob("sub-*/**/*_space-orig_label-WMH_mask.nii.gz"))) == 3

    ev = CliRunner().invoke(main, ["evaluate", "--pred", str(out), "--truth", str(run), "--out", str(tmp_path / "ev"),
                                   "--no-qc"])
    assert ev.exit_code == 0, ev.output
    with open(tmp_path / "ev" / "metrics.csv", newline="") as f:
        assert [r["subject"] for r in csv.DictReader(f)] == split["holdout"]
