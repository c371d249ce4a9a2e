"""Options of ``wmhkeras segment``: the uncertainty map, brain mask and brain threshold, minimum lesion size in
voxels, and their record in ``segment.json``. Tiny volumes whose answers can be worked out by hand."""

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras.cli.main  # noqa: F401  (the group first: the command modules import it back)
from tests.inference.helpers import SHAPE, blob_volume, bright_segmenter, read_rows, write_nifti
from wmhkeras.cli.segment import segment_command
from wmhkeras.errors import ConfigError
from wmhkeras.inference.loaders import Segmenter
from wmhkeras.inference.predictor import brain_region, lesion_mask
from wmhkeras.inference.record import SegmentSettings
from wmhkeras.inference.segment import segment

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm^3 voxels


def _ramp_segmenter():
    """A 'model' whose output rises along the slice height (X, left-right): 0 at x = 0 to 1 at x = 31."""
    import tensorflow as tf

    ramp = tf.reshape(tf.linspace(0.0, 1.0, 32), (1, 32, 1, 1))
    return Segmenter(lambda x: tf.broadcast_to(ramp, tf.shape(x[..., :1])), ("flair",), "max", (32, 32), "ramp")


def _load(path):
    img = nib.load(str(path))
    return img, np.asarray(img.dataobj)


def test_uncertainty_is_the_flip_disagreement(tmp_path):
    """p(x) = x / 31 and, mirrored, 1 - x / 31: the average is 0.5 and the disagreement |2x / 31 - 1|."""
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), AFFINE)
    result = segment(_ramp_segmenter(), [flair], tmp_path / "out", SegmentSettings(uncertainty=True))
    assert result.ok
    img, unc = _load(tmp_path / "out" / "a_wmh_uncertainty.nii.gz")
    assert unc.shape == SHAPE and img.get_data_dtype() == np.float32
    np.testing.assert_array_equal(img.affine, AFFINE)
    expected = np.abs(2 * np.arange(32) / 31 - 1)[:, None, None]
    np.testing.assert_allclose(unc, np.broadcast_to(expected, SHAPE), atol=1e-5)
    np.testing.assert_allclose(_load(tmp_path / "out" / "a_wmh_prob.nii.gz")[1], 0.5, atol=1e-5)
    settings = json.loads((tmp_path / "out" / "segment.json").read_text())["settings"]
    assert settings["uncertainty"] is True and settings["tta_flip"] is True  # --uncertainty implies --tta
    # without the option there is no uncertainty file
    segment(_ramp_segmenter(), [flair], tmp_path / "plain", SegmentSettings(tta_flip=True))
    assert not (tmp_path / "plain" / "a_wmh_uncertainty.nii.gz").exists()


def test_brain_mask_zeroes_predictions_outside_the_brain(tmp_path):
    vol = blob_volume()  # the bright blob spans x = 5..8 (and one voxel at x = 6)
    flair = write_nifti(tmp_path / "a.nii.gz", vol, AFFINE)
    brain = np.zeros(SHAPE, np.uint8)
    brain[:7] = 1  # cuts the blob: x = 5, 6 stay inside
    mask_file = write_nifti(tmp_path / "a_brain.nii.gz", brain, AFFINE, dtype=np.uint8)
    result = segment(bright_segmenter(), [flair], tmp_path / "out", brain_mask=[mask_file])
    expected = (vol > 0.5) & (brain > 0)
    mask = _load(tmp_path / "out" / "a_wmh_mask.nii.gz")[1]
    np.testing.assert_array_equal(mask, expected)
    prob = _load(tmp_path / "out" / "a_wmh_prob.nii.gz")[1]
    assert prob[7:].max() == 0 and prob[brain > 0].max() == 1
    assert result.subjects[0].lesion_volume_ml == pytest.approx(expected.sum() * 2 / 1000)
    record = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert record["brain_masks"] == {"a": str(mask_file.resolve())}


