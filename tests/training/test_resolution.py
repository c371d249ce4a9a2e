"""Training at the scans' own resolution: ``data.resample`` spacing / none, the canvas, 2.5D context,
free-size generators trained on patches and applied to whole slices."""

from __future__ import annotations

import numpy as np
import pytest

from wmhkeras.config import config_from_dict
from wmhkeras.data import preprocessing as pp
from wmhkeras.data.datasets import check_subject, load_dataset
from wmhkeras.data.synth import make_cohort
from wmhkeras.data.synth.sites import SiteParams
from wmhkeras.io.run_folder import RunFolder, Split
from wmhkeras.training.cache import MemoryCache, cache_key, estimate_cache_bytes
from wmhkeras.training.cohort import check_cohort
from wmhkeras.training.pipeline import build_datasets, input_shape
from wmhkeras.training.sampler import crop, fit_canvas
from wmhkeras.training.validation import read_entries

#: A 0.5 mm site and an anisotropic one (0.8 x 1.2 mm), both 5 mm slices, about 112 x 118 mm in-plane.
SITES = (SiteParams("fine", (0.5, 0.5, 5.0), (224, 236, 12)), SiteParams("aniso", (0.8, 1.2, 5.0), (140, 96, 12)))
#: At 1.6 mm: fine 224 * 0.5 / 1.6 = 70 x 236 * 0.5 / 1.6 = 73.75 -> 74; aniso 70 x 72.
RESAMPLED = {"fine": (70, 74), "aniso": (70, 72)}
SPLIT = Split(train=("sub-001", "sub-002", "sub-003"), validation=("sub-004",))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Four subjects, two on each site of :data:`SITES`."""
    root = tmp_path_factory.mktemp("fine")
    return make_cohort(root, subjects=4, sites=2, seed=0, site_params=SITES, lesion_fraction=(0.004, 0.01)).manifest


@pytest.fixture(scope="module")
def cohort(manifest):
    return load_dataset(manifest)


def make_cfg(manifest=None, **sections):
    base = {
        "data": {"resample": "spacing", "spacing": [1.6, 1.6], "lesion_fraction": 0.7, "cache": "memory",
                 "path": None if manifest is None else str(manifest)},
        "model": {"arch": "unet", "input_size": [80, 80], "depth": 2, "base_filters": 4},
        "loss": {"name": "dice", "weights": "random"},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, "image_summary_every": 1, "seed": 0},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return config_from_dict(base)


def cached(cfg, cohort):
    cache = MemoryCache()
    records = check_cohort(cfg, cohort, SPLIT, cache=cache)
    return cache, records


def reference_input(cfg, subject, multiple=1):
    """The model input of ``subject`` as ``wmhkeras segment`` computes it (``preprocess_volume``)."""
    images, _ = check_subject(subject, cfg.data.modalities, need_label=True)
    return pp.preprocess_volume([v.data for v in images], resampling=pp.resampling_for(cfg.data, cfg.model, multiple),
                                voxel_size=images[0].spacing, method=cfg.data.normalisation,
                                context=cfg.data.context_slices).numpy()


# === The canvas ===


def test_fit_canvas_pads_like_segmentation_and_crops_centred():
    rng = np.random.default_rng(0)
    a = rng.random((10, 13, 2)).astype(np.float32)
    padded = pp.Resampling("none", multiple=8).to_model(a[None]).numpy()[0]  # 16 x 16, as segment pads
    np.testing.assert_array_equal(fit_canvas(a, (16, 16)), padded)
    big = rng.random((90, 70, 1)).astype(np.float32)
    out = fit_canvas(big, (80, 80))  # rows cropped (5 dropped before), columns padded (5 zeros before)
    np.testing.assert_array_equal(out[:, 5:75], big[5:85])
    assert out[:, :5].sum() == 0 and out[:, 75:].sum() == 0
    assert fit_canvas(big, (90, 70)) is big  # fixed mode: the slice is the canvas
    np.testing.assert_array_equal(crop(big, -2, 3, 4, 4)[2:], big[:2, 3:7])


# === Spacing mode ===


def test_spacing_mode_caches_the_resampled_grid(cohort):
    cfg = make_cfg()
    cache, records = cached(cfg, cohort)
    for s in cohort[:2]:
        x = cache._arrays[s.subject][0]
        assert x.shape == (12, *RESAMPLED[s.site], 1) == records[s.subject].x_shape
        np.testing.assert_array_equal(x, reference_input(cfg, s))
        # segment's input (padded to 2^depth) holds exactly the cached slice at its centre
        padded = reference_input(cfg, s, multiple=4)
        np.testing.assert_array_equal(fit_canvas(np.moveaxis(padded, 0, -1), x.shape[1:3]),
                                      np.moveaxis(x, 0, -1))
    assert estimate_cache_bytes(cfg, [s for s in cohort if s.subject in SPLIT.train + SPLIT.validation]) == cache.nbytes

    # every sample is the whole resampled slice centred on the 80 x 80 canvas
    rec = records["sub-001"]
    k = int(np.argmax(rec.lesion))
    x, mask = read_entries(cfg, cache, [rec], [(0, k, 0, 0)])
    stored, labels = cache.read("sub-001", k)
    assert x.shape == (1, 80, 80, 1) and mask.shape == (1, 80, 80, 1)
    np.testing.assert_array_equal(x[0, 5:75, 3:77], stored)  # 70 x 74: 5 rows and 3 columns before
    assert x[0, :5].sum() == 0 and x[0, :, :3].sum() == 0
    assert mask.sum() == (labels & 1).sum() == rec.lesion[k] > 0


def test_cache_key_follows_the_resampling_settings(cohort):
    s = cohort[0]
    key = cache_key(make_cfg(), s)
    assert cache_key(make_cfg(), s) == key
    assert cache_key(make_cfg(data={"spacing": [1.0, 1.0]}), s) != key
    assert cache_key(make_cfg(data={"resample": "none"}), s) != key
    assert cache_key(make_cfg(data={"context_slices": 1}), s) != key
    fixed = cache_key(make_cfg(data={"resample": "fixed"}), s)
    assert fixed != key and fixed == cache_key(make_cfg(data={"resample": "fixed", "spacing": [1.0, 1.0]}), s)


# === 2.5D ===


def test_context_slices_are_the_neighbours_with_edges_repeated(cohort):
    cfg = make_cfg(data={"modalities": ["flair", "t1"], "context_slices": 2})
    flat = make_cfg(data={"modalities": ["flair", "t1"]})
    cache, _ = cached(cfg, cohort)
    s = cohort[1]
    x = cache._arrays[s.subject][0]
    np.testing.assert_array_equal(x, reference_input(cfg, s))  # what segment feeds the model
    x0 = reference_input(flat, s)  # (Z, H, W, 2): FLAIR, T1 of each slice alone
    z = x.shape[0]
    assert x.shape == (*x0.shape[:3], 10) and z == 12
    for k, neighbours in ((0, [0, 0, 0, 1, 2]), (1, [0, 0, 1, 2, 3]), (6, [4, 5, 6, 7, 8]), (z - 1, [9, 10, 11, 11, 11])):
        expected = np.concatenate([x0[neighbours, ..., 0], x0[neighbours, ..., 1]]).transpose(1, 2, 0)
        np.testing.assert_array_equal(x[k], expected)
    assert pp.center_channels(2, 2) == [2, 7]
    np.testing.assert_array_equal(x[..., [2, 7]], x0)


def test_packed_target_holds_the_centre_flair(cohort):
    cfg = make_cfg(data={"modalities": ["flair", "t1"], "context_slices": 1},
                   augment={"flip": True, "intensity_scale": 0.2})
    data = build_datasets(cfg, cohort, SPLIT)
    assert data.input_shape == input_shape(cfg) == (80, 80, 6)
    x, y = (a.numpy() for a in next(iter(data.train)))
    assert x.shape == (4, 80, 80, 6) and y.shape == (4, 80, 80, 2)
    np.testing.assert_array_equal(y[..., 1], x[..., 1])  # FLAIR of slice z (augmented), not of z - 1
    assert not np.array_equal(x[..., 0], x[..., 1])
    vx, vy = (a.numpy() for a in next(iter(data.validation)))
    np.testing.assert_array_equal(vy[..., 1], vx[..., 1])
    px, py = data.preview
    np.testing.assert_array_equal(py[..., 1], px[..., 1])


# === Training with free-size generators (slow) ===


def fixed_size_reference(run: RunFolder, height: int, width: int, channels: int):
    """The trained weights (``last.keras``, the training graph at the sample size: with one epoch, best's
    too) in the U-Net built for a fixed ``height x width`` input: what the free-size model must compute."""
    from wmhkeras.models import build_generator
    from wmhkeras.registration import load_model

    model = build_generator("unet", input_shape=(height, width, channels), depth=2, base_filters=4)
    model.set_weights(load_model(run.last).get_weights())
    return model


@pytest.mark.slow
def test_spacing_and_context_train_a_free_size_model(manifest, tmp_path):
    from wmhkeras.registration import load_model
    from wmhkeras.training.trainer import train

    cfg = make_cfg(manifest, data={"context_slices": 1},
                   loss={"name": "content"})
    result = train(cfg, tmp_path / "run", split=SPLIT, verbose=0)
    assert result.epochs == 1 and np.isfinite(result.history["loss"][0])
    from wmhkeras.models.unet import free_size

    run = RunFolder(tmp_path / "run")
    model = load_model(run.best)  # the inference checkpoint: free size
    assert model.input_shape == (None, None, None, 3)
    x = np.random.default_rng(0).normal(size=(2, 72, 76, 3)).astype(np.float32)
    out = model.predict(x, verbose=0)  # any size divisible by 2^depth
    assert out.shape == (2, 72, 76, 1)
    np.testing.assert_allclose(out, fixed_size_reference(run, 72, 76, 3).predict(x, verbose=0), atol=1e-5)
    # last.keras is the training state (the graph of the sample size, for --resume); its free-size copy
    # has the same weights and segments any size
    last = load_model(run.last)
    assert last.input_shape[1:] == (80, 80, 3)
    copy = free_size(last)
    assert copy.input_shape == (None, None, None, 3)
    np.testing.assert_allclose(copy.predict(np.ones((1, 80, 80, 3), np.float32), verbose=0),
                               last.predict(np.ones((1, 80, 80, 3), np.float32), verbose=0), atol=1e-5)


@pytest.mark.slow
def test_a_model_trained_on_patches_segments_whole_slices(manifest, cohort, tmp_path):
    from wmhkeras.models.unet import count_flops
    from wmhkeras.registration import load_model
    from wmhkeras.training.trainer import train

    cfg = make_cfg(manifest, data={"resample": None, "sampling": "patches", "patch_size": [32, 32]},
                   model={"input_size": [32, 32]})
    assert pp.resample_mode(cfg.data.resample, cfg.data.sampling) == "none"  # patches at native resolution
    train(cfg, tmp_path / "run", split=SPLIT, verbose=0)
    model = load_model(RunFolder(tmp_path / "run").best)
    assert model.input_shape == (None, None, None, 1)
    s = cohort[0]  # the 0.5 mm site: 224 x 236 slices, padded to 224 x 236 (both divisible by 4)
    x = reference_input(cfg, s, multiple=4)
    assert x.shape == (12, 224, 236, 1)
    probabilities = model.predict(x[5:7], verbose=0)
    assert probabilities.shape == (2, 224, 236, 1)
    reference = fixed_size_reference(RunFolder(tmp_path / "run"), 224, 236, 1).predict(x[5:7], verbose=0)
    np.testing.assert_allclose(probabilities, reference, atol=1e-5)
    assert probabilities.std() > 1e-3  # not a constant map
    assert count_flops(model, input_size=(224, 236)) > count_flops(model, input_size=(32, 32)) > 0
