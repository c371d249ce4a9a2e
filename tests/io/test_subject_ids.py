"""Subject ids are names, never paths (wmhkeras.io.subject_ids), wherever they come from."""

import numpy as np
import pytest

from tests.inference.helpers import blob_volume, write_nifti
from wmhkeras.data.datasets import load_dataset, read_manifest
from wmhkeras.errors import InputError
from wmhkeras.evaluation.matching import resolve_predictions, resolve_truth
from wmhkeras.inference.inputs import resolve_inputs
from wmhkeras.io.bids import read_bids
from wmhkeras.io.subject_ids import MAX_ID_BYTES, check_subject_ids, id_problem


@pytest.mark.parametrize("good", ["sub-01", "sub-01_ses-02_acq-3d", "patient 07", "Ünïcode", "a.b", "x" * MAX_ID_BYTES])
def test_plain_names_are_ids(good):
    assert id_problem(good) is None


@pytest.mark.parametrize("bad, why", [
    ("", "is empty"), (" a", "space"), ("../evil", "path separator"), ("a/b", "path separator"),
    ("a\\b", "path separator"), ("..", "'..'"), (".", "starts with '.'"), (".hidden", "starts with '.'"),
    ("a..b", "'..'"), ("a\nb", "control character"), ("a\tb", "control character"), ("a\x00b", "control character"),
    ("é" * (MAX_ID_BYTES // 2 + 1), "longer than"),
])
def test_paths_and_odd_names_are_not(bad, why):
    assert why in id_problem(bad)
    with pytest.raises(InputError, match="subject ids must be plain names, not paths") as err:
        check_subject_ids(["ok", bad], "m.csv")
    assert repr(bad) in str(err.value) and "\n" not in str(err.value)


def test_collisions_also_after_case_folding_are_named():
    check_subject_ids(["s1", "s2", "S3"], "here")
    with pytest.raises(InputError, match=r"here: subject ids collide .*'Sub01' and 'sub01'; 'a' is listed twice"):
        check_subject_ids(["Sub01", "a", "sub01", "a"], "here")
    with pytest.raises(InputError, match=r"'s' \(x/s.nii\) and 'S' \(y/S.nii\)"):
        check_subject_ids(["s", "S"], "inputs", ["x/s.nii", "y/S.nii"])


def _manifest(folder, ids):
    f = write_nifti(folder / "f.nii.gz", blob_volume(), np.eye(4))
    (folder / "m.csv").write_text("subject,site,flair,t1,label\n" + "".join(f"{i},a,{f.name},,\n" for i in ids))
    return folder / "m.csv"


def test_every_source_of_ids_is_checked(tmp_path):
    manifest = _manifest(tmp_path, ["../evil"])
    for load in (read_manifest, load_dataset, lambda p: resolve_inputs([p]), resolve_truth):
        with pytest.raises(InputError, match="'../evil' holds a path separator"):
            load(manifest)
    flat = tmp_path / "flat"
    flat.mkdir()
    for name in ("S1.nii.gz", "s1.nii.gz"):  # one file on a case-insensitive file system
        write_nifti(flat / name, blob_volume(), np.eye(4))
    with pytest.raises(InputError, match="collide"):
        resolve_inputs([flat])
    labels = tmp_path / "labels"
    labels.mkdir()
    for name in ("a_wmh.nii.gz", "A_wmh.nii.gz"):
        write_nifti(labels / name, np.zeros((4, 4, 4)), np.eye(4))
    with pytest.raises(InputError, match="ground truth.*collide"):
        resolve_truth(labels)
    (tmp_path / "pred.csv").write_text("subject,pred\n../x,f.nii.gz\n")
    with pytest.raises(InputError, match="'../x' holds a path separator"):
        resolve_predictions(tmp_path / "pred.csv")


def test_miccai_and_bids_ids(tmp_path):
    for site, subject in (("A", "Case1"), ("B", "case1")):
        (tmp_path / "miccai" / site / subject / "pre").mkdir(parents=True)
        write_nifti(tmp_path / "miccai" / site / subject / "pre" / "FLAIR.nii.gz", blob_volume(), np.eye(4))
    with pytest.raises(InputError, match="'Case1' .* and 'case1'"):
        load_dataset(tmp_path / "miccai")
    bids = tmp_path / "bids"
    for sub in ("sub-A", "sub-a"):
        (bids / sub / "anat").mkdir(parents=True)
        write_nifti(bids / sub / "anat" / f"{sub}_FLAIR.nii.gz", blob_volume(), np.eye(4))
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    with pytest.raises(InputError, match="'sub-A' .* and 'sub-a'"):
        read_bids(bids, labels=False)
