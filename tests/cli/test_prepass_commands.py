"""The header pre-pass in every command that reads scans: ``check``, ``train``, ``experiment``, ``evaluate`` refuse
a broken file before any work (exit 2, one ``error:`` line naming it, nothing written); ``check`` lists it."""

import dataclasses
import gzip
import shutil

import pytest
import yaml

from tests.cli.helpers import run_cli
from tests.experiment.helpers import TINY as TINY_EXPERIMENT
from tests.training.helpers import TINY
from wmhkeras.data.datasets import load_dataset
from wmhkeras.data.synth import SITE_PRESETS, make_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six small synthetic subjects on two sites."""
    root = tmp_path_factory.mktemp("cohort") / "cohort"
    sites = [dataclasses.replace(s, voxel_size=(1.8, 1.8, 5.0), shape=(48, 48, 12)) for s in SITE_PRESETS[:2]]
    make_cohort(root, subjects=6, sites=2, seed=0, site_params=sites)
    return root


def _broken(cohort, tmp_path, which="flair", subject=5):
    """A copy of the cohort whose subject ``subject`` has its ``which`` file cut to a third (the header intact)."""
    root = shutil.copytree(cohort, tmp_path / "data")
    path = getattr(load_dataset(root)[subject], which)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[: len(raw) // 3]))
    return root, path


def _one_error_line(res, path):
    assert res.exit_code == 2, res.output
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: the header claims"), res.stderr
    assert "it is truncated or its header is wrong" in lines[0]


def test_check_lists_the_broken_file_on_stderr(cohort, tmp_path):
    root, path = _broken(cohort, tmp_path, "label")
    res = run_cli("check", root, "--labels")
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [line for line in res.stderr.splitlines() if line.startswith("FAIL sub-006: ")]
    assert len(res.stderr.splitlines()) == 1 and str(path) in res.stderr
    assert res.stdout.count("ok   sub-") == 5 and "5 of 6 subjects ok" in res.stdout


def test_train_refuses_a_broken_file_of_any_subject_before_training(cohort, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "epochs": 1}}))
    for subject in range(6):  # the hold-out subject among them: its files were only looked for before
        root, path = _broken(cohort, tmp_path / f"s{subject}", "flair" if subject % 2 else "label", subject)
        res = run_cli("train", config, "--data", root, "--out", tmp_path / "run")
        _one_error_line(res, path)
        assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-run*"))


def test_experiment_refuses_a_broken_file_before_writing(cohort, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(TINY_EXPERIMENT))  # site2 external
    for subject in (0, 1, 2, 4):  # a training subject among them: before, only the arm's training found it
        root, path = _broken(cohort, tmp_path / f"s{subject}", "flair", subject)
        res = run_cli("experiment", config, "--data", root, "--out", tmp_path / "exp")
        _one_error_line(res, path)
        assert not (tmp_path / "exp").exists()


def test_evaluate_refuses_a_broken_truth_or_prediction_before_scoring(cohort, tmp_path):
    root, label = _broken(cohort, tmp_path, "label", 2)
    pred = tmp_path / "pred"
    pred.mkdir()
    for s in load_dataset(root):
        if s.subject != "sub-003":
            shutil.copy(s.label, pred / f"{s.subject}_wmh_mask.nii.gz")
    shutil.copy(load_dataset(cohort)[2].label, pred / "sub-003_wmh_mask.nii.gz")
    res = run_cli("evaluate", "--pred", pred, "--truth", root, "--out", tmp_path / "ev", "--no-qc")
    _one_error_line(res, label)
    assert not (tmp_path / "ev").exists()
    shutil.copy(load_dataset(cohort)[2].label, label)  # the truth repaired, a prediction broken
    broken_pred = pred / "sub-004_wmh_mask.nii.gz"
    broken_pred.write_bytes(b"")
    res = run_cli("evaluate", "--pred", pred, "--truth", root, "--out", tmp_path / "ev", "--no-qc")
    assert res.exit_code == 2 and res.stderr == f"error: {broken_pred}: the file is empty (0 bytes)\n"
    assert not (tmp_path / "ev").exists()
