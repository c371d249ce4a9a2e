"""Manifests as spreadsheet programs save them (byte-order marks, CRLF, semicolons, UTF-16 tabs, quoted fields,
trailing empty columns and rows) are read as the plain file; what cannot be read safely is refused, naming
the line. A T1 a manifest lists for a FLAIR-only model is said in the log and checked like any input."""

import codecs
import logging

import nibabel as nib
import numpy as np
import pytest

from wmhkeras.data.datasets import check_headers, read_manifest
from wmhkeras.errors import InputError
from wmhkeras.inference.inputs import check_input_headers, resolve_inputs

ROWS = [["subject", "site", "flair", "t1", "label"],
        ["s1", "A", "a/flair.nii.gz", "a/t1.nii.gz", ""],
        ["s2", "", "/data/b, second/flair.nii.gz", "", "b/label.nii.gz"]]


def _csv(rows, sep=",", end="\n", quote_all=False) -> str:
    def cell(value):
        return f'"{value}"' if quote_all or sep in value else value
    return end.join(sep.join(cell(v) for v in row) for row in rows) + end


def _expected(tmp_path):
    return read_manifest(_write(tmp_path / "plain.csv", _csv(ROWS).encode()))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, data", [
    ("excel_csv_utf8", codecs.BOM_UTF8 + _csv(ROWS, end="\r\n").encode()),       # Excel "CSV UTF-8"
    ("semicolons", _csv(ROWS, sep=";", end="\r\n").encode()),                      # Excel where ',' is the decimal mark
    ("utf16_tabs", _csv(ROWS, sep="\t", end="\r\n").encode("utf-16")),             # Excel "Unicode Text"
    ("quoted", _csv(ROWS, quote_all=True).encode()),                               # LibreOffice "quote all"
    ("old_mac", _csv(ROWS, end="\r").encode()),                                    # CR line ends
    ("trailing", (_csv([r + ["", ""] for r in ROWS]) + ",,,,,,\n,,,,,,\n").encode()),  # formatted empty cells
    ("blank_rows", ("\n" + _csv(ROWS[:2]) + "\n,,,,\n" + _csv(ROWS[2:])).encode()),
    ("reordered", _csv([[r[2], r[0], r[4], r[3], r[1]] for r in ROWS]).encode()),
    ("header_case", _csv([[h.upper() + " " for h in ROWS[0]], *ROWS[1:]]).encode()),
])
def test_spreadsheet_manifests_read_as_the_plain_file(tmp_path, name, data, caplog):
    with caplog.at_level(logging.INFO, logger="wmhkeras.data.datasets"):
        subjects = read_manifest(_write(tmp_path / f"{name}.csv", data))
    assert subjects == _expected(tmp_path)
    assert str(subjects[1].flair) == "/data/b, second/flair.nii.gz"  # a quoted comma stays in its field
    if name in ("excel_csv_utf8", "semicolons", "utf16_tabs"):
        assert "read as" in caplog.text and "CRLF" in caplog.text


@pytest.mark.parametrize("data, message", [
    ("subject,site,flair,t1,label\ns1,A,caf\xe9/flair.nii.gz,,\n".encode("cp1252"),
     r"line 2: not UTF-8 text \(byte 0xe9\); save the manifest as 'CSV UTF-8'"),
    (b"PK\x03\x04rest of a zip", r"a spreadsheet workbook \(.xlsx/.ods\), not CSV text"),
    (b"subject,site,flair,t1,label,\ns1,A,/f.nii.gz,,,note\n", r"line 2: the value 'note' in field 6 is beyond the header"),
    (b"subject,site,flair,t1,label\ns1,A,C:\\data\\f.nii.gz,,\n", r"line 2: flair 'C:\\\\data\\\\f.nii.gz' is a Windows path"),
    (b"subject,site,flair,t1,label,Site\ns1,A,/f.nii.gz,,,B\n", "names the column 'site' twice"),
    (b"subject;site;flair\ns1;A;/f.nii.gz\n", "the header must name the columns subject,site,flair,t1,label"),
])
def test_what_cannot_be_read_safely_is_refused_naming_the_line(tmp_path, data, message):
    with pytest.raises(InputError, match=message):
        read_manifest(_write(tmp_path / "m.csv", data))


def test_a_row_with_one_field_too_many_is_refused(tmp_path):
    # an unquoted comma inside a path: the fields shift, the label column gets the rest of the path
    data = b"subject,site,flair,t1,label\ns1,A,/d/a, b/flair.nii.gz,,/l.nii.gz\n"
    with pytest.raises(InputError, match=r"m.csv, line 2: the value '/l.nii.gz' in field 6 is beyond the header's named "
                                         r"columns \(5\); a separator inside an unquoted value\? Quote it"):
        read_manifest(_write(tmp_path / "m.csv", data))


def _nifti(path, shape=(6, 6, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ones(shape, np.float32), np.eye(4)), str(path))
    return path


def test_a_t1_listed_for_a_flair_only_model_is_logged_and_checked(tmp_path, caplog):
    _nifti(tmp_path / "a" / "flair.nii.gz")
    _nifti(tmp_path / "a" / "t1.nii.gz", shape=(6, 6, 5))  # off the FLAIR's grid: refused although unused
    manifest = _write(tmp_path / "m.csv", _csv(ROWS[:2]).encode())
    items = resolve_inputs([manifest])
    assert items[0].t1_listed
    with caplog.at_level(logging.WARNING), pytest.raises(InputError, match="t1.nii.gz: shape"):
        check_input_headers(items, ("flair",))
    assert "a T1 image is listed for 1 subject(s) (s1) but the model uses FLAIR only" in caplog.text
    with pytest.raises(InputError, match="t1.nii.gz: shape"):  # training reads the manifest the same way
        check_headers(read_manifest(manifest), ("flair",), labels=False)
    _nifti(tmp_path / "a" / "t1.nii.gz")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_input_headers(items, ("flair",))
        check_headers(read_manifest(manifest), ("flair",), labels=False)
    assert caplog.text.count("is listed for 1 subject(s) (s1)") == 2
    caplog.clear()
    check_input_headers(items, ("flair", "t1"))  # used: nothing to say
    assert "is listed" not in caplog.text


def test_a_t1_found_beside_a_flair_is_checked_only_when_used(tmp_path, caplog):
    """A folder's *_T1 file (or a BIDS T1w) was not named by anyone: a FLAIR-only model neither reads nor checks it."""
    _nifti(tmp_path / "in" / "s1_FLAIR.nii.gz")
    _nifti(tmp_path / "in" / "s1_T1.nii.gz", shape=(6, 6, 5))
    items = resolve_inputs([tmp_path / "in"])
    assert items[0].t1 is not None and not items[0].t1_listed
    with caplog.at_level(logging.WARNING):
        check_input_headers(items, ("flair",))
    assert "is listed" not in caplog.text
