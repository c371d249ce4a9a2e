"""The header pre-pass (wmhkeras.io.header_check): each refusal in one line naming the file, no voxel read,
the gzip trailer used and its fallback, groups on one grid, nibabel's own messages kept off stderr."""

import gzip
import logging
import struct

import nibabel as nib
import numpy as np
import pytest

from wmhkeras.errors import InputError
from wmhkeras.io import header_check, load_volume
from wmhkeras.io.header_check import check_inputs, read_header

SHAPE = (6, 5, 4)
AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
#: Byte offsets in a NIfTI-1 header.
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET, QFORM_CODE, SFORM_CODE, SROW_X = 40, 70, 72, 76, 108, 252, 254, 280


def _write(path, data=None, affine=AFFINE, dtype=np.float32):
    data = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE) + 1 if data is None else data
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def _raw():
    """A valid single-file NIfTI-1 of SHAPE float32 voxels, as bytes (352-byte header + 480 bytes)."""
    img = nib.Nifti1Image(np.ones(SHAPE, np.float32), AFFINE)
    img.header.set_qform(AFFINE, code=1)
    img.header.set_sform(AFFINE, code=1)
    return img.to_bytes()


def _patched(path, edits, gz=True):
    """``path`` written from the valid bytes with ``edits`` [(offset, struct format, value)] applied."""
    raw = bytearray(_raw())
    for offset, fmt, value in edits:
        struct.pack_into("<" + fmt, raw, offset, value)
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


