"""scripts/real_data_protocol.py: the driver of one arm (``train_and_score``: its ``--set`` splitting, and a
finished training reused only while the arm's config is unchanged), and ``--split hemispheres``, each
patient cut at its brain's midline into halves."""

import csv
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from tests.scripts.helpers import load_script
from wmhkeras.data.datasets import read_manifest, write_manifest


@pytest.fixture(scope="module")
def protocol():
    return load_script("real_data_protocol")


def test_midline_is_the_brain_centre_of_mass(protocol):
    volume = np.zeros((10, 3, 2), np.float32)
    volume[2:6] = 1.0                       # brain over x = 2..5: centre 3.5, rounds to 4
    volume[9] = 0.05                        # below a tenth of the maximum: not brain
    assert protocol.midline(volume, 0) == 4
    assert protocol.midline(volume.transpose(1, 0, 2), 1) == 4


@pytest.mark.parametrize("first_axis, kept_by_left", [(-1.0, "high"), (1.0, "low")])
def test_halves_split_each_image_at_the_midline(protocol, tmp_path, monkeypatch, first_axis, kept_by_left):
    # first_axis -1: LAS (index grows to the left); +1: RAS (index grows to the right)
    affine = np.diag([first_axis, 1.0, 1.0, 1.0])
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    originals = {}
    for patient in protocol.PATIENTS:
        (data / patient).mkdir(parents=True)
        flair = np.zeros((8, 4, 3), np.float32)
        flair[1:7] = rng.uniform(1, 2, (6, 4, 3))           # brain 1..6: midline 3.5 -> 4
        label = (flair > 1.8).astype(np.uint8)
        for name, array in (("FLAIR", flair), ("T1", flair * 2), ("GOLD_STANDARD", label)):
            nib.save(nib.Nifti1Image(array, affine), str(data / patient / f"{name}.nii.gz"))
            originals[patient, name] = array
    monkeypatch.chdir(tmp_path)
    manifests = protocol.half_copies(Path("data"), Path("halves"))      # relative folders, as on a command line
    for side in ("left", "right"):
        rows = list(csv.DictReader(open(manifests[side])))
        assert [r["subject"] for r in rows] == [f"{p}_{side}" for p in protocol.PATIENTS]
        subjects = read_manifest(manifests[side])                       # as `wmhkeras train` reads it
        assert all(Path(s.flair).is_file() and Path(s.label).is_file() for s in subjects)
    for patient in protocol.PATIENTS:
        for name in ("FLAIR", "T1", "GOLD_STANDARD"):
            left = nib.load(str(tmp_path / "halves" / f"{patient}_left" / f"{name}.nii.gz")).get_fdata()
            right = nib.load(str(tmp_path / "halves" / f"{patient}_right" / f"{name}.nii.gz")).get_fdata()
            np.testing.assert_allclose(left + right, originals[patient, name], rtol=1e-6)   # a partition
            high, low = (left, right) if kept_by_left == "high" else (right, left)
            assert not high[:4].any() and not low[4:].any()


def test_halves_refuse_images_on_another_grid(protocol, tmp_path):
    data = tmp_path / "data"
    for patient in protocol.PATIENTS:
        (data / patient).mkdir(parents=True)
        for name, shape in (("FLAIR", (8, 4, 3)), ("T1", (8, 4, 4)), ("GOLD_STANDARD", (8, 4, 3))):
            nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(data / patient / f"{name}.nii.gz"))
    with pytest.raises(SystemExit, match="not on the FLAIR's grid"):
        protocol.half_copies(data, tmp_path / "halves")


# === The driver of one arm ===


def test_an_arm_is_split_into_its_config_and_overrides(protocol):
    config, overrides = protocol.split_spec("configs/real_flair.yaml,data.patch_size=[96, 96], train.epochs=36,"
                                            "loss.layers=[block1_pool, block2_pool],model.base_filters=16")
    assert config == "configs/real_flair.yaml"
    assert overrides == ["data.split=[1.0, 0.0, 0.0]", "data.patch_size=[96, 96]", "train.epochs=36",
                         "loss.layers=[block1_pool, block2_pool]", "model.base_filters=16"]
    assert protocol.split_spec("configs/demo.yaml") == ("configs/demo.yaml", ["data.split=[1.0, 0.0, 0.0]"])