def test_brain_threshold_keeps_voxels_bright_enough(tmp_path):
    """Two bright regions, 1.0 (32 voxels) and 0.7 (32 voxels), both marked by the model: a threshold of
    0.8 of the maximum keeps the first only, 0.6 both."""
    vol = np.full(SHAPE, 0.1, np.float32)
    vol[2:6, 2:6, 2:4] = 1.0
    vol[20:24, 20:24, 5:7] = 0.7
    flair = write_nifti(tmp_path / "a.nii.gz", vol, AFFINE)
    high = segment(bright_segmenter(), [flair], tmp_path / "high", SegmentSettings(brain_threshold=0.8)).subjects[0]
    low = segment(bright_segmenter(), [flair], tmp_path / "low", SegmentSettings(brain_threshold=0.6)).subjects[0]
    assert (high.lesion_count, high.lesion_volume_ml) == (1, pytest.approx(32 * 2 / 1000))
    assert (low.lesion_count, low.lesion_volume_ml) == (2, pytest.approx(64 * 2 / 1000))
    np.testing.assert_array_equal(_load(tmp_path / "high" / "a_wmh_mask.nii.gz")[1], vol == 1.0)
    assert json.loads((tmp_path / "high" / "segment.json").read_text())["settings"]["brain_threshold"] == 0.8
    # with a mask file too, both apply
    assert brain_region(vol, vol > 0.8, 0.6).sum() == 32 and brain_region(vol) is None


def test_min_lesion_voxels():
    prob = np.zeros((6, 6, 6), np.float32)
    prob[0, 0, 0] = 0.9                            # 1 voxel
    prob[3, 3, 3] = prob[4, 4, 4] = 0.6            # 2 voxels, 26-connected
    prob[0, 5, 0:3] = 0.8                          # 3 voxels
    assert lesion_mask(prob, min_lesion_voxels=2).sum() == 5
    assert lesion_mask(prob, min_lesion_voxels=3).sum() == 3
    # the same sizes in mm^3 with 2 mm^3 voxels: 4 mm^3 keeps the 2- and 3-voxel lesions
    assert lesion_mask(prob, min_lesion_mm3=4.0, voxel_volume_mm3=2.0).sum() == 5


def test_minimum_size_options_and_the_record(tmp_path):
    vol = blob_volume()
    vol[25, 5, 8] = 1.0  # a lone bright voxel: a one-voxel lesion (2 mm^3)
    flair = write_nifti(tmp_path / "a.nii.gz", vol, AFFINE)
    assert segment(bright_segmenter(), [flair], tmp_path / "all").subjects[0].lesion_count == 2
    assert segment(bright_segmenter(), [flair], tmp_path / "mm3", SegmentSettings(min_lesion_mm3=2.0)).subjects[0].lesion_count == 2
    assert segment(bright_segmenter(), [flair], tmp_path / "vox", SegmentSettings(min_lesion_voxels=2)).subjects[0].lesion_count == 1
    settings = json.loads((tmp_path / "vox" / "segment.json").read_text())["settings"]
    assert settings == {"threshold": 0.5, "min_lesion_mm3": 0.0, "tta_flip": False, "batch_size": 8,
                        "min_lesion_voxels": 2, "uncertainty": False, "brain_threshold": None, "bids_out": False,
                        "qc": False, "precision": "float32"}
    with pytest.raises(ConfigError, match="--min-lesion-mm3 and --min-lesion-voxels"):
        segment(bright_segmenter(), [flair], tmp_path / "both", SegmentSettings(min_lesion_mm3=2.0, min_lesion_voxels=2))
    assert not (tmp_path / "both").exists()


def test_cli_options(tmp_path, tiny_model):
    flair = write_nifti(tmp_path / "a.nii.gz", blob_volume(), AFFINE)
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(segment_command, [str(tiny_model), str(flair), "--out", str(out), "--min-lesion-mm3", "4",
                                          "--min-lesion-voxels", "2"])
    assert res.exit_code == 2 and "give one" in res.output and not out.exists()
    res = runner.invoke(segment_command, [str(tiny_model), str(flair), "--out", str(out), "--uncertainty",
                                          "--brain-threshold", "0.2", "--min-lesion-voxels", "2"])
    assert res.exit_code == 0, res.output
    unc, data = _load(out / "a_wmh_uncertainty.nii.gz")
    assert data.shape == SHAPE and data.min() >= 0 and data.max() <= 1
    np.testing.assert_array_equal(unc.affine, AFFINE)
    settings = json.loads((out / "segment.json").read_text())["settings"]
    assert (settings["uncertainty"], settings["tta_flip"], settings["brain_threshold"], settings["min_lesion_voxels"]) == (
        True, True, 0.2, 2)
    assert read_rows(out / "summary.csv")[0]["status"] == "ok"
