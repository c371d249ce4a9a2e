"""wmhkeras segment: geometry kept exactly, failures isolated, exit codes, brain volume, options."""

import gzip
import json
import zlib

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras.cli.main  # noqa: F401  (the group first: the command modules import it back)
from tests.inference.helpers import SHAPE, blob_volume, bright_segmenter, read_rows, tiny_model_file, write_nifti
from wmhkeras.cli.segment import segment_command
from wmhkeras.errors import ConfigError
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.inference.segment import segment


def test_bad_option_is_refused(tmp_path):
    f = write_nifti(tmp_path / "a.nii.gz", blob_volume(), np.eye(4))
    with pytest.raises(ConfigError, match="threshold"):
        segment(bright_segmenter(), [f], tmp_path / "out", SegmentSettings(threshold=0.0))


# === Geometry ===


def test_real_flair_keeps_its_geometry_exactly(open_ms, tiny_model, tmp_path):
    src = open_ms / "patient07" / "FLAIR.nii.gz"
    result = segment(tiny_model, [src], tmp_path / "out")
    assert result.ok and result.subjects[0].subject == "patient07"
    ref = nib.load(str(src))
    for suffix, dtype in (("_wmh_prob.nii.gz", np.float32), ("_wmh_mask.nii.gz", np.uint8)):
        out = nib.load(str(tmp_path / "out" / f"patient07{suffix}"))
        assert out.shape == ref.shape == (182, 218, 182)
        assert out.get_data_dtype() == dtype
        np.testing.assert_array_equal(out.affine, ref.affine)
        assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 0
        np.testing.assert_array_equal(out.header.get_qform(), ref.header.get_qform())
        np.testing.assert_array_equal(out.header["pixdim"], ref.header["pixdim"])
    mask = np.asarray(nib.load(str(tmp_path / "out" / "patient07_wmh_mask.nii.gz")).dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    summary = read_rows(tmp_path / "out" / "summary.csv")
    assert summary[0]["subject"] == "patient07" and summary[0]["status"] == "ok"
    assert int(summary[0]["lesion_count"]) == len(read_rows(tmp_path / "out" / "patient07_lesions.csv"))
    assert abs(float(summary[0]["lesion_volume_ml"]) - mask.sum() / 1000) < 1e-3
    record = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert record["model"]["input_size"] == [32, 32] and record["subjects"]["failed"] == 0


def _oblique(affine, degrees=20.0):
    t = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:3, :3] = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    return rot @ affine


def test_lps_oblique_and_swapped_inputs_give_masks_on_their_own_grid(tmp_path):
    ras_affine = np.diag([1.0, 1.2, 3.0, 1.0])
    ras_affine[:3, 3] = [-16, -19, -15]
    vol = blob_volume()
    blob = vol > 0.5
    # The same voxels saved as LPS (x and y reversed), with x/y axes swapped, and with an oblique affine.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]
    swap = np.eye(4)[[1, 0, 2, 3]]
    variants = {
        "ras": (vol, ras_affine),
        "lps": (vol[::-1, ::-1], ras_affine @ flip),
        "swapped": (vol.transpose(1, 0, 2), ras_affine @ swap),
        "oblique": (vol, _oblique(ras_affine)),
    }
    files = [write_nifti(tmp_path / f"{name}.nii.gz", data, aff, scode=0) for name, (data, aff) in variants.items()]
    assert nib.aff2axcodes(variants["lps"][1]) == ("L", "P", "S")
    result = segment(bright_segmenter(), files, tmp_path / "out")
    assert result.ok
    for name, (data, aff) in variants.items():
        out = nib.load(str(tmp_path / "out" / f"{name}_wmh_mask.nii.gz"))
        np.testing.assert_allclose(out.affine, aff, atol=1e-6)
        # in the file's own voxel order the mask is exactly the bright blob of that file
        np.testing.assert_array_equal(np.asarray(out.dataobj), data > 0.5)
        # and back in canonical order it agrees voxel for voxel with the RAS result
        np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(out).dataobj), blob)
        lesion = read_rows(tmp_path / "out" / f"{name}_lesions.csv")
        ijk = np.argwhere(data > 0.5).mean(axis=0)
        expected_mm = aff[:3, :3] @ ijk + aff[:3, 3]
        assert len(lesion) == 1 and int(lesion[0]["voxels"]) == blob.sum()
        np.testing.assert_allclose([float(lesion[0][k]) for k in ("x_mm", "y_mm", "z_mm")], expected_mm, atol=1e-4)


