"""Input rules of ``wmhkeras segment``: subject ids, folders, pairing and errors."""

import numpy as np
import pytest

from tests.inference.helpers import blob_volume, write_nifti
from wmhkeras.errors import InputError
from wmhkeras.inference.inputs import resolve_inputs
from wmhkeras.io.naming import subject_id


@pytest.mark.parametrize(
    "name, expected",
    [("sub01_FLAIR.nii.gz", "sub01"), ("sub01-flair.nii", "sub01"), ("sub01FLAIR.nii.gz", "sub01"),
     ("sub01.nii.gz", "sub01"), ("patient07/FLAIR.nii.gz", "patient07"), ("a_flair_b.nii", "a_flair_b")],
)
def test_subject_id(tmp_path, name, expected):
    assert subject_id(tmp_path / name) == expected


def test_folder_rule_pairs_flair_with_t1_and_skips_outputs(tmp_path):
    vol = blob_volume()
    for name in ("a_FLAIR.nii.gz", "a_T1.nii.gz", "b_FLAIR.nii", "x_wmh_mask.nii.gz", "x_wmh_prob.nii.gz"):
        write_nifti(tmp_path / name, vol, np.eye(4))
    items = resolve_inputs([tmp_path])
    assert [(i.subject, i.t1.name if i.t1 else None) for i in items] == [("a", "a_T1.nii.gz"), ("b", None)]
    # without FLAIR-tagged names, every NIfTI file is a FLAIR image
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("s1.nii.gz", "s2.nii.gz"):
        write_nifti(plain / name, vol, np.eye(4))
    assert [i.subject for i in resolve_inputs([plain])] == ["s1", "s2"]


def test_input_errors(tmp_path):
    f = write_nifti(tmp_path / "a.nii.gz", blob_volume(), np.eye(4))
    (tmp_path / "b").mkdir()
    g = write_nifti(tmp_path / "b" / "a.nii.gz", blob_volume(), np.eye(4))
    with pytest.raises(InputError, match=r"subject ids collide .*'a' \(.*a.nii.gz\) and 'a'"):
        resolve_inputs([f, g])
    with pytest.raises(InputError, match="input not found"):
        resolve_inputs([tmp_path / "missing.nii.gz"])
    with pytest.raises(InputError, match="--t1 is given 2 times for 1"):
        resolve_inputs([f], t1=[f, g])
