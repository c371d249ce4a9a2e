"""Fixtures of the export tests: a trained tiny run folder, its export, and a bare untrained checkpoint.

The test model is the tiny ``unet`` (32x32x1, depth 2, 4 filters) trained for a few dozen steps on
slices of a small synthetic cohort. Its target is a stand-in for lesions, "normalised FLAIR above 0.5"
(about a fifth of the pixels): the real lesions vanish at 32x32, and an untrained net outputs about 0.5
everywhere, where masks thresholded at 0.5 flip on rounding noise and the Dice checks of the quantised
variants would measure nothing. The run folder is laid out as ``wmhkeras train`` writes it
(:class:`wmhkeras.io.run_folder.RunFolder`). The run and its export are built once for the whole package.
"""

from __future__ import annotations

import keras  # TensorFlow and Keras are hard dependencies of wmhkeras
import numpy as np
import pytest

from wmhkeras.config import config_from_dict, save_config
from wmhkeras.data.datasets import check_subject, load_dataset
from wmhkeras.data.preprocessing import preprocess_volume
from wmhkeras.data.splits import make_split
from wmhkeras.data.synth import SiteParams, make_cohort
from wmhkeras.export.report import format_table
from wmhkeras.export.runner import export
from wmhkeras.io.run_folder import RunFolder, RunSummary
from wmhkeras.models.unet import build_generator

SITES = [
    SiteParams("siteA", (2.0, 2.0, 4.0), (56, 64, 16), 400.0),
    SiteParams("siteB", (2.2, 2.2, 4.0), (52, 60, 14), 900.0, noise=0.04),
]


def _train_tiny(slices: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_generator("unet", input_shape=(32, 32, 1), depth=2, base_filters=4)
    for layer in model.layers:  # moving statistics must catch up within a few dozen steps
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.7
    model.compile(keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(slices, (slices > 0.5).astype(np.float32), batch_size=16, epochs=8, verbose=0)
    return model


@pytest.fixture(scope="package")
def tiny_run(tmp_path_factory):
    """A run folder: 6 synthetic subjects on 2 sites, split 4 / 1 / 1, the trained tiny U-Net as best.keras."""
    root = tmp_path_factory.mktemp("export_run")
    cohort = make_cohort(root / "cohort", subjects=6, sites=2, seed=1, site_params=SITES)
    subjects = load_dataset(cohort.manifest)
    cfg = config_from_dict({
        "data": {"path": str(cohort.manifest), "split": [0.6, 0.2, 0.2]},
        "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
        "loss": {"name": "bce"},
    })
    split = make_split(subjects, cfg.data.split, seed=0)
    run = RunFolder(root / "tiny")
    run.checkpoints.mkdir(parents=True)
    save_config(cfg, run.config)
    split.write(run.split)
    run.write_summary(RunSummary(epochs=8, best_val_dice=0.93, best_epoch=8))
    by_id = {s.subject: s for s in subjects}
    train = np.concatenate([preprocess_volume([check_subject(by_id[i])[0][0].data], (32, 32)).numpy()
                            for i in split.train])
    _train_tiny(train).save(run.best)
    return run, split, by_id


@pytest.fixture(scope="package")
def exported(tiny_run, tmp_path_factory):
    run, _, _ = tiny_run
    out = tmp_path_factory.mktemp("export_out") / "saved_models" / "tiny"
    report = export(run.path, out)
    print("\n" + format_table(report))
    return out, report


@pytest.fixture
def bare_keras(tmp_path):
    path = tmp_path / "model.keras"
    build_generator("unet", input_shape=(32, 32, 1), depth=2, base_filters=4).save(path)
    return path
