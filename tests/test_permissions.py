"""Every output of train, export, segment (flat and BIDS, with QC) and evaluate gets the permissions a plain
open / mkdir gives under the process umask: folders 0o777 & ~umask, files 0o666 & ~umask (not the 0o700 /
0o600 of tempfile's staging). Run through the CLI, in this process, under two umasks."""

import os
import stat

import pytest
import yaml

from tests.cli.helpers import run_cli
from tests.io.bids_tree import make_bids_tree
from wmhkeras.data.synth import SiteParams, make_cohort

TINY = {"data": {"split": [0.5, 0.25, 0.25]},
        "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
        "loss": {"name": "dice"},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "image_summary_every": 1}}


def _run(*args):
    result = run_cli(*args)
    assert result.exit_code == 0, result.output
    return result


def _wrong_modes(root, umask):
    """``(mode, path)`` of every file and folder under ``root`` whose mode is not the umask's."""
    wrong = []
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            want = (0o777 if name in dirs else 0o666) & ~umask
            if stat.S_IMODE(os.lstat(path).st_mode) != want:
                wrong.append((oct(stat.S_IMODE(os.lstat(path).st_mode)), os.path.relpath(path, root)))
    return wrong


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_output_gets_the_umask_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        cohort = make_cohort(out / "cohort", subjects=4, sites=1, seed=0,
                             site_params=[SiteParams("s", (2.0, 2.0, 4.0), (40, 44, 8))]).manifest
        bids = make_bids_tree(tmp_path / "bids")  # input only: written by the test's own helpers
        config = tmp_path / "tiny.yaml"
        config.write_text(yaml.safe_dump(TINY))
        _run("train", config, "--data", cohort, "--out", out / "run")
        _run("export", out / "run", "--out", out / "export", "--tflite", "fp32")
        _run("segment", out / "run", cohort, "--out", out / "seg", "--qc", "--uncertainty")
        _run("segment", out / "export", bids, "--out", out / "bids_seg")
        _run("evaluate", "--pred", out / "seg", "--truth", out / "run", "--out", out / "eval")
    finally:
        os.umask(old)
    made = {p.relative_to(out).as_posix() for p in out.rglob("*")}
    assert {"run/checkpoints/last.keras", "run/tensorboard/train", "export/saved_model/saved_model.pb",
            "export/tflite/model_fp32.tflite", "seg/qc.html", "seg/summary.csv", "eval/metrics.csv",
            "bids_seg/dataset_description.json"} <= made
    assert any(name.endswith("_probseg.json") for name in made)  # BIDS sidecars
    assert _wrong_modes(out, umask) == []