# === Failures and exit codes ===


def _damage(src, dst):
    """``src`` with bytes flipped in the middle of its compressed stream (the gzip trailer intact)."""
    raw = bytearray(src.read_bytes())
    for i in range(len(raw) // 2, len(raw) // 2 + 4):
        raw[i] ^= 0xFF
    dst.write_bytes(bytes(raw))
    return dst


def test_corrupt_file_among_three_fails_alone(tmp_path, tiny_model):
    """Voxels that cannot be read (the header is fine, so the pre-pass lets it through) fail that subject alone."""
    good = [write_nifti(tmp_path / f"s{i}.nii.gz", blob_volume(i), np.eye(4)) for i in (1, 2)]
    bad = _damage(write_nifti(tmp_path / "big.nii.gz", np.random.default_rng(0).random((64, 64, 40)), np.eye(4)),
                  tmp_path / "s3.nii.gz")
    nib.load(str(bad))  # the header parses
    with pytest.raises((OSError, EOFError, gzip.BadGzipFile, ValueError, zlib.error)):
        gzip.decompress(bad.read_bytes())
    out = tmp_path / "out"
    res = CliRunner().invoke(segment_command, [str(tiny_model), *map(str, [good[0], bad, good[1]]), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "failed: s3" in res.output
    for name in ("s1", "s2"):
        assert nib.load(str(out / f"{name}_wmh_mask.nii.gz")).get_fdata().shape == SHAPE
        assert nib.load(str(out / f"{name}_wmh_prob.nii.gz")).get_fdata().shape == SHAPE
        assert (out / f"{name}_lesions.csv").is_file()
    assert not list(out.glob("s3_*")) and not list(out.glob(".tmp-*"))
    rows = {r["subject"]: r for r in read_rows(out / "summary.csv")}
    assert [rows[s]["status"] for s in ("s1", "s3", "s2")] == ["ok", "failed", "ok"]
    assert "s3.nii.gz" in rows["s3"]["error"]


def test_bad_model_and_missing_t1_exit_2_and_write_nothing(tmp_path, tiny_model):
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), np.eye(4))
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(segment_command, [str(tmp_path / "nope.keras"), str(flair), "--out", str(out)])
    assert res.exit_code == 2 and "model not found" in res.output
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    res = runner.invoke(segment_command, [str(tmp_path / "junk.keras"), str(flair), "--out", str(out)])
    assert res.exit_code == 2 and "not a readable .keras" in res.output
    two = tiny_model_file(tmp_path / "two.keras", channels=2)
    res = runner.invoke(segment_command, [str(two), str(flair), "--out", str(out)])
    assert res.exit_code == 2 and "no T1 is given for a" in res.output
    assert not out.exists()


def test_brain_mask_volume(tmp_path):
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), np.diag([1.0, 1.0, 2.0, 1.0]))
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:30, 2:30, 1:9] = 1
    mask = write_nifti(tmp_path / "a_brain.nii.gz", brain, np.diag([1.0, 1.0, 2.0, 1.0]), dtype=np.uint8)
    result = segment(bright_segmenter(), [flair], tmp_path / "out", brain_mask=[mask])
    row = read_rows(tmp_path / "out" / "summary.csv")[0]
    assert float(row["brain_volume_ml"]) == pytest.approx(brain.sum() * 2 / 1000, abs=1e-4)
    assert result.subjects[0].lesion_volume_ml == pytest.approx(np.count_nonzero(blob_volume() > 0.5) * 2 / 1000)


def test_output_paths_never_leave_out_dir(tmp_path):
    """The last guard behind the id check: an id that would put an output outside --out is refused."""
    from wmhkeras.errors import InputError
    from wmhkeras.inference.per_subject import subject_paths as _output_paths

    assert {p.parent for p in _output_paths(tmp_path / "out", "s1", qc=True).values()} == {
        tmp_path / "out", tmp_path / "out" / "qc"}
    for subject in ("../evil", "a/../../evil", "/abs/evil"):
        with pytest.raises(InputError, match="would write outside"):
            _output_paths(tmp_path / "out", subject, qc=True)
