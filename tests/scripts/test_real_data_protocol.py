"""scripts/real_data_protocol.py --split hemispheres: each patient cut at its brain's midline into halves."""

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.scripts.helpers import load_script
from wmhkeras.data.datasets import read_manifest


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
