"""The training input pipeline on synthetic and real volumes: checks, sampling, determinism, caches."""

import dataclasses
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wmhkeras.config import config_from_dict
from wmhkeras.data import datasets
from wmhkeras.data.datasets import Subject, load_dataset
from wmhkeras.data.synth import SITE_PRESETS, make_cohort
from wmhkeras.errors import InputError
from wmhkeras.io.run_folder import Split
from wmhkeras.training.cache import BRAIN_THRESHOLD, MIN_BRAIN_FRACTION, MemoryCache, estimate_cache_bytes
from wmhkeras.training.cohort import check_cohort
from wmhkeras.training.pipeline import build_datasets
from wmhkeras.training.sampler import Sampler

from ..conftest import OPEN_MS, require_open_ms

N_SAMPLES = 2000
BATCH = 8
SPLIT = Split(train=("sub-001", "sub-002", "sub-003", "sub-005"), validation=("sub-004", "sub-006"))


def make_cfg(**data):
    sections = {"model": {"input_size": [64, 64], "depth": 3}, "train": {"batch_size": BATCH, "seed": 0}}
    for key in ("augment", "train", "model"):
        if key in data:
            sections[key] = {**sections.get(key, {}), **data.pop(key)}
    return config_from_dict({"data": {"cache": "memory", **data}, **sections})


