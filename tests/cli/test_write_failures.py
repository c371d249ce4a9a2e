"""Writes that fail (a full disk, no permission) through the CLI: one line naming the file and the system's
reason, exit 1, no traceback; nothing partial under a final name and no stray temporary file; the command
stops, and its resume (``segment --skip-existing``, ``train --resume``) finishes the work afterwards.

Each writer is made to fail as the system would: it puts part of its file on disk, then raises the
``OSError`` (or, for TensorFlow's SavedModel writer, the ``ResourceExhaustedError``) that a full disk or a
refused write raises.
"""

import errno
import json
import os
from pathlib import Path

import keras
import nibabel as nib
import pytest
import tensorflow as tf
import yaml

import wmhkeras.io.files as files
from tests.cli.helpers import run_cli, write_blob_scans
from tests.inference.helpers import read_rows
from wmhkeras.data.synth import SiteParams, make_cohort

SUBJECTS = ["s1", "s2", "s3"]
STOPPED = "; stopped (files written before are complete)"


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    return write_blob_scans(tmp_path_factory.mktemp("scans"), SUBJECTS)


def _one_error_line(result, expected: str) -> None:
    """Exit 1, and the only ``error:`` line is ``expected``; no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == [f"error: {expected}{STOPPED}"]
    assert "Traceback" not in result.output


def _stray(folder: Path) -> list[str]:
    """Temporary files and staged folders left anywhere under ``folder``."""
    return sorted(p.name for p in folder.rglob(".tmp-*")) + sorted(p.name for p in folder.rglob(".old-*"))


def _failing(stem: str, code: int, real, after: int = 0):
    """``real`` (a writer taking the path first), failing with ``code`` on its ``after``-th call (0-based)
    for a temporary file of ``stem`` (``.tmp-<stem>-...``) once part of the file is on disk."""
    calls = []

    def write(*args, **kwargs):
        path = Path(str(args[1] if not isinstance(args[0], (str, os.PathLike)) else args[0]))
        if path.name.startswith(f".tmp-{stem}-"):
            calls.append(path)
            if len(calls) == after + 1:
                path.write_bytes(b"\x1f\x8b half a file")
                raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return write


# === segment ===


@pytest.mark.parametrize(("name", "code"), [("s2_wmh_mask", errno.ENOSPC), ("s2_wmh_prob", errno.EACCES)])
def test_segment_stops_at_a_nifti_it_cannot_write_and_resumes(model, scans, tmp_path, monkeypatch, name, code):
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(nib, "save", _failing(name, code, nib.save))
        result = run_cli("segment", model, scans, "--out", out)
    _one_error_line(result, f"cannot write {out / name}.nii.gz: {os.strerror(code)}")
    # s1 is complete and listed; s2 (the one being written) has no files at all; s3 was never started
    assert sorted(p.name for p in out.iterdir()) == ["s1_lesions.csv", "s1_wmh_mask.nii.gz", "s1_wmh_prob.nii.gz",
                                                      "segment.json", "summary.csv"]
    assert [(r["subject"], r["status"]) for r in read_rows(out / "summary.csv")] == [("s1", "ok")]
    assert json.loads((out / "segment.json").read_text())["state"] == "running"
    resumed = run_cli("segment", model, scans, "--out", out, "--skip-existing")
    assert resumed.exit_code == 0, resumed.output
    assert [(r["subject"], r["status"]) for r in read_rows(out / "summary.csv")] == [(s, "ok") for s in SUBJECTS]
    assert _stray(out) == []


def test_segment_stops_when_the_summary_cannot_be_written(model, scans, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_open = open

    def opener(file, mode="r", *args, **kwargs):  # atomic_write_csv's open, rewritten after each subject
        return real_open(file, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(files, "open", _failing("summary", errno.ENOSPC, opener, after=1), raising=False)
        result = run_cli("segment", model, scans, "--out", out)
    _one_error_line(result, f"cannot write {out / 'summary.csv'}: No space left on device")
    # the table written after s1 stays whole; s2's files are complete but unlisted, so a resume redoes s2
    assert [(r["subject"], r["status"]) for r in read_rows(out / "summary.csv")] == [("s1", "ok")]
    assert _stray(out) == []
    resumed = run_cli("segment", model, scans, "--out", out, "--skip-existing")
    assert resumed.exit_code == 0 and "s1: " in resumed.output and "complete from an earlier run" in resumed.output
    assert [r["subject"] for r in read_rows(out / "summary.csv")] == SUBJECTS


# === export ===


def test_export_that_cannot_write_its_saved_model_leaves_no_folder(model, tmp_path, monkeypatch):
    def full_disk(archive, path, **kwargs):  # what TensorFlow raises on a full disk (seen on a small tmpfs)
        Path(path, "variables").mkdir(parents=True)
        raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2}} "
                                               f"{path}/variables/part-0.tempstate1; No space left on device [Op:SaveV2]")

    # keras.export.ExportArchive() makes an instance of the backend's class
    monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", full_disk)
    out = tmp_path / "exports" / "tiny"
    result = run_cli("export", model, "--out", out, "--tflite", "none")
    _one_error_line(result, f"cannot write {out / 'saved_model'}: No space left on device")
    assert list(tmp_path.iterdir()) == []  # neither the export folder, nor the staged one, nor exports/


# === train ===


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    site = SiteParams("s", (2.0, 2.0, 4.0), (40, 44, 8))
    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=4, sites=1, seed=0, site_params=[site]).manifest


def _config(tmp_path, epochs):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"split": [0.5, 0.25, 0.25]}, "loss": {"name": "dice"},
        "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
        "train": {"epochs": epochs, "steps_per_epoch": 2, "batch_size": 4, "image_summary_every": 0}}))
    return config


@pytest.mark.slow
def test_train_stops_at_a_checkpoint_it_cannot_write_and_resumes(cohort, tmp_path, monkeypatch):
    config = _config(tmp_path, epochs=2)
    run = (tmp_path / "run").resolve()
    with monkeypatch.context() as m:  # epoch 1 saves last.keras and best.keras; epoch 2's last.keras fails
        m.setattr(keras.Model, "save", _failing("last", errno.ENOSPC, keras.Model.save, after=1))
        result = run_cli("train", config, "--data", cohort, "--out", run)
    _one_error_line(result, f"cannot write {run / 'checkpoints' / 'last.keras'}: No space left on device")
    assert _stray(tmp_path) == []
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (state["epochs"], state["running_epoch"]) == (1, 2)  # epoch 1 is saved, epoch 2 was under way
    resumed = run_cli("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    assert _stray(tmp_path) == []


@pytest.mark.slow
def test_train_stops_when_tensorboard_cannot_write(cohort, tmp_path, monkeypatch):
    run = (tmp_path / "run").resolve()
    events = run / "tensorboard" / "validation" / "events.out.tfevents.1.vm.1.1.v2"

    def full_disk(self, epoch, logs=None):  # TensorFlow's summary writer on a full disk (seen on a small tmpfs)
        raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__WriteSummary_device_/job:"
                                               f"localhost/replica:0/task:0/device:CPU:0}}}} {events}; No space left on device")

    monkeypatch.setattr(keras.callbacks.TensorBoard, "on_epoch_end", full_disk)
    result = run_cli("train", _config(tmp_path, epochs=1), "--data", cohort, "--out", run)
    _one_error_line(result, f"cannot write {events}: No space left on device")
