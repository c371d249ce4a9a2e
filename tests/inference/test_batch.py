"""Batch runs: shard parsing and selection, what makes a subject's outputs complete, and the check that a
resumed folder was made with the same model and settings."""

import json

import numpy as np
import pytest

from tests.inference.helpers import blob_volume, write_nifti
from wmhkeras.errors import ConfigError
from wmhkeras.inference.batch import is_complete, parse_shard, select_shard
from wmhkeras.inference.record import check_previous_record


@pytest.mark.parametrize("value", ["0/4", "5/4", "1/0", "a/b", "2", "1/2/3", "-1/4", (0, 2), (1,), (True, 2)])
def test_bad_shards_are_refused(value):
    with pytest.raises(ConfigError, match="1-based"):
        parse_shard(value)


def test_shards_cover_every_subject_once_in_sorted_order():
    assert parse_shard(" 2 / 3 ") == (2, 3) and parse_shard((3, 3)) == (3, 3) and parse_shard(None) is None
    subjects = ["s10", "s02", "s07", "s01", "s05", "s03", "s09"]
    shards = [select_shard(subjects, (i, 3), key=str) for i in (1, 2, 3)]
    assert shards == [["s01", "s05", "s10"], ["s02", "s07"], ["s03", "s09"]]
    assert sorted(s for shard in shards for s in shard) == sorted(subjects)
    assert select_shard(subjects, None, key=str) == subjects  # no shard: the input order
    assert select_shard(subjects[:2], (3, 3), key=str) == []  # more shards than subjects: an empty shard


def test_complete_needs_an_ok_row_from_the_same_flair_and_every_file_readable(tmp_path):
    flair = tmp_path / "a.nii.gz"
    files = {"prob": write_nifti(tmp_path / "a_wmh_prob.nii.gz", blob_volume(), np.eye(4)),
             "lesions": tmp_path / "a_lesions.csv", "qc": tmp_path / "a.png"}
    files["lesions"].write_text("lesion,voxels,volume_ml,x_mm,y_mm,z_mm\n")
    files["qc"].write_bytes(b"\x89PNG\r\n\x1a\n...")
    row = {"subject": "a", "status": "ok", "flair": str(flair)}
    assert is_complete(row, flair, files)
    assert not is_complete(None, flair, files)
    assert not is_complete({**row, "status": "failed"}, flair, files)
    assert not is_complete(row, tmp_path / "other.nii.gz", files)  # the id now names another image
    files["qc"].write_bytes(b"GIF89a")
    assert not is_complete(row, flair, files)
    files["qc"].write_bytes(b"\x89PNG\r\n\x1a\n")
    files["prob"].write_bytes(files["prob"].read_bytes()[:20])  # not a NIfTI any more
    assert not is_complete(row, flair, files)
    files["prob"].unlink()
    assert not is_complete(row, flair, files)


def test_resuming_needs_the_same_model_and_settings(tmp_path):
    record = tmp_path / "segment.json"
    check_previous_record(record, "m.keras", {"threshold": 0.5})  # no record yet: nothing to compare
    record.write_text(json.dumps({"model": {"source": "/m.keras"},
                                  "settings": {"threshold": 0.5, "batch_size": 8, "qc": False}}))
    check_previous_record(record, "/m.keras", {"threshold": 0.5, "batch_size": 2, "qc": True, "new_key": 1})
    with pytest.raises(ConfigError, match="threshold 0.5, now 0.3"):
        check_previous_record(record, "/m.keras", {"threshold": 0.3})
    with pytest.raises(ConfigError, match="model '/m.keras', now '/n.keras'"):
        check_previous_record(record, "/n.keras", {"threshold": 0.5})
