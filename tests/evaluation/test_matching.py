"""Matching predictions to ground truth by subject id: the file-finding rules and the pairing."""

import pytest

from tests.evaluation.helpers import _cohort
from wmhkeras.errors import InputError
from wmhkeras.evaluation.matching import match, resolve_predictions, resolve_truth


def test_matching_rules(tmp_path):
    data, seg = _cohort(tmp_path)
    assert sorted(resolve_predictions(seg)) == ["s1", "s2"]  # *_wmh_prob files are not predictions
    cases = resolve_truth(data / "s1_wmh.nii.gz")
    assert cases[0].subject == "s1" and cases[0].flair.name == "s1_FLAIR.nii.gz"
    # a folder of labels: FLAIR files beside them are images, not labels
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in data.glob("*.nii.gz"):
        (flat / p.name).write_bytes(p.read_bytes())
    assert [(c.subject, c.flair.name) for c in resolve_truth(flat)] == [("s1", "s1_FLAIR.nii.gz"), ("s2", "s2_FLAIR.nii.gz")]
    # one file against one file is paired whatever the names
    assert match(cases, {"other": seg / "s2_wmh_mask.nii.gz"})[0][1].name == "s2_wmh_mask.nii.gz"
    with pytest.raises(InputError, match="no prediction matches"):
        match(resolve_truth(flat), {"x": seg / "s1_wmh_mask.nii.gz", "y": seg / "s2_wmh_mask.nii.gz"})


def test_maps_beside_plain_predictions_are_not_predictions(tmp_path):
    """A folder of predictions named without the segment suffix: probability and uncertainty maps
    written beside them are skipped, whatever else the folder holds."""
    folder = tmp_path / "preds"
    folder.mkdir()
    for name in ("s1_seg.nii.gz", "s1_wmh_prob.nii.gz", "s1_wmh_uncertainty.nii.gz", "s1_FLAIR.nii.gz"):
        (folder / name).write_bytes(b"")
    assert {k: v.name for k, v in resolve_predictions(folder).items()} == {"s1": "s1_seg.nii.gz"}
