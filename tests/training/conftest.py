"""Fixtures shared by the training input pipeline tests: a synthetic cohort, its datasets and cache, the real volumes."""

import dataclasses

import pytest

from wmhkeras.data.datasets import Subject, load_dataset
from wmhkeras.data.synth import SITE_PRESETS, make_cohort
from wmhkeras.io.run_folder import Split
from wmhkeras.training.cache import MemoryCache
from wmhkeras.training.cohort import check_cohort
from wmhkeras.training.pipeline import build_datasets

from ..conftest import OPEN_MS, require_open_ms
from .helpers import SPLIT, make_cfg


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
