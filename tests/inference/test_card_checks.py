"""The voxel-size and skull-stripping warnings at ``segment`` time: each rule at its edges, and a warning
per subject it concerns."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from tests.inference.helpers import blob_volume, bright_segmenter, write_nifti
from wmhkeras.inference.card_checks import (
    FAR_ABOVE,
    FAR_BELOW,
    HEAD_ML,
    check_skull_stripped,
    check_voxel_size,
    tissue_volume_ml,
    voxel_size_problems,
)
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


def _segment_warnings(tmp_path, caplog, card: ModelCard, voxels: dict, **options) -> list[str]:
    """Segment one blob volume per ``{name: voxel size (mm)}`` with a model carrying ``card``; the
    warnings logged (every subject must still be segmented)."""
    files = [write_nifti(tmp_path / f"{name}.nii.gz", blob_volume(i), np.diag([*size, 1.0]))
             for i, (name, size) in enumerate(voxels.items())]
    model = replace(bright_segmenter(), card=card)
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="wmhkeras")
    result = segment(model, files, tmp_path / f"out{len(list(tmp_path.glob('out*')))}", **options)
    assert result.ok  # a warning, not a failure: each is segmented
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_segment_warns_for_the_far_off_subject_only(tmp_path, caplog):
    warnings = _segment_warnings(tmp_path, caplog, _card(), {"near": (1.0, 1.0, 2.0), "thick": (1.0, 1.0, 6.0)})
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("thick: voxel size 1 x 1 x 6 mm is far outside the model's training data")
    assert "Z 6 mm is above 1.5 x the largest in training (3 mm)" in warnings[0]


def _stripped_card(stated=True) -> ModelCard:
    return ModelCard(("flair",), "zscore", (32, 32), input_requirements=InputRequirements(skull_stripped=stated))


def test_tissue_volume_counts_voxels_above_a_tenth_of_the_maximum():
    flair = np.zeros((4, 4, 4), np.float32)
    flair[0, 0, 0] = 100.0
    flair[1, :, :] = 10.5    # 16 voxels just above 0.1 x 100
    flair[2, :, :] = 10.0    # 16 voxels at exactly 0.1 x 100: not counted
    assert tissue_volume_ml(flair, 2.0) == pytest.approx(17 * 2.0)
    assert tissue_volume_ml(np.zeros((3, 3, 3)), 1.0) == 0.0


def test_skull_rule_at_its_edge(caplog):
    assert HEAD_ML == 2200.0
    caplog.set_level(logging.WARNING)
    flair = np.zeros((10, 10, 30), np.float32)
    flair[:, :, :22] = 1.0                                   # 2200 voxels of tissue
    assert check_skull_stripped(_stripped_card(), flair, 1.0, "s") is None   # exactly at the bound: fine
    assert not caplog.records
    flair[0, 0, 22] = 1.0                                    # one voxel more
    problem = check_skull_stripped(_stripped_card(), flair, 1.0, "s")
    assert problem.startswith("2201 mL of tissue is above the 2200 mL")
    assert caplog.records[-1].getMessage().startswith("s: 2201 mL of tissue")
    # the same volume in half-size voxels is a brain
    assert check_skull_stripped(_stripped_card(), flair, 0.5, "s") is None


def test_skull_warns_only_when_the_card_says_skull_stripped(caplog):
    caplog.set_level(logging.WARNING)
    head = np.ones((20, 20, 10), np.float32)                 # 4000 mL
    assert check_skull_stripped(None, head, 1.0) is None
    assert check_skull_stripped(_stripped_card(False), head, 1.0) is None
    assert check_skull_stripped(_stripped_card("not stated"), head, 1.0) is None
    assert not caplog.records
    assert check_skull_stripped(_stripped_card(True), head, 1.0) is not None


def test_segment_warns_for_the_whole_head_unless_a_brain_mask_is_given(tmp_path, caplog):
    # blob_volume: about 8200 voxels above a tenth of its maximum; 8 mL at 1 mm, 8 L at 10 mm
    warnings = _segment_warnings(tmp_path, caplog, _stripped_card(), {"brain": (1.0, 1.0, 1.0),
                                                                     "head": (10.0, 10.0, 10.0)})
    assert len(warnings) == 1 and warnings[0].startswith("head: "), warnings
    assert "looks not skull-stripped" in warnings[0] and "--brain-mask" in warnings[0]
    # with the scan's brain mask, predictions outside the brain are dropped anyway: no warning
    mask = write_nifti(tmp_path / "mask.nii.gz", np.ones_like(blob_volume()), np.diag([10.0, 10.0, 10.0, 1.0]))
    assert _segment_warnings(tmp_path, caplog, _stripped_card(), {"head": (10.0, 10.0, 10.0)}, brain_mask=mask) == []