def lesion_share(dataset, samples=N_SAMPLES) -> float:
    """Share of samples whose (soft) mask has a lesion voxel."""
    hits = total = 0
    for _, y in dataset.take(samples // BATCH):
        hits += int((y.numpy()[..., 0] > 0.5).any(axis=(1, 2)).sum())
        total += y.shape[0]
    return hits / total


def brain_share(x: np.ndarray) -> np.ndarray:
    """Per-sample fraction of brain voxels of the max-normalised FLAIR ``x[..., 0]``."""
    return (x[..., 0] > BRAIN_THRESHOLD).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six synthetic subjects on three sites, small grids (64 x 72 x 24 at 1.8 x 1.8 x 5 mm) to stay quick."""
    root = tmp_path_factory.mktemp("cohort")
    sites = [dataclasses.replace(s, voxel_size=(1.8, 1.8, 5.0), shape=(64, 72, 24)) for s in SITE_PRESETS]
    make_cohort(root, subjects=6, sites=3, seed=0, site_params=sites)
    return load_dataset(root)


@pytest.fixture(scope="module")
def paper_like(cohort):
    """Slices, lesion fraction 0.3, rotations up to 30 degrees and flips, memory cache."""
    return build_datasets(make_cfg(lesion_fraction=0.3, augment={"flip": True}), cohort, SPLIT)


@pytest.fixture(scope="module")
def slice_cache(cohort):
    """The preprocessed training subjects (slices, 64 x 64), to drive samplers directly."""
    cache = MemoryCache()
    records = check_cohort(make_cfg(), cohort, SPLIT, cache=cache)
    return cache, [records[s] for s in SPLIT.train]


@pytest.fixture(scope="module")
def real():
    """The two real MS patients (182 x 218 x 182), read once for the module."""
    require_open_ms()
    subjects = [Subject(p, "ljubljana", OPEN_MS / p / "FLAIR.nii.gz", OPEN_MS / p / "T1.nii.gz",
                        OPEN_MS / p / "GOLD_STANDARD.nii.gz") for p in ("patient07", "patient26")]
    cfg = make_cfg(lesion_fraction=0.5)
    cache = MemoryCache()
    split = Split(train=("patient07", "patient26"))
    records = check_cohort(cfg, subjects, split, cache=cache)
    return cfg, subjects, split, cache, [records[s] for s in split.train]


# === Sampling: lesion fraction, brain, sites ===


def test_lesion_fraction_is_reached_on_synthetic_slices(paper_like):
    assert abs(lesion_share(paper_like.train) - 0.3) < 0.05


def test_lesion_fraction_is_reached_on_real_volumes(real):
    cfg, subjects, split, cache, records = real
    data = build_datasets(cfg, subjects, split)  # default augmentation: rotations up to 30 degrees
    assert data.validation is None and data.preview is not None
    assert abs(lesion_share(data.train) - 0.5) < 0.05
    # background samples come from brain slices, never from the empty slices above and below the head
    sampler = Sampler(make_cfg(lesion_fraction=0.0), cache, records, seed=0)
    x = np.concatenate([sampler.batch(b)[0] for b in range(50)])
    assert (brain_share(x) >= MIN_BRAIN_FRACTION).all()
    assert sum(int((~r.has_brain).sum()) for r in records) > 100  # there were plenty to avoid


def test_background_samples_contain_brain_unless_any(slice_cache):
    cache, records = slice_cache
    brain = Sampler(make_cfg(lesion_fraction=0.0, background="brain"), cache, records, seed=0)
    x, mask = (np.concatenate(a) for a in zip(*(brain.batch(b) for b in range(100)), strict=True))
    assert mask.max() == 0  # lesion_fraction 0: no lesion sample at all
    assert (brain_share(x) >= MIN_BRAIN_FRACTION).all()
    anywhere = Sampler(make_cfg(lesion_fraction=0.0, background="any"), cache, records, seed=0)
    x = np.concatenate([anywhere.batch(b)[0] for b in range(100)])
    assert (brain_share(x) < MIN_BRAIN_FRACTION).any()  # the synthetic volumes have empty end slices


def test_uniform_sampling_follows_the_slices(slice_cache):
    # lesion_fraction null (the paper): slices drawn uniformly from the brain slices, so the lesion share
    # is the share of lesion slices among them.
    cache, records = slice_cache
    sampler = Sampler(make_cfg(lesion_fraction=None), cache, records, seed=0)
    mask = np.concatenate([sampler.batch(b)[1] for b in range(N_SAMPLES // BATCH)])
    expected = sum(int((r.lesion > 0).sum()) for r in records) / sum(int((r.has_brain | (r.lesion > 0)).sum()) for r in records)
    assert abs(mask.max(axis=(1, 2, 3)).mean() - expected) < 0.05


def test_balance_sites_makes_sites_equally_likely(slice_cache):
    cache, records = slice_cache  # sites of the 4 training subjects: site1, site2, site3, site2
    for balance, check in ((True, lambda share: np.allclose(share, 1 / 3, atol=0.05)),
                           (False, lambda share: share[1] > 0.4)):
        sampler = Sampler(make_cfg(lesion_fraction=0.5, balance_sites=balance), cache, records, seed=0)
        recs = np.concatenate([sampler.plan(b)[1] for b in range(N_SAMPLES // BATCH)])
        sites = np.array([records[i].site for i in recs])
        share = np.array([(sites == s).mean() for s in ("site1", "site2", "site3")])
        assert check(share), (balance, share)


def test_patches_hold_lesions_anywhere_and_centre_on_brain(cohort):
    cfg = make_cfg(sampling="patches", patch_size=[32, 32], lesion_fraction=0.4, augment={"rotation_degrees": 15})
    data = build_datasets(cfg, cohort, SPLIT)
    assert data.input_shape == (32, 32, 1)
    assert abs(lesion_share(data.train) - 0.4) < 0.05
    cache = MemoryCache()
    records = check_cohort(cfg, cohort, SPLIT, cache=cache)
    sampler = Sampler(cfg, cache, [records[s] for s in SPLIT.train], seed=0)
    centred = Sampler(make_cfg(sampling="patches", patch_size=[32, 32], lesion_fraction=0.4, lesion_position="centre"), cache,
                      [records[s] for s in SPLIT.train], seed=0)
    positions = []
    for b in range(20):
        category, rec, k, off, position = sampler.plan(b)
        x, mask = sampler.batch(b)
        lesion = category == 0
        rows, cols = position[lesion].T
        assert (mask[lesion, rows, cols, 0] == 1).all()  # lesion samples: the drawn lesion voxel at its position
        positions.append(position[lesion])
        assert (position[~lesion] == 16).all()  # background patches stay centred on their voxel ...
        assert (mask[category == 1].max(axis=(1, 2, 3)) == 0).all()  # ... and lesion-free
        assert (x[category == 1][:, 16, 16, 0] > BRAIN_THRESHOLD).all()  # ... centred on brain
        # lesion_position: centre draws the same samples, each lesion voxel at the patch centre
        c_category, c_rec, c_k, c_off, c_position = centred.plan(b)
        for a, o in ((category, c_category), (rec, c_rec), (k, c_k), (off, c_off)):
            np.testing.assert_array_equal(a, o)
        assert (c_position == 16).all() and (centred.batch(b)[1][lesion, 16, 16, 0] == 1).all()
    assert all((p == 16).all(axis=1).mean() < 0.05 for p in positions)  # the centre is not special
    # uniform over the whole 32 x 32 patch: the plans of many batches (no pixels read), counted in the
    # 16 blocks of 8 x 8 pixels; each expects 1/16 of them (about 120, standard deviation about 11)
    drawn = np.concatenate([p[c == 0] for c, *_, p in map(sampler.plan, range(600))])
    assert len(drawn) > 1500 and drawn.min() == 0 and drawn.max() == 31
    blocks = np.bincount((drawn[:, 0] // 8) * 4 + drawn[:, 1] // 8, minlength=16)
    expected = len(drawn) / 16
    assert blocks.min() > 0.7 * expected and blocks.max() < 1.3 * expected, blocks
    # validation tiles cover the brain of the validation subjects, at native resolution
    tiles = sum(y.shape[0] for _, y in data.validation)
    assert tiles == data.stats["validation_samples"] > 0


# === Datasets: shapes, validation, preview, determinism, caches ===


def test_batches_are_packed_and_validation_is_deterministic(paper_like):
    x, y = next(iter(paper_like.train))
    assert x.shape == (BATCH, 64, 64, 1) and y.shape == (BATCH, 64, 64, 2) and x.dtype.name == "float32"
    values = np.unique(y[..., 0].numpy())
    assert (np.isclose(values, 0.1) | np.isclose(values, 0.9)).all() and len(values) == 2  # soft labels
    np.testing.assert_array_equal(y[..., 1].numpy(), x[..., 0].numpy())  # channel 1 = augmented FLAIR
    assert paper_like.cache_mode == "memory" and paper_like.sites == ["site1", "site2", "site3"]

    first = [(a.numpy(), b.numpy()) for a, b in paper_like.validation]
    second = [(a.numpy(), b.numpy()) for a, b in paper_like.validation]
    assert len(first) == paper_like.validation_batches
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    ys = np.concatenate([b for _, b in first])
    assert set(np.unique(ys[..., 0])) <= {0.0, 1.0}  # hard labels
    assert ys.shape[0] == paper_like.stats["validation_samples"]
    assert (brain_share(ys[..., 1:]) >= MIN_BRAIN_FRACTION).all()

    px, py = paper_like.preview
    assert px.shape[0] == min(BATCH, 8) and py.shape[-1] == 2
    assert (py[..., 0].reshape(len(py), -1).max(axis=1) == 1).all()  # every preview slice has lesion


def test_same_seed_same_batch_and_shards_equal_memory(cohort, paper_like, tmp_path, monkeypatch):
    cfg = make_cfg(lesion_fraction=0.3, augment={"flip": True}, cache="auto", memory_limit_gb=1e-6)
    shards = build_datasets(cfg, cohort, SPLIT, cache_dir=tmp_path / "cache")
    assert shards.cache_mode == "shards" and len(list((tmp_path / "cache").glob("*/x.npy"))) == 6
    for (xm, ym), (xs, ys) in zip(paper_like.train.take(3), shards.train.take(3), strict=True):
        np.testing.assert_array_equal(xm.numpy(), xs.numpy())
        np.testing.assert_array_equal(ym.numpy(), ys.numpy())
    for (xm, _), (xs, _) in zip(paper_like.validation, shards.validation, strict=True):
        np.testing.assert_array_equal(xm.numpy(), xs.numpy())
    np.testing.assert_array_equal(paper_like.preview[0], shards.preview[0])

    # A second run reuses the shards without reading a single NIfTI file.
    def no_reading(*args, **kwargs):
        raise AssertionError("the cached subjects were read again")

    monkeypatch.setattr("wmhkeras.training.cohort.check_subject", no_reading)
    again = build_datasets(cfg, cohort, SPLIT, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(next(iter(again.train))[0].numpy(), next(iter(shards.train))[0].numpy())

    monkeypatch.undo()
    other = build_datasets(make_cfg(lesion_fraction=0.3, augment={"flip": True}, train={"seed": 1}), cohort, SPLIT,
                           cache_dir=tmp_path / "cache")
    assert not np.array_equal(next(iter(other.train))[0].numpy(), next(iter(paper_like.train))[0].numpy())


def test_estimated_cache_size_is_exact_for_slices(cohort, slice_cache):
    cache, records = slice_cache
    used = [s for s in cohort if s.subject in SPLIT.train + SPLIT.validation]
    assert estimate_cache_bytes(make_cfg(), used) == cache.nbytes


# === Cohort checks ===


def copy_subject(subject: Subject, folder: Path) -> Subject:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("flair", "label"):
        paths[name] = folder / Path(getattr(subject, name)).name
        shutil.copy(getattr(subject, name), paths[name])
    return Subject(subject.subject, subject.site, paths["flair"], None, paths["label"])


def test_cohort_without_lesion_is_refused(cohort, tmp_path):
    subjects = [copy_subject(s, tmp_path / s.subject) for s in cohort[:2]]
    for s in subjects:
        img = nib.load(s.label)
        nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), s.label)
    split = Split(train=(subjects[0].subject,), validation=(subjects[1].subject,))
    with pytest.raises(InputError, match="training subjects contain no lesion voxel"):
        build_datasets(make_cfg(), subjects, split)


def test_bad_files_are_refused_before_training(cohort, tmp_path):
    good = copy_subject(cohort[0], tmp_path / "good")
    broken = copy_subject(cohort[1], tmp_path / "broken")
    data = broken.flair.read_bytes()
    broken.flair.write_bytes(gzip.compress(gzip.decompress(data)[: len(data) // 3]))
    split = Split(train=(good.subject, broken.subject))
    with pytest.raises(InputError, match="truncated|not a readable"):
        check_cohort(make_cfg(), [good, broken], split)

    img = nib.load(good.label)  # a label one slice short of the FLAIR's grid
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:, :, :-1], img.affine), tmp_path / "short.nii.gz")
    mismatched = Subject(good.subject, good.site, good.flair, None, tmp_path / "short.nii.gz")
    with pytest.raises(InputError, match="shape .* differs"):
        check_cohort(make_cfg(), [mismatched], Split(train=(good.subject,)))
    unlabelled = Subject(good.subject, good.site, good.flair, None, None)
    with pytest.raises(InputError, match="no label file"):
        check_cohort(make_cfg(), [unlabelled], Split(train=(good.subject,)))
    with pytest.raises(InputError, match="not in the dataset"):  # a mapping of id lists is checked too
        check_cohort(make_cfg(), [good], {"train": [good.subject, "ghost"], "validation": [], "holdout": []})


def test_check_subject_is_the_reader(monkeypatch, cohort):
    """Every volume goes through datasets.check_subject (one reader, one set of checks)."""
    calls = []
    real_check = datasets.check_subject

    def spy(subject, *args, **kwargs):
        calls.append(subject.subject)
        return real_check(subject, *args, **kwargs)

    monkeypatch.setattr("wmhkeras.training.cohort.check_subject", spy)
    check_cohort(make_cfg(), cohort, SPLIT)
    assert sorted(calls) == sorted(SPLIT.train + SPLIT.validation)
