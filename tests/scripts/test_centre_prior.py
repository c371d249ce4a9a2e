"""scripts/centre_prior.py: a model without a centre prior scores the same wherever the lesion sits; one
with a centre prior (zero padding seen through a large kernel) loses its patch Dice as the lesion moves off
the centre, while its whole-slice Dice does not."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from tests.scripts.helpers import load_script
from wmhkeras.config import config_from_dict, save_config
from wmhkeras.data.datasets import load_dataset
from wmhkeras.data.splits import make_split
from wmhkeras.data.synth import SITE_PRESETS, make_cohort


def _script():
    return load_script("centre_prior")


def patch_run(tmp_path, model: keras.Model, patch: int = 32):
    """A patch-trained run folder on two synthetic subjects (all in training) with ``model`` as best.keras."""
    root = tmp_path / "cohort"
    sites = [dataclasses.replace(s, voxel_size=(1.8, 1.8, 5.0), shape=(64, 72, 16)) for s in SITE_PRESETS[:1]]
    make_cohort(root, subjects=2, sites=1, seed=0, site_params=sites)
    subjects = load_dataset(root)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = config_from_dict({"data": {"path": str(root / "manifest.csv"), "sampling": "patches", "patch_size": [patch, patch],
                                     "normalisation": "zscore", "cache": "memory", "split": [1.0, 0.0, 0.0]},
                            "model": {"depth": 2}, "train": {"batch_size": 8, "seed": 0}})
    save_config(cfg, run / "config.yaml")
    make_split(subjects, (1.0, 0.0, 0.0)).write(run / "split.json")
    model.save(run / "checkpoints" / "best.keras")
    return run


def bright(inputs):
    """The logit of a pointwise lesion detector: 4 x - 6 (z-scored FLAIR above 1.5)."""
    return keras.layers.Conv2D(1, 1, kernel_initializer=keras.initializers.Constant(4.0),
                               bias_initializer=keras.initializers.Constant(-6.0))(inputs)


@pytest.mark.parametrize("patch", [32])
def test_a_pointwise_model_has_no_centre_prior(tmp_path, patch):
    # a 1 x 1 convolution: what it marks at a pixel depends on that pixel alone, so a patch and the
    # whole slice agree wherever the window is, and the Dice cannot depend on the offset
    inputs = keras.Input((None, None, 1))
    run = patch_run(tmp_path, keras.Model(inputs, keras.layers.Activation("sigmoid")(bright(inputs))), patch)

    module = _script()
    result = module.measure(run, batches=3)
    assert result["lesion_position"] == "random" and result["patch_size"] == [patch, patch]
    rows = result["rows"]
    assert [r["offset_px"] for r in rows] == list(module.OFFSETS)
    for row in rows:
        assert row["true"] > 0 and row["patch_predicted"] > 0
        # inside the slice the crop of the whole-slice mask is the patch's mask; outside it both are 0
        assert row["patch_dice"] == row["whole_slice_dice"] and row["patch_predicted"] == row["whole_slice_predicted"]
    assert module.main([str(run), "--batches", "1", "--json", str(tmp_path / "cp.json")]) == 0
    assert [r["offset_px"] for r in json.loads((tmp_path / "cp.json").read_text())["rows"]] == list(module.OFFSETS)


def test_a_model_that_sees_the_patch_edge_has_a_centre_prior(tmp_path):
    """The positive control: the pointwise detector, vetoed where a 17 x 17 window (zero-padded, as every
    convolution of the generators) reaches beyond the image. In a 32 x 32 patch that is every pixel within
    8 px of the edge: a lesion at the centre is found, one moved 16 or 24 px off it is lost. A whole slice
    has its edges far from the brain, so its Dice does not fall; the script must run each patch on its own."""
    inputs = keras.Input((None, None, 1))
    ones = keras.layers.Conv2D(1, 1, kernel_initializer="zeros", bias_initializer="ones")(inputs)
    inside = keras.layers.Conv2D(1, 17, padding="same", use_bias=False,  # share of the window in the image
                                 kernel_initializer=keras.initializers.Constant(1 / 17**2))(ones)
    # 4 x - 6 + 40 (inside - 1): the detector where the window is whole, vetoed where it is not
    head = keras.layers.Conv2D(1, 1, activation="sigmoid")
    outputs = head(keras.layers.Concatenate()([bright(inputs), inside]))
    head.set_weights([np.array([1.0, 40.0], np.float32).reshape(1, 1, 2, 1), np.array([-40.0], np.float32)])
    run = patch_run(tmp_path, keras.Model(inputs, outputs))

    rows = _script().measure(run, batches=3)["rows"]
    patch = [r["patch_dice"] for r in rows]
    whole = [r["whole_slice_dice"] for r in rows]
    assert all(r["true"] > 0 for r in rows) and [r["offset_px"] for r in rows] == [0, 8, 16, 24]
    assert patch[0] > patch[1] > patch[2] and patch[3] < patch[1]  # measured: 0.67, 0.49, 0.26, 0.31
    assert max(whole) - min(whole) < 0.1  # measured: 0.89, 0.86, 0.86, 0.83
    assert all(p < w - 0.3 for p, w in zip(patch[1:], whole[1:], strict=True))
