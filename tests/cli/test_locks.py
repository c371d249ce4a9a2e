"""Two processes, one folder, through the CLI: a second ``segment`` into an ``--out`` another process holds, or a
second ``train`` (new or ``--resume``) into a run folder being trained, exits 2 with one line naming the
holder's pid and changes nothing; once the holder is killed (SIGKILL) the folder is free again."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from tests.cli.helpers import run_cli as run
from tests.inference.helpers import blob_volume, tiny_model_file, write_nifti
from tests.training.helpers import tiny_config
from wmhkeras.config import save_config
from wmhkeras.data.datasets import read_manifest
from wmhkeras.data.splits import make_split
from wmhkeras.data.synth import make_cohort
from wmhkeras.io.lock import LOCK_NAME
from wmhkeras.io.run_folder import RunFolder


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def refusal(result, pid: int) -> str:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"pid {pid}" in errors[0] and "in use by wmhkeras" in errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("in")
    model = tiny_model_file(folder / "tiny.keras")
    for i in range(2):
        write_nifti(folder / f"s{i}.nii.gz", blob_volume(i), np.eye(4))
    return model, [folder / "s0.nii.gz", folder / "s1.nii.gz"]


def test_a_second_segment_into_a_held_out_is_refused_and_summary_csv_unchanged(inputs, tmp_path, other_process):
    model, flairs = inputs
    out = tmp_path / "out"
    assert run("segment", model, flairs[0], "--out", out).exit_code == 0
    assert not (out / LOCK_NAME).exists()  # removed at the end: never mistaken for an output
    holder = other_process(out, "segment")
    before = snapshot(out)
    result = run("segment", model, *flairs, "--out", out, "--skip-existing")
    assert "wmhkeras segment" in refusal(result, holder.pid)
    assert snapshot(out) == before  # summary.csv and segment.json untouched, no subject written

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / LOCK_NAME).is_file()  # what the kill left ...
    again = run("segment", model, *flairs, "--out", out, "--skip-existing")
    assert again.exit_code == 0, again.output  # ... does not hold the folder
    assert "(1 kept from an earlier run)" in again.output and not (out / LOCK_NAME).exists()


def test_a_refused_segment_into_a_new_folder_leaves_no_folder(inputs, tmp_path, other_process):
    model, flairs = inputs
    holder = other_process(tmp_path / "out", "segment")
    refusal(run("segment", model, flairs[0], "--out", tmp_path / "out"), holder.pid)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [LOCK_NAME]  # only the holder's lock


@pytest.fixture
def run_folder(tmp_path) -> RunFolder:
    """A run folder as a training writes it first (config, split), for a second process to run into."""
    manifest = make_cohort(tmp_path / "cohort", subjects=3, sites=1, seed=0).manifest
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    cfg = tiny_config(manifest)
    save_config(cfg, folder.config)
    folder.write_split(make_split(read_manifest(manifest), cfg.data.split, cfg.train.seed))
    return folder


def test_train_into_a_run_folder_being_trained_is_refused(run_folder, tmp_path, other_process):
    holder = other_process(run_folder.path, "train")
    before = snapshot(run_folder.path)
    resumed = run("train", "--resume", run_folder.path)
    assert "wmhkeras train" in refusal(resumed, holder.pid) and "before resuming" in resumed.output
    config = tmp_path / "cfg.yaml"
    config.write_bytes(run_folder.config.read_bytes())
    new = run("train", config, "--out", run_folder.path)
    assert "choose another --out" in refusal(new, holder.pid)
    assert snapshot(run_folder.path) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []
