"""``wmhkeras segment`` with bad inputs, as a new user meets them: a bad file refused before any work (exit 2,
one line, nothing written, --out not created); a subject whose voxels are bad fails alone (exit 1), and
when it is the only one, exit 2 with --out left as it was found; ids that try to climb out of --out."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from tests.cli.helpers import run_cli
from tests.inference.helpers import SHAPE, blob_volume, read_rows, tiny_model_file, write_nifti

PROGRESS_PREFIX = "subjects: "


def _error_line(res) -> str:
    """stderr less progress lines: exactly one line, ``error: ...``."""
    lines = [line for line in res.stderr.splitlines() if not line.startswith(PROGRESS_PREFIX)]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def _tree(root):
    """Every file and folder under ``root`` with its bytes (folders: None) and modification time."""
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def _truncated(p):
    big = write_nifti(p.parent / "big.nii.gz", np.random.default_rng(0).random((64, 64, 40)), np.eye(4))
    p.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    big.unlink()


def _nan(p, value=np.nan):
    data = blob_volume()
    data[3, 3, 3] = value
    write_nifti(p, data, np.eye(4))


BAD_FILES = {  # refused by the header pre-pass
    "truncated .nii.gz": (_truncated, "it is truncated or its header is wrong"),
    "text named .nii.gz": (lambda p: p.write_text("not an image\n"), "not a readable NIfTI file"),
    "empty file": (lambda p: p.write_bytes(b""), "the file is empty"),
    "2D image": (lambda p: write_nifti(p, np.ones((32, 32)), np.eye(4)), "expected a 3D volume"),
    "4D, three volumes": (lambda p: write_nifti(p, np.ones(SHAPE + (3,)), np.eye(4)), "got shape (32, 32, 10, 3)"),
}
BAD_VOXELS = {  # fail the subject when read
    "NaN voxel": (_nan, "1 voxels are not finite"),
    "infinite voxel": (lambda p: _nan(p, np.inf), "1 voxels are not finite"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES) + sorted(BAD_VOXELS))
def test_one_bad_flair_exits_2_and_out_is_not_created(model, tmp_path, case):
    make, message = {**BAD_FILES, **BAD_VOXELS}[case]
    bad = tmp_path / "bad.nii.gz"
    make(bad)
    out = tmp_path / "new" / "out"
    res = run_cli("segment", model, bad, "--out", out)
    assert res.exit_code == 2, res.output
    line = _error_line(res)
    assert message in line and str(bad) in line
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("case", ["truncated .nii.gz", "NaN voxel"])
def test_an_existing_out_folder_is_left_as_it_was_found(model, tmp_path, case):
    """A folder holding an earlier run (its record, summary and the subject's old outputs) is untouched,
    byte for byte and time for time, whether the file is refused before work or fails when read."""
    make, _ = {**BAD_FILES, **BAD_VOXELS}[case]
    flair = write_nifti(tmp_path / "bad.nii.gz", blob_volume(), np.eye(4))
    out = tmp_path / "out"
    assert run_cli("segment", model, flair, "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    assert {"bad_wmh_mask.nii.gz", "summary.csv", "segment.json", "notes.txt"} <= set(before)
    make(flair)
    res = run_cli("segment", model, flair, "--out", out)
    assert res.exit_code == 2, res.output
    _error_line(res)
    assert _tree(out) == before


def test_bad_voxels_among_good_subjects_fail_alone(model, tmp_path):
    good = [write_nifti(tmp_path / f"s{i}.nii.gz", blob_volume(i), np.eye(4)) for i in (1, 2)]
    _nan(tmp_path / "s3.nii.gz")
    raw = bytearray(write_nifti(tmp_path / "s4.nii.gz", np.random.default_rng(0).random(SHAPE), np.eye(4)).read_bytes())
    raw[3 * len(raw) // 4] ^= 0xFF  # damaged inside the compressed stream; the gzip trailer intact
    (tmp_path / "s4.nii.gz").write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    (out / "s3_wmh_mask.nii.gz").write_bytes(b"an earlier run's mask")  # stale: removed once the run started
    res = run_cli("segment", model, good[0], tmp_path / "s3.nii.gz", tmp_path / "s4.nii.gz", good[1], "--out", out)
    assert res.exit_code == 1, res.output
    failed = [line for line in res.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and "failed: s3: " in failed[0] and "not finite" in failed[0]
    assert "failed: s4: " in failed[1] and "compressed data is damaged" in failed[1]
    rows = {r["subject"]: r for r in read_rows(out / "summary.csv")}
    assert [rows[s]["status"] for s in ("s1", "s2", "s3", "s4")] == ["ok", "ok", "failed", "failed"]
    assert "1 voxels are not finite" in rows["s3"]["error"] and "s4.nii.gz" in rows["s4"]["error"]
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith(("s3_", "s4_", ".tmp"))], names
    assert nib.load(str(out / "s2_wmh_mask.nii.gz")).shape == SHAPE


def test_grids_that_disagree_are_refused_before_work(tmp_path):
    two = tiny_model_file(tmp_path / "two.keras", channels=2)  # FLAIR + T1
    flair = write_nifti(tmp_path / "a_FLAIR.nii.gz", blob_volume(), np.eye(4))
    t1 = write_nifti(tmp_path / "a_T1.nii.gz", blob_volume(), np.diag([1.0, 1.0, 2.0, 1.0]))
    res = run_cli("segment", two, flair, "--t1", t1, "--out", tmp_path / "out")
    assert res.exit_code == 2 and f"{t1}: affine differs from a_FLAIR.nii.gz" in _error_line(res)
    small = write_nifti(tmp_path / "brain.nii.gz", np.ones((32, 32, 9)), np.eye(4))
    one = tiny_model_file(tmp_path / "one.keras")
    res = run_cli("segment", one, flair, "--brain-mask", small, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "shape (32, 32, 9) differs from a_FLAIR.nii.gz" in _error_line(res)
    assert not (tmp_path / "out").exists()


def test_a_model_file_that_is_not_a_model(tmp_path):
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), np.eye(4))
    for name, data in (("junk.keras", b"PK\x03\x04 not really a zip"), ("model.keras", gzip.compress(b"x"))):
        (tmp_path / name).write_bytes(data)
        res = run_cli("segment", tmp_path / name, flair, "--out", tmp_path / "out")
        assert res.exit_code == 2 and str(tmp_path / name) in _error_line(res)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("subject", ["../evil", "../../tmp/evil", "a/../../evil", "..", "sub\n01"])
def test_an_id_that_climbs_out_of_out_writes_nothing_anywhere(model, tmp_path, subject):
    data = tmp_path / "data"
    data.mkdir()
    write_nifti(data / "f.nii.gz", blob_volume(), np.eye(4))
    manifest = data / "manifest.csv"
    manifest.write_text(f'subject,site,flair,t1,label\n"{subject}",a,f.nii.gz,,\nok,a,f.nii.gz,,\n')
    before = _tree(tmp_path)
    res = run_cli("segment", model, manifest, "--out", tmp_path / "work" / "out")
    assert res.exit_code == 2, res.output
    assert "subject ids must be plain names, not paths" in _error_line(res) and repr(subject) in res.stderr
    assert _tree(tmp_path) == before  # nothing written, not even --out
