"""scripts/thick_slices.py: thin slices averaged into thick ones, each placed at the centre of its thin slices."""

import csv

import nibabel as nib
import numpy as np
import pytest

from tests.scripts.helpers import load_script


@pytest.fixture(scope="module")
def thick():
    return load_script("thick_slices")


# LAS, 1 x 1 x 1 mm, origin off zero (open_ms_data's kind of grid)
LAS = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])


def test_slices_are_averaged_and_the_remainder_dropped(thick):
    data = np.zeros((2, 2, 7), np.float32)
    data[..., :] = np.arange(7, dtype=np.float32)          # slice z holds the value z
    out, affine = thick.thicken(data, LAS, 3, 2)
    assert out.shape == (2, 2, 2)                          # 7 // 3 = 2 thick slices; slice 6 dropped
    np.testing.assert_allclose(out[0, 0], [1.0, 4.0])     # mean of 0,1,2 and of 3,4,5


def test_each_thick_slice_sits_at_the_centre_of_its_thin_slices(thick):
    _, affine = thick.thicken(np.zeros((4, 4, 9)), LAS, 3, 2)
    np.testing.assert_allclose(affine[:3, 2], [0, 0, 3.0])
    for k in range(3):
        centre = np.mean([LAS @ [1, 2, 3 * k + j, 1] for j in range(3)], axis=0)
        np.testing.assert_allclose(affine @ [1, 2, k, 1], centre)
    np.testing.assert_allclose(affine[:3, :2], LAS[:3, :2])


def test_a_label_is_lesion_where_at_least_half_was(thick):
    label = np.zeros((1, 3, 3), np.uint8)
    label[0, 0, :2] = 1          # 2 of 3 -> lesion
    label[0, 1, :1] = 1          # 1 of 3 -> not
    out, _ = thick.thicken(label, LAS, 3, 2, label=True)
    assert out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [1, 0, 0]
    two, _ = thick.thicken(np.array([[[1, 0]]]), LAS, 2, 2, label=True)
    assert two.ravel().tolist() == [1]                     # exactly half counts


def test_the_axial_axis_is_found_and_oblique_grids_refused(thick):
    assert thick.axial_axis(LAS) == 2
    coronal = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])   # axis 1 is S
    assert thick.axial_axis(coronal) == 1
    angle = np.deg2rad(20)
    tilted = np.eye(4)
    tilted[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    with pytest.raises(SystemExit, match="no axial voxel axis"):
        thick.axial_axis(tilted)


def test_main_writes_copies_and_a_manifest(thick, tmp_path):
    rng = np.random.default_rng(0)
    flair = rng.uniform(0, 1, (6, 5, 9)).astype(np.float32)
    label = (flair > 0.7).astype(np.uint8)
    nib.save(nib.Nifti1Image(flair, LAS), str(tmp_path / "f.nii.gz"))
    nib.save(nib.Nifti1Image(label, LAS), str(tmp_path / "l.nii.gz"))
    (tmp_path / "m.csv").write_text("subject,site,flair,t1,label\ns1,a,f.nii.gz,,l.nii.gz\n")
    assert thick.main([str(tmp_path / "m.csv"), "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "manifest.csv")))
    assert [(r["subject"], r["flair"], r["t1"], r["label"]) for r in rows] == [
        ("s1", "s1/flair.nii.gz", "", "s1/label.nii.gz")]
    image = nib.load(str(tmp_path / "out" / "s1" / "flair.nii.gz"))
    assert image.shape == (6, 5, 3)
    np.testing.assert_allclose(image.get_fdata(), flair.reshape(6, 5, 3, 3).mean(-1), atol=1e-6)
    assert image.header.get_zooms()[:3] == pytest.approx((1.0, 1.0, 3.0))
