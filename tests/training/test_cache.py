"""The training caches (:mod:`wmhkeras.training.cache`): shards equal memory, reuse, size estimate."""

import numpy as np

from wmhkeras.training.cache import MemoryCache, ShardCache, cache_key, estimate_cache_bytes
from wmhkeras.training.cohort import check_cohort
from wmhkeras.training.pipeline import build_datasets

from .helpers import SPLIT, make_cfg


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


def test_hard_negative_counts_survive_the_shards_and_change_the_key(cohort, tmp_path):
    kw = {"sampling": "patches", "patch_size": [32, 32], "lesion_fraction": 0.4}
    hard = make_cfg(**kw, hard_negatives={"share": 0.5, "brightest": 0.05})
    for cfg in (make_cfg(**kw), hard, make_cfg(**kw, hard_negatives={"share": 0.5, "brightest": 0.1})):
        check_cohort(cfg, cohort, SPLIT, cache=ShardCache(tmp_path / "cache"))
    # one shard folder per subject and setting: off, brightest 0.05, brightest 0.1 (the share is a sampling
    # setting only, so it does not change the cached arrays)
    assert len(list((tmp_path / "cache").glob("*/x.npy"))) == 3 * 6
    memory = check_cohort(hard, cohort, SPLIT, cache=MemoryCache())
    shards = check_cohort(hard, cohort, SPLIT, cache=ShardCache(tmp_path / "cache"))
    for sid in SPLIT.train:
        assert memory[sid].hard.sum() > 0
        np.testing.assert_array_equal(shards[sid].hard, memory[sid].hard)
    assert cache_key(make_cfg(**kw, hard_negatives={"share": 0.2}), cohort[0]) == cache_key(hard, cohort[0])