@pytest.fixture
def in_process(protocol, monkeypatch):
    """The driver's commands run by the real CLI in this process (no TensorFlow start per command); the
    list of the commands it ran (``train``, ``segment``, ``evaluate``)."""
    from click.testing import CliRunner

    from wmhkeras.cli.main import main

    ran = []

    def run(cmd, log):
        i = next(i for i, a in enumerate(cmd) if a in ("train", "segment", "evaluate"))
        ran.append(cmd[i])
        start = time.monotonic()
        result = CliRunner().invoke(main, cmd[i:])
        log.write_text(result.output)
        if result.exit_code != 0:
            raise RuntimeError(f"{cmd[i:]} exited {result.exit_code}: {result.output}")
        return time.monotonic() - start

    monkeypatch.setattr(protocol, "run", run)
    return ran


@pytest.fixture(scope="module")
def two_subjects(tmp_path_factory):
    """Manifests of two synthetic subjects (train on one, score the other) and a tiny config file."""
    from tests.training.helpers import TINY
    from wmhkeras.data.synth import make_cohort

    root = tmp_path_factory.mktemp("protocol")
    subjects = read_manifest(make_cohort(root / "cohort", subjects=2, sites=1, seed=0).manifest)
    train, test = (write_manifest([s], root / f"{s.subject}.csv") for s in subjects)
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "arch": "unet"},
                                      "train": {**TINY["train"], "epochs": 1, "image_summary_every": 0}}))
    return train, test, config


@pytest.mark.slow
def test_a_finished_training_is_reused_only_while_the_arm_is_unchanged(protocol, in_process, two_subjects, tmp_path):
    train, test, tiny = two_subjects
    config = tmp_path / "tiny.yaml"  # edited below
    config.write_text(tiny.read_text())
    folder = tmp_path / "arm" / "train-a"

    def score(spec):
        return protocol.train_and_score("tiny", spec, "a", train, test, folder)

    spec = f"{config},train.steps_per_epoch=2, data.patch_size=[32, 32]"
    rows = score(spec)
    assert in_process == ["train", "segment", "evaluate"]
    saved = yaml.safe_load((folder / "run" / "config.yaml").read_text())
    assert saved["data"]["split"] == [1.0, 0.0, 0.0] and saved["train"]["steps_per_epoch"] == 2  # every --set
    assert saved["data"]["patch_size"] == [32, 32]
    (row,) = rows
    assert (row["arm"], row["config"], row["train_on"], row["epochs"]) == ("tiny", spec, "a", 1)
    assert row["test_on"] == read_manifest(test)[0].subject and 0.0 <= row["dice"] <= 1.0
    assert row["train_s"] == round(float((folder / "train_seconds.txt").read_text()), 1)

    # the same arm again (an interrupted protocol run once more): the training is reused
    in_process.clear()
    again = score(spec)
    assert in_process == ["segment", "evaluate"]
    assert [{**r, "segment_s": None} for r in again] == [{**row, "segment_s": None}]

    # a changed override, then a changed config file: refused, with the keys, before any command
    state = (folder / "run" / "checkpoints" / "state.json").read_text()
    in_process.clear()
    with pytest.raises(SystemExit, match=r"train\.steps_per_epoch: 2 -> 3\. Remove"):
        score(f"{config},train.steps_per_epoch=3, data.patch_size=[32, 32]")
    config.write_text(config.read_text().replace("learning_rate: 0.01", "learning_rate: 0.02"))
    with pytest.raises(SystemExit, match=r"train\.learning_rate: 0\.01 -> 0\.02\. Remove"):
        score(spec)
    assert in_process == [] and (folder / "run" / "checkpoints" / "state.json").read_text() == state
