"""The training sampler (:mod:`wmhkeras.training.sampler`): lesion fraction, brain, sites, patches."""

import numpy as np

from wmhkeras.training.cache import (
    BACKGROUND_BIT,
    BRAIN_BIT,
    BRAIN_THRESHOLD,
    HARD_BIT,
    LESION_BIT,
    MIN_BRAIN_FRACTION,
    MemoryCache,
)
from wmhkeras.training.cohort import check_cohort
from wmhkeras.training.pipeline import build_datasets
from wmhkeras.training.sampler import Sampler

from .helpers import BATCH, N_SAMPLES, SPLIT, brain_share, lesion_share, make_cfg


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


def test_hard_negatives_centre_lesion_free_patches_on_bright_normal_tissue(cohort):
    # data.hard_negatives: the share of lesion-free patches centred on the brightest 5 % of normal brain
    kw = {"sampling": "patches", "patch_size": [32, 32], "lesion_fraction": 0.4}
    plain_cfg = make_cfg(**kw)
    hard_cfg = make_cfg(**kw, hard_negatives={"share": 1.0, "brightest": 0.05})
    half_cfg = make_cfg(**kw, hard_negatives={"share": 0.5, "brightest": 0.05})
    caches = {}
    for name, cfg in (("plain", plain_cfg), ("hard", hard_cfg)):
        cache = MemoryCache()
        records = check_cohort(cfg, cohort, SPLIT, cache=cache)
        caches[name] = cache, [records[s] for s in SPLIT.train]
    cache, records = caches["hard"]
    # the candidate centres: background centres (a lesion-free patch) at or above the 95th percentile of
    # the subject's normal brain voxels, recomputed here from the cached FLAIR and label bits
    for r in records:
        x = np.stack([cache.read(r.subject, k)[0][..., 0] for k in range(r.x_shape[0])])
        labels = np.stack([cache.read(r.subject, k)[1] for k in range(r.x_shape[0])])
        normal = ((labels & BRAIN_BIT) > 0) & ((labels & LESION_BIT) == 0)
        expected = normal & (x >= np.quantile(x[normal], 0.95)) & ((labels & BACKGROUND_BIT) > 0)
        np.testing.assert_array_equal((labels & HARD_BIT) > 0, expected)
        np.testing.assert_array_equal(r.hard, expected.sum(axis=(1, 2)))
        assert 0 < r.hard.sum() < 0.05 * normal.sum()
    hard = Sampler(hard_cfg, cache, records, seed=0)
    plain = Sampler(plain_cfg, *caches["plain"], seed=0)
    half = Sampler(half_cfg, cache, records, seed=0)
    hard_x, plain_x, counts = [], [], []
    for b in range(40):
        category, rec, k, off, position = hard.plan(b)
        x, mask = hard.batch(b)
        p_category, p_rec, p_k, p_off, p_position = plain.plan(b)
        # paired with a run without hard negatives: the same lesion samples, drawn alike ...
        lesion = p_category == 0
        np.testing.assert_array_equal(category == 0, lesion)
        for a, o in ((rec, p_rec), (k, p_k), (off, p_off), (position, p_position)):
            np.testing.assert_array_equal(a[lesion], o[lesion])
        # ... and every lesion-free one a hard negative: lesion-free, centred on a candidate centre
        negative = ~lesion
        assert (category[negative] == 4).all() and (mask[negative].max(axis=(1, 2, 3)) == 0).all()
        for i in np.flatnonzero(negative):
            image, labels = cache.read(records[rec[i]].subject, int(k[i]))
            row, col = np.argwhere(labels & HARD_BIT)[off[i]]
            assert tuple(position[i]) == (16, 16) and x[i, 16, 16, 0] == image[row, col, 0]
        hard_x.append(x[negative, 16, 16, 0])
        plain_x.append(plain.batch(b)[0][negative, 16, 16, 0])
        # share 0.5: a sample that does not become a hard negative is the plain run's, category included
        h_category, h_rec, h_k, h_off, h_position = half.plan(b)
        same = h_category != 4
        for a, o in ((h_category, p_category), (h_rec, p_rec), (h_k, p_k), (h_off, p_off), (h_position, p_position)):
            np.testing.assert_array_equal(a[same], o[same])
        counts.append(((h_category == 4).sum(), negative.sum()))
    # hard negatives are centred on brighter tissue than uniformly drawn lesion-free patches
    assert np.median(np.concatenate(hard_x)) > np.quantile(np.concatenate(plain_x), 0.9)
    hits, negatives = np.sum(counts, axis=0)
    assert abs(hits / negatives - 0.5) < 0.1  # share 0.5: about half of the lesion-free patches


def test_hard_negatives_off_compute_and_store_nothing(cohort):
    kw = {"sampling": "patches", "patch_size": [32, 32], "lesion_fraction": 0.4}
    cache = MemoryCache()
    records = check_cohort(make_cfg(**kw, hard_negatives={"share": 0.0, "brightest": 0.2}), cohort, SPLIT, cache=cache)
    records = [records[s] for s in SPLIT.train]
    assert all(len(r.hard) == 0 for r in records)
    assert not any((cache.read(r.subject, k)[1] & HARD_BIT).any() for r in records for k in range(r.x_shape[0]))
