"""scripts/centre_prior.py: a model without a centre prior scores the same wherever the lesion sits."""

import dataclasses
import json

import keras
import pytest

from tests.scripts.helpers import load_script
from wmhkeras.config import config_from_dict, save_config
from wmhkeras.data.datasets import load_dataset
from wmhkeras.data.splits import make_split
from wmhkeras.data.synth import SITE_PRESETS, make_cohort


def _script():
    return load_script("centre_prior")


@pytest.mark.parametrize("patch", [32])
def test_a_pointwise_model_has_no_centre_prior(tmp_path, patch):
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
    # a 1 x 1 convolution: what it marks at a pixel depends on that pixel alone, so a patch and the
    # whole slice agree wherever the window is, and the Dice cannot depend on the offset
    inputs = keras.Input((None, None, 1))
    outputs = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer=keras.initializers.Constant(4.0),
                                  bias_initializer=keras.initializers.Constant(-6.0))(inputs)
    keras.Model(inputs, outputs).save(run / "checkpoints" / "best.keras")

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
