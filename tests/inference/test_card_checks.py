"""The voxel-size warning at ``segment`` time: the rule at its edges, and a warning per far-off subject."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.inference.helpers import blob_volume, bright_segmenter, write_nifti
from wmhkeras.inference.card_checks import FAR_ABOVE, FAR_BELOW, check_voxel_size, voxel_size_problems
from wmhkeras.inference.segment import segment
from wmhkeras.io.model_card import InputRequirements, ModelCard, VoxelSize

TRAINED = VoxelSize(min=(0.9, 1.0, 1.0), max=(1.0, 1.0, 3.0), median=(1.0, 1.0, 2.0), subjects=5)


def _card(trained=TRAINED) -> ModelCard:
    return ModelCard(("flair",), "max", (32, 32), input_requirements=InputRequirements(voxel_size_mm=trained))


@pytest.mark.parametrize("voxel, far", [
    ((1.0, 1.0, 1.0), []),
    ((1.5, 1.5, 4.5), []),                      # exactly 1.5 x the largest: still inside
    ((0.45, 0.5, 0.5), []),                     # exactly 0.5 x the smallest: still inside
    ((1.51, 1.0, 2.0), ["X"]),
    ((0.9, 1.0, 4.6), ["Z"]),                   # 4.6 > 1.5 x 3 mm
    ((0.44, 0.49, 2.0), ["X", "Y"]),
])
def test_rule(voxel, far):
    assert (FAR_ABOVE, FAR_BELOW) == (1.5, 0.5)
    problems = voxel_size_problems(voxel, TRAINED)
    assert [p.split()[0] for p in problems] == far


def test_nothing_to_compare_with_warns_nothing(caplog):
    caplog.set_level(logging.WARNING)
    assert check_voxel_size(None, (9.0, 9.0, 9.0), "s") == []
    assert check_voxel_size(_card(None), (9.0, 9.0, 9.0), "s") == []
    assert check_voxel_size(_card(), None, "s") == []
    assert not caplog.records


def test_segment_warns_for_the_far_off_subject_only(tmp_path, caplog):
    near = write_nifti(tmp_path / "near.nii.gz", blob_volume(), np.diag([1.0, 1.0, 2.0, 1.0]))
    thick = write_nifti(tmp_path / "thick.nii.gz", blob_volume(1), np.diag([1.0, 1.0, 6.0, 1.0]))
    model = bright_segmenter()
    model.card = _card()
    caplog.set_level(logging.WARNING, logger="wmhkeras")
    result = segment(model, [near, thick], tmp_path / "out")
    assert result.ok  # a warning, not a failure: both are segmented
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("thick: voxel size 1 x 1 x 6 mm is far outside the model's training data")
    assert "Z 6 mm is above 1.5 x the largest in training (3 mm)" in warnings[0]