def test_a_valid_file_gives_its_grid_without_reading_voxels(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.nii.gz")
    monkeypatch.setattr(header_check, "_gzip_bytes", lambda *a: pytest.fail("decompressed a healthy file"))
    h = read_header(path)
    assert h.native_shape == SHAPE and np.allclose(h.native_affine, AFFINE)
    assert (h.dtype, h.offset, h.data_bytes) == (np.dtype("<f4"), 352, 6 * 5 * 4 * 4)
    assert read_header(_write(tmp_path / "b.nii", np.ones(SHAPE + (1,)))).native_shape == SHAPE  # 4D, one volume


def _bytes(path, data):
    path.write_bytes(data)
    return path


def _cut(path):
    """``path`` cut at two thirds of its bytes: the header still decompresses, the voxels do not all."""
    data = path.read_bytes()
    return _bytes(path, data[: 2 * len(data) // 3])


def _gz_of(raw_cut):
    return lambda p: (p / "f.nii.gz").write_bytes(gzip.compress(_raw()[:raw_cut])) and p / "f.nii.gz"


BAD = {
    "missing": (lambda p: p / "nope.nii.gz", "file not found"),
    "folder": (lambda p: (p / "d.nii.gz").mkdir() or p / "d.nii.gz", "is a folder"),
    "empty": (lambda p: _bytes(p / "e.nii.gz", b""), "the file is empty (0 bytes)"),
    "text named .nii.gz": (lambda p: (p / "t.nii.gz").write_text("subject,flair\n") and p / "t.nii.gz",
                           "not a readable NIfTI file"),
    "gzip of text": (lambda p: (p / "g.nii.gz").write_bytes(gzip.compress(b"hello" * 99)) and p / "g.nii.gz",
                     "not a readable NIfTI file"),
    "2d": (lambda p: _write(p / "f.nii.gz", np.ones((4, 4))), "expected a 3D volume (or 4D with one volume), got shape (4, 4)"),
    "4d, three volumes": (lambda p: _write(p / "f.nii.gz", np.ones(SHAPE + (3,))), "got shape (6, 5, 4, 3)"),
    "dim 0": (lambda p: _patched(p / "f.nii.gz", [(DIM + 4, "h", 0)]), "a dimension is 0 or negative in shape (6, 0, 4)"),
    "dim negative": (lambda p: _patched(p / "f.nii.gz", [(DIM + 2, "h", -6)]), "0 or negative in shape (-6, 5, 4)"),
    "zero voxel size": (lambda p: _patched(p / "f.nii.gz", [(SROW_X + 16 + 4 * i, "f", 0.0) for i in range(4)]),
                        "a zero voxel size"),
    "NaN in the sform": (lambda p: _patched(p / "f.nii.gz", [(SROW_X, "f", float("nan"))]), "is not usable"),
    "huge qform pixdim": (lambda p: _patched(p / "f.nii.gz", [(PIXDIM + 4, "f", 1e38)]), "the qform (code 1) is not usable"),
    "RGB voxels": (lambda p: _patched(p / "f.nii.gz", [(DATATYPE, "h", 128), (BITPIX, "h", 24)]), "not a real number type"),
    "unknown type code": (lambda p: _patched(p / "f.nii.gz", [(DATATYPE, "h", 9999)]), "data code 9999 not recognized"),
    "truncated .nii": (lambda p: (p / "f.nii").write_bytes(_raw()[:600]) and p / "f.nii",
                       "claims 6x5x4 voxels of float32 from byte 352 (832 bytes), but the file holds 600"),
    "truncated .nii.gz stream": (lambda p: _cut(_write(p / "f.nii.gz", np.random.default_rng(0).random((20, 20, 20)))),
                                 "the file holds"),
    "header claims more (gzip)": (_gz_of(700), "(832 bytes), but the file holds 700"),
    "float64 claimed, float32 stored": (lambda p: _patched(p / "f.nii.gz", [(DATATYPE, "h", 64), (BITPIX, "h", 64)]),
                                        "voxels of float64 from byte 352 (1312 bytes), but the file holds 832"),
    "vox_offset past the end": (lambda p: _patched(p / "f.nii", [(VOX_OFFSET, "f", 4096.0)], gz=False), "from byte 4096"),
    "vox_offset NaN": (lambda p: _patched(p / "f.nii.gz", [(VOX_OFFSET, "f", float("nan"))]), "not a readable NIfTI"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_headers_are_refused_in_one_line_naming_the_file(tmp_path, case):
    make, message = BAD[case]
    path = make(tmp_path)
    with pytest.raises(InputError) as err:
        read_header(path)
    text = str(err.value)
    assert message in text and text.startswith(str(path)) and "\n" not in text
    with pytest.raises(InputError):  # load_volume runs the same checks first
        load_volume(path)


def test_voxel_problems_pass_the_header_and_fail_when_read(tmp_path):
    """NaN voxels, and compressed data damaged inside the stream (the gzip trailer intact): only reading shows them."""
    nan = _write(tmp_path / "nan.nii.gz", np.full(SHAPE, np.nan))
    big = _write(tmp_path / "big.nii.gz", np.random.default_rng(0).random((20, 20, 20)))
    data = bytearray(big.read_bytes())
    data[3 * len(data) // 4] ^= 0xFF  # inside the voxels' part of the stream
    damaged = tmp_path / "damaged.nii.gz"
    damaged.write_bytes(bytes(data))
    image = gzip.decompress(_write(tmp_path / "ones.nii.gz", np.ones((64, 64, 40))).read_bytes())
    stored = bytearray(gzip.compress(image, compresslevel=0))  # stored blocks: a flipped byte still decodes
    stored[-8 - 100] ^= 0x01  # a voxel byte near the end; only the CRC at the stream's end tells
    silent = tmp_path / "silent.nii.gz"
    silent.write_bytes(bytes(stored))
    assert np.asarray(nib.load(str(silent)).dataobj).max() > 1  # nibabel alone reads the wrong voxel
    for path, message in ((nan, "not finite"), (damaged, "cannot read the voxel data"),
                          (silent, "compressed data is damaged or truncated .*CRC check failed")):
        read_header(path)
        with pytest.raises(InputError, match=message):
            load_volume(path)


def test_gzip_trailer_disagreeing_is_counted_not_trusted(tmp_path):
    """Two gzip members (the trailer holds only the last one's size) and data after the image pass, by counting."""
    raw = _raw()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:]))
    assert read_header(two).native_shape == SHAPE
    assert load_volume(two).data.shape == SHAPE
    extra = tmp_path / "extra.nii.gz"
    extra.write_bytes(gzip.compress(raw + b"\0" * 64))
    assert read_header(extra).native_shape == SHAPE
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[:400]) + gzip.compress(raw[400:800]))
    with pytest.raises(InputError, match="holds 800"):
        read_header(short)


def test_groups_share_a_grid_and_the_message_counts_the_others(tmp_path, monkeypatch):
    a = _write(tmp_path / "a_FLAIR.nii.gz")
    t1 = _write(tmp_path / "a_T1.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5
    off = _write(tmp_path / "b_T1.nii.gz", affine=shifted)
    small = _write(tmp_path / "c_T1.nii.gz", np.ones((6, 5, 3)))
    read = []
    monkeypatch.setattr(header_check, "read_header", lambda p, f=header_check.read_header: read.append(p) or f(p))
    check_inputs({"a": [a, t1, None], "a2": [a, t1]})
    assert sorted(p.name for p in read) == ["a_FLAIR.nii.gz", "a_T1.nii.gz"]  # each file read once
    with pytest.raises(InputError) as err:
        check_inputs({"a": [a, t1], "b": [a, off], "c": [a, small], "d": [a, tmp_path / "gone.nii.gz"]})
    text = str(err.value)
    assert text.startswith(f"{off}: affine differs from a_FLAIR.nii.gz by up to 0.5 mm")
    assert "(and 2 more inputs with problems: c, d)" in text and "\n" not in text


def test_nibabel_repair_messages_are_logged_naming_the_file_not_printed(tmp_path, caplog, capfd):
    path = _patched(tmp_path / "f.nii.gz", [(0, "i", 100)])  # sizeof_hdr wrong: nibabel repairs it, aloud
    with caplog.at_level(logging.INFO, logger="wmhkeras.io.header_check"):
        assert read_header(path).native_shape == SHAPE
    assert any(str(path) in r.getMessage() and "sizeof_hdr should be 348" in r.getMessage() for r in caplog.records)
    assert "sizeof_hdr" not in capfd.readouterr().err
    assert logging.getLogger("nibabel.global").handlers  # nibabel's own handler is back
