import gzip

import nibabel as nib
import numpy as np
import pytest

from wmhkeras.errors import InputError
from wmhkeras.io import check_same_grid, load_volume, save_like


def _write(path, data, affine, qcode=1, scode=1, dtype=np.float32):
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine if scode else np.eye(4), code=scode)
    nib.save(img, str(path))
    return path


def _oblique_affine():
    theta = np.deg2rad(12.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.9, 1.1, 3.0])
    aff[:3, 3] = [-40, 30, -20]
    return aff


AFFINES = {
    "ras": np.diag([1.0, 1.0, 3.0, 1.0]),
    "lps": np.array([[-1.0, 0, 0, 50], [0, -1.0, 0, 60], [0, 0, 3.0, -10], [0, 0, 0, 1]]),
    "oblique": _oblique_affine(),
    "permuted": np.array([[0, 0, 2.0, -5], [-1.0, 0, 0, 20], [0, 1.0, 0, 3], [0, 0, 0, 1]]),
}


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_round_trip_keeps_the_input_grid(tmp_path, name):
    rng = np.random.default_rng(0)
    data = rng.random((7, 6, 5)).astype(np.float32)
    src = _write(tmp_path / "in.nii.gz", data, AFFINES[name])
    vol = load_volume(src)
    # canonical: the voxel axes point R, A, S
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    # the same world point holds the same value in both spaces
    ijk = np.array([1, 2, 3])
    world = AFFINES[name] @ np.r_[ijk, 1]
    cijk = np.rint(np.linalg.solve(vol.affine, world)[:3]).astype(int)
    assert vol.data[tuple(cijk)] == data[tuple(ijk)]
    out = save_like(vol.data, vol, tmp_path / "out.nii.gz")
    back = nib.load(str(out))
    assert back.shape == data.shape
    np.testing.assert_array_equal(back.get_fdata(dtype=np.float32), data)
    np.testing.assert_allclose(back.affine, AFFINES[name], atol=1e-5)
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 1


def test_qform_only_file_is_honoured(tmp_path):
    aff = AFFINES["lps"]
    src = _write(tmp_path / "q.nii.gz", np.ones((4, 4, 4)), aff, qcode=1, scode=0)
    vol = load_volume(src)
    np.testing.assert_allclose(vol.native_affine, aff, atol=1e-5)
    out = nib.load(str(save_like(vol.data, vol, tmp_path / "o.nii.gz", dtype=np.uint8)))
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 0)
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, aff, atol=1e-5)


def test_real_qform_only_volume_round_trips(open_ms, tmp_path):
    src = open_ms / "patient07" / "FLAIR.nii.gz"
    ref = nib.load(str(src))
    assert (int(ref.header["qform_code"]), int(ref.header["sform_code"])) == (1, 0)
    vol = load_volume(src)
    assert vol.data.shape == (182, 218, 182) and vol.spacing == (1.0, 1.0, 1.0)
    out = nib.load(str(save_like(vol.data, vol, tmp_path / "p07.nii.gz")))
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_array_equal(out.header.get_qform(), ref.header.get_qform())
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 0)
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), np.asanyarray(ref.dataobj))
    label = load_volume(open_ms / "patient07" / "GOLD_STANDARD.nii.gz", kind="label")
    check_same_grid(vol, label)
    assert int(label.data.sum()) == 1300


def test_4d_single_volume_is_accepted(tmp_path):
    vol = load_volume(_write(tmp_path / "f.nii", np.ones((3, 3, 3, 1)), np.eye(4)))
    assert vol.data.shape == (3, 3, 3)
    out = nib.load(str(save_like(vol.data, vol, tmp_path / "o.nii.gz")))
    assert out.shape == (3, 3, 3)


def _truncated(tmp_path):
    good = _write(tmp_path / "good.nii.gz", np.random.default_rng(1).random((20, 20, 20)), np.eye(4))
    raw = good.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    return bad


BAD_INPUTS = {
    "missing": (lambda p: p / "nope.nii.gz", "file not found"),
    "not nifti": (lambda p: (p / "x.nii.gz").write_bytes(gzip.compress(b"hello" * 100)) and p / "x.nii.gz", "not a readable NIfTI"),
    "truncated": (_truncated, "truncated"),
    "4d": (lambda p: _write(p / "f.nii.gz", np.ones((3, 3, 3, 2)), np.eye(4)), "expected a 3D volume"),
    "2d": (lambda p: _write(p / "f.nii.gz", np.ones((3, 3)), np.eye(4)), "expected a 3D volume"),
    "nan": (lambda p: _write(p / "f.nii.gz", np.full((3, 3, 3), np.nan), np.eye(4)), "not finite"),
    "empty": (lambda p: _write(p / "f.nii.gz", np.zeros((3, 3, 3)), np.eye(4)), "all voxels are 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_images_give_one_line_errors_naming_the_file(tmp_path, case):
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        load_volume(path)
    text = str(err.value)
    assert message in text and str(path) in text and "\n" not in text


def test_label_values_outside_0_1_2_are_refused(tmp_path):
    data = np.zeros((4, 4, 4))
    data[1, 1, 1] = 3
    path = _write(tmp_path / "l.nii.gz", data, np.eye(4), dtype=np.uint8)
    with pytest.raises(InputError, match="label values must be 0, 1 or 2 .* found 3"):
        load_volume(path, kind="label")
    data[1, 1, 1] = 2
    assert load_volume(_write(tmp_path / "ok.nii.gz", data, np.eye(4)), kind="label").data.max() == 2


def test_grid_mismatch_is_refused(tmp_path):
    a = load_volume(_write(tmp_path / "a.nii.gz", np.ones((4, 4, 4)), np.eye(4)))
    b = load_volume(_write(tmp_path / "b.nii.gz", np.ones((4, 4, 5)), np.eye(4)))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    c = load_volume(_write(tmp_path / "c.nii.gz", np.ones((4, 4, 4)), shifted))
    with pytest.raises(InputError, match="shape"):
        check_same_grid(a, b)
    with pytest.raises(InputError, match="affine differs .* by up to 0.5 mm"):
        check_same_grid(a, c)


def test_canonical_grid_from_the_header_alone():
    from wmhkeras.io.nifti import canonical_grid

    affine = np.array([[0.0, 0.5, 0.0, 0.0],    # native axis 1 runs along x, 0.5 mm
                       [2.0, 0.0, 0.0, 0.0],    # native axis 0 along y, 2 mm
                       [0.0, 0.0, -3.0, 0.0],   # native axis 2 along -z, 3 mm
                       [0.0, 0.0, 0.0, 1.0]])
    img = nib.Nifti1Image(np.zeros((10, 20, 30), np.float32), affine)
    assert canonical_grid(img) == ([20, 10, 30], [0.5, 2.0, 3.0])
