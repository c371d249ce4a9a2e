"""Lesion synthesis: painting real lesion shapes into training FLAIRs, and the run's painted copies."""

import dataclasses

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import truncnorm

from wmhkeras.config import config_from_dict
from wmhkeras.data.datasets import load_dataset
from wmhkeras.data.synth import SITE_PRESETS, make_cohort
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io import load_volume
from wmhkeras.io.run_folder import Split
from wmhkeras.training import lesion_synthesis as ls
from wmhkeras.training.cache import LESION_BIT, MemoryCache
from wmhkeras.training.pipeline import build_datasets
from wmhkeras.training.sampler import _OTHER, _PAINTED, Sampler

SHAPE = (40, 40, 40)


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def cubes(shape, size=3, at=(6, 12, 24, 30)) -> np.ndarray:
    """Separate ``size``-voxel cubes with corners on the lattice ``at`` x ``at`` x ``at`` (one lesion each)."""
    mask = np.zeros(shape, bool)
    for i in at:
        for j in at:
            for k in at:
                mask[i:i + size, j:j + size, k:k + size] = True
    return mask


# === Measuring and fitting ===


def test_lesion_contrast_is_lesion_mean_minus_ring_median_over_brain_sd():
    brain = np.zeros(SHAPE, bool)
    brain[4:36, 4:36, 4:36] = True
    flair = np.zeros(SHAPE, np.float32)
    flair[brain] = 110.0
    flair[4:20, 4:36, 4:36] = 90.0  # half the brain at 90, half at 110: non-lesion mean 100, SD 10
    lesion = np.zeros(SHAPE, bool)
    lesion[10:13, 18:21, 18:21] = True  # inside the 90 half, its ring too (3 voxels out: x 7..15)
    flair[lesion] = 120.0
    # the lesion takes 27 of the 90-voxels: the non-lesion brain is no longer balanced; its SD by hand
    tissue = flair[brain & ~lesion]
    sd = np.sqrt(((tissue - tissue.mean()) ** 2).mean())
    contrasts, sizes = ls.lesion_contrasts(flair, lesion, brain)
    assert sizes.tolist() == [27]
    assert contrasts[0] == pytest.approx((120.0 - 90.0) / sd, rel=1e-6)


def test_fitted_model_is_the_contrasts_mean_sd_and_range():
    model = ls.fit_contrast_model([0.5, 1.0, 1.5, 3.0])
    assert (model.mean, model.low, model.high, model.n_lesions) == (1.5, 0.5, 3.0, 4)
    assert model.sd == pytest.approx(np.std([0.5, 1.0, 1.5, 3.0]))
    draws = model.draw(np.random.default_rng(0), 20000)
    assert draws.min() >= 0.5 and draws.max() <= 3.0
    a, b = (0.5 - 1.5) / model.sd, (3.0 - 1.5) / model.sd
    assert draws.mean() == pytest.approx(truncnorm.mean(a, b, loc=1.5, scale=model.sd), abs=0.02)
    assert ls.fit_contrast_model([-0.4, 1.0]).low > 0  # never darker than the surroundings


def test_the_size_model_is_the_least_squares_line_on_log_size():
    sizes = [10, 100, 1000, 10000]
    contrasts = [1 + 0.5 * np.log10(s) for s in sizes]  # 1.5, 2.0, 2.5, 3.0: on the line exactly
    model = ls.fit_contrast_model(contrasts, sizes)
    assert model.slope == pytest.approx(0.5) and model.log_size_mean == pytest.approx(2.5)
    assert model.mean == pytest.approx(2.25) and model.sd == pytest.approx(0.0, abs=1e-12)
    assert model.log_size_range == pytest.approx((1.0, 4.0)) and (model.low, model.high) == (1.5, 3.0)
    # on the line, and sizes outside the fitted ones clipped to them (no extrapolation)
    assert model.location([100, 1, 10**6]) == pytest.approx([2.0, 1.5, 3.0])
    assert model.draw(np.random.default_rng(0), 3, [100, 1, 10**6]) == pytest.approx([2.0, 1.5, 3.0])
    assert ls.fit_contrast_model(contrasts).slope == 0  # without sizes: one normal for every size


def test_size_model_draws_follow_the_line_within_the_truncation():
    model = ls.ContrastModel(mean=1.5, sd=0.3, low=0.2, high=3.5, n_lesions=40, slope=0.4, log_size_mean=2.0,
                             log_size_range=(1.0, 3.0))
    rng = np.random.default_rng(4)
    for size, loc in ((10, 1.1), (1000, 1.9)):  # 1.5 + 0.4 x (1 - 2), 1.5 + 0.4 x (3 - 2)
        draws = model.draw(rng, 20000, np.full(20000, size))
        a, b = (0.2 - loc) / 0.3, (3.5 - loc) / 0.3
        assert draws.min() >= 0.2 and draws.max() <= 3.5
        assert draws.mean() == pytest.approx(truncnorm.mean(a, b, loc=loc, scale=0.3), abs=0.01)


# === Painting one volume ===


@pytest.fixture
def scan():
    """A noisy flat brain (a ball) with CSF (a dark ball inside) and one real lesion."""
    rng = np.random.default_rng(1)
    brain = ball(SHAPE, (20, 20, 20), 17)
    flair = np.where(brain, 100.0 + 5.0 * rng.standard_normal(SHAPE), 0.0).astype(np.float32)
    csf = ball(SHAPE, (20, 20, 28), 3)
    flair[csf] = 20.0
    lesion = np.zeros(SHAPE, bool)
    lesion[20:23, 10:13, 20:23] = True
    flair[lesion] += 10.0
    flair[0, 0, 0] = 300.0  # outside the brain: painting is capped at the scan's maximum, kept out of the way
    return flair, lesion, brain, csf


def test_painted_voxels_are_the_donor_on_tissue_and_the_only_voxels_above_half_strength(scan):
    flair, lesion, brain, csf = scan
    donor = ball(SHAPE, (20, 20, 22), 12)  # crosses the CSF, the real lesion and the brain's edge... nearly
    donor |= ball(SHAPE, (20, 38, 20), 4)  # and reaches out of the brain
    model = ls.ContrastModel(mean=1.5, sd=0.3, low=1.0, high=2.0, n_lesions=10)
    out, painted, contrasts = ls.paint(flair, lesion, donor, model, np.random.default_rng(0), brain=brain)
    assert np.array_equal(painted, donor & ls.paintable_tissue(flair, brain, lesion))
    assert not (painted & (lesion | csf | ~brain)).any()
    change = out - flair
    assert (change >= 0).all()
    assert np.array_equal(out[~brain], flair[~brain])  # nothing lands outside the brain
    labels, n = ndimage.label(painted, ls.CONNECTIVITY)
    assert n == contrasts.size >= 1
    # each lesion's weakest painted voxel is stronger than any partial-volume voxel around it (alpha > 0.5
    # inside, < 0.5 outside), so the changed voxels at over half strength are exactly the new label
    near = ndimage.distance_transform_edt(labels == 0, return_indices=True)[1]
    nearest = labels[tuple(near)]
    for k in range(1, n + 1):
        inside = change[labels == k]
        outside = change[(nearest == k) & ~painted]
        assert inside.min() > outside.max()


def test_painted_lesion_statistics_match_the_model():
    rng = np.random.default_rng(2)
    brain = np.zeros(SHAPE, bool)
    brain[2:38, 2:38, 2:38] = True
    # two tissues (90 and 110, split at x = 20: brain SD about 10) with noise of SD 2; every lesion and its
    # ring lie in one tissue
    flair = np.where(np.arange(40)[:, None, None] < 20, 90.0, 110.0) + 2.0 * rng.standard_normal(SHAPE)
    flair = np.where(brain, flair, 0.0).astype(np.float32)
    flair[0, 0, 0] = 300.0  # outside the brain: painting is capped at the scan's maximum, kept out of the way
    donor = cubes(SHAPE)
    model = ls.ContrastModel(mean=1.2, sd=0.6, low=0.3, high=2.8, n_lesions=50)
    no_lesion = np.zeros(SHAPE, bool)
    out, painted, drawn = ls.paint(flair, no_lesion, donor, model, np.random.default_rng(3), brain=brain)
    assert drawn.size == 64 and drawn.min() >= 0.3 and drawn.max() <= 2.8
    measured, sizes = ls.lesion_contrasts(out, painted, brain)
    # measured in the painted scan's own units (its brain SD, a little above the noise SD) against the
    # drawn ones in the unpainted scan's: the ratio of the two SDs is the expected scale
    scale = ls.brain_statistics(flair, brain, painted)[1] / ls.brain_statistics(out, brain, painted)[1]
    assert sizes.tolist() == [27] * 64
    assert np.corrcoef(measured, drawn)[0, 1] > 0.95
    assert np.abs(measured - drawn * scale).mean() < 0.1
    a, b = (0.3 - 1.2) / 0.6, (2.8 - 1.2) / 0.6
    assert measured.mean() == pytest.approx(truncnorm.mean(a, b, loc=1.2, scale=0.6) * scale, abs=0.2)


def test_painting_with_the_size_model_gives_each_lesion_its_size_s_contrast(scan):
    flair, lesion, brain, _ = scan
    donor = ball(SHAPE, (20, 26, 14), 4)  # a large lesion
    donor[12, 20, 28] = True  # and a one-voxel one
    model = ls.ContrastModel(mean=1.0, sd=0.0, low=0.1, high=5.0, n_lesions=2, slope=1.0, log_size_mean=0.0,
                             log_size_range=(0.0, 4.0))
    _, painted, contrasts = ls.paint(flair, lesion, donor, model, np.random.default_rng(0), brain=brain)
    labels, n = ndimage.label(painted, ls.CONNECTIVITY)
    sizes = np.bincount(labels.ravel())[1:]
    assert n == 2 and sorted(sizes)[0] == 1
    assert contrasts == pytest.approx(1.0 + np.log10(sizes))  # the line, in component order


def test_the_same_seed_paints_the_same_volume(scan):
    flair, lesion, brain, _ = scan
    donor = cubes(SHAPE, at=(8, 16, 24))
    model = ls.ContrastModel(1.0, 0.5, 0.2, 2.0, 10)
    first = ls.paint(flair, lesion, donor, model, np.random.default_rng([5, 1]), brain=brain)
    again = ls.paint(flair, lesion, donor, model, np.random.default_rng([5, 1]), brain=brain)
    other = ls.paint(flair, lesion, donor, model, np.random.default_rng([6, 1]), brain=brain)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


def test_donor_masks_are_resampled_through_the_affines(tmp_path):
    """A donor on a 2 mm LAS grid lands on the world position it marks, in the subject's 1 mm RAS grid."""
    subject = nib.Nifti1Image(np.ones((20, 20, 20), np.float32), np.diag([1.0, 1.0, 1.0, 1.0]))
    nib.save(subject, str(tmp_path / "flair.nii.gz"))
    volume = load_volume(tmp_path / "flair.nii.gz")
    las = np.array([[-2.0, 0, 0, 18.0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
    donor = np.zeros((10, 10, 10), np.uint8)
    donor[2, 3, 4] = 1  # world (18 - 4, 6, 8) = (14, 6, 8)
    moved = ls.donor_on_grid(nib.Nifti1Image(donor, las), volume)
    # nearest neighbour: subject voxel (x, y, z) reads donor voxel round((18 - x) / 2), round(y / 2),
    # round(z / 2), halves rounded up: x 14 and 15 (2 and 1.5), y 5 and 6 (2.5 and 3), z 7 and 8 (3.5 and 4)
    assert moved.sum() == 8
    assert [sorted(set(a)) for a in np.argwhere(moved).T] == [[14, 15], [5, 6], [7, 8]]


def test_white_matter_is_the_brightest_t1_class():
    rng = np.random.default_rng(4)
    brain = ball(SHAPE, (20, 20, 20), 17)
    # about the proportions of a brain: CSF inside, a white-matter shell, grey matter outside
    truth = ball(SHAPE, (20, 20, 20), 13) & ~ball(SHAPE, (20, 20, 20), 7)
    t1 = np.where(brain, 250.0, 0.0)  # grey matter
    t1[ball(SHAPE, (20, 20, 20), 7)] = 120.0  # CSF
    t1[truth] = 380.0
    t1 = (t1 + np.where(brain, 12.0 * rng.standard_normal(SHAPE), 0.0)).astype(np.float32)
    wm = ls.white_matter(t1, brain)
    assert (wm == truth).mean() > 0.999


def test_painting_can_be_kept_to_a_region(scan):
    flair, lesion, brain, _ = scan
    donor = ball(SHAPE, (20, 20, 20), 14)
    region = np.zeros(SHAPE, bool)
    region[:, :20] = True
    model = ls.ContrastModel(1.0, 0.3, 0.5, 1.5, 5)
    out, painted, _ = ls.paint(flair, lesion, donor, model, np.random.default_rng(0), brain=brain, region=region)
    assert painted.any() and not painted[:, 20:].any()
    assert np.array_equal(painted, donor & ls.paintable_tissue(flair, brain, lesion) & region)


# === A run's painted copies ===


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    sites = [dataclasses.replace(s, voxel_size=(1.8, 1.8, 5.0), shape=(64, 72, 24)) for s in SITE_PRESETS[:2]]
    make_cohort(root, subjects=4, sites=2, seed=0, site_params=sites)
    subjects = load_dataset(root)
    donors = root / "donors"
    donors.mkdir()
    for i, s in enumerate(subjects[:3]):  # the cohort's own labels, shifted, on their own grids
        img = nib.load(str(s.label))
        data = np.roll(np.asarray(img.dataobj) == 1, 3 * (i + 1), axis=1).astype(np.uint8)
        nib.save(nib.Nifti1Image(data, img.affine), str(donors / f"donor{i}.nii.gz"))
    return subjects, donors


def synth_cfg(donors, **synthesis):
    return config_from_dict({
        "data": {"cache": "memory", "sampling": "patches", "patch_size": [32, 32], "normalisation": "zscore",
                 "lesion_synthesis": {"enabled": True, "masks": [str(donors)], "volumes": 3, **synthesis}},
        "model": {"input_size": [64, 64], "depth": 3}, "train": {"batch_size": 8, "seed": 0},
    })


def test_copies_are_planned_round_robin_with_every_donor_before_repeats(cohort):
    _, donors = cohort
    cfg = synth_cfg(donors, volumes=7)
    files = ls.donor_files(cfg)
    plan = ls.plan(cfg, ["a", "b"], files)
    assert [s for s, _ in plan] == ["a", "b", "a", "b", "a", "b", "a"]
    assert sorted(plan[i][1].name for i in range(3)) == ["donor0.nii.gz", "donor1.nii.gz", "donor2.nii.gz"]
    assert plan == ls.plan(cfg, ["a", "b"], files)


def test_painted_copies_add_exactly_the_painted_voxels_to_the_label(cohort):
    subjects, donors = cohort
    cfg = synth_cfg(donors)
    train = subjects[:2]
    cache = MemoryCache()
    from wmhkeras.training.cohort import check_cohort

    real = check_cohort(cfg, subjects, Split(train=tuple(s.subject for s in train)), cache=cache)
    records, report = ls.synthesise(cfg, train, cache)
    assert [r.painted for r in records] == [True] * 3
    assert report["model"]["n_lesions"] >= 1 and len(report["copies"]) == 3
    for record, info in zip(records, report["copies"], strict=True):
        source = real[info["subject"]]
        assert record.subject == info["id"] and record.x_shape == source.x_shape
        added = np.stack([(cache.read_labels(record.subject, k) & LESION_BIT) > 0 for k in range(record.x_shape[0])])
        before = np.stack([(cache.read_labels(source.subject, k) & LESION_BIT) > 0 for k in range(source.x_shape[0])])
        assert (added | before).sum() > before.sum() and (added >= before).all()  # lesions only added
        # the image changed where lesions were painted, and only in the brain
        x_new = np.stack([cache.read(record.subject, k)[0] for k in range(record.x_shape[0])])
        x_old = np.stack([cache.read(source.subject, k)[0] for k in range(source.x_shape[0])])
        brain = np.stack([cache.read_labels(source.subject, k) & 2 > 0 for k in range(source.x_shape[0])])
        new = added & ~before
        assert (np.abs(x_new - x_old)[..., 0][new] > 1e-3).mean() > 0.9
        # Away from the painted lesions only the z-scoring moves (the brain's mean and SD include the
        # painted lesions): there x_new = a * x_old + b. Beyond two voxels of a painted lesion (its
        # partial-volume edge) nothing else changed.
        near = ndimage.binary_dilation(new, ls.CONNECTIVITY, iterations=2)
        far = brain & ~near
        a, b = np.polyfit(x_old[..., 0][far], x_new[..., 0][far], 1)
        residual = np.abs(x_new[..., 0] - (a * x_old[..., 0] + b))
        assert residual[brain & ~near].max() < 1e-3
        assert residual[new].min() > 1e-3
    again, _ = ls.synthesise(cfg, train, MemoryCache())  # a fresh cache: same seed, same copies
    assert [r.lesion.tolist() for r in again] == [r.lesion.tolist() for r in records]


def test_training_data_with_synthesis_draws_painted_lesions_and_real_background(cohort):
    subjects, donors = cohort
    cfg = synth_cfg(donors, share=0.5)
    split = Split(train=tuple(s.subject for s in subjects[:2]), validation=(subjects[2].subject,))
    data = build_datasets(cfg, subjects, split)
    assert data.stats["painted_volumes"] == 3 and data.synthesis["share"] == 0.5
    assert len(data.preview[0]) > 1  # real validation slices and painted ones
    # the sampler over the same records: painted only for lesion samples, at the configured share
    cache = MemoryCache()
    from wmhkeras.training.cohort import check_cohort

    records = check_cohort(cfg, subjects, split, cache=cache)
    painted, _ = ls.synthesise(cfg, [s for s in subjects if s.subject in split.train], cache)
    sampler = Sampler(cfg, cache, [records[s] for s in split.train] + painted, seed=0)
    counts = np.zeros(4, int)
    for b in range(300):
        category, rec, *_ = sampler.plan(b)
        counts += np.bincount(category, minlength=4)
        assert (category == _OTHER).any()
        assert all(sampler.records[r].painted == (c == _PAINTED) for c, r in zip(category, rec, strict=True))
    lesion_samples = counts[0] + counts[_PAINTED]
    assert counts[_PAINTED] / lesion_samples == pytest.approx(0.5, abs=0.05)


def test_hard_negatives_come_from_the_real_scans_never_the_painted_copies(cohort):
    subjects, donors = cohort
    cfg = synth_cfg(donors, share=0.5)
    cfg.data.hard_negatives.share = 1.0
    split = Split(train=tuple(s.subject for s in subjects[:2]))
    cache = MemoryCache()
    from wmhkeras.training.cohort import check_cohort

    records = check_cohort(cfg, subjects, split, cache=cache)
    painted, _ = ls.synthesise(cfg, [s for s in subjects if s.subject in split.train], cache)
    assert all(r.hard.sum() > 0 for r in painted)  # the copies hold bright tissue too ...
    sampler = Sampler(cfg, cache, [records[s] for s in split.train] + painted, seed=0)
    hard = 0
    for b in range(100):
        category, rec, *_ = sampler.plan(b)
        assert not (category == _OTHER).any()  # share 1: every lesion-free patch is a hard negative ...
        hard += int((category == 4).sum())
        assert not any(sampler.records[r].painted for r in rec[category == 4])  # ... from a real scan
    assert hard > 100


def test_bad_donor_settings_are_refused_before_work(cohort, tmp_path):
    _, donors = cohort
    with pytest.raises(ConfigError, match="data.lesion_synthesis.masks"):
        config_from_dict({"data": {"lesion_synthesis": {"enabled": True}}})
    with pytest.raises(ConfigError, match="data.lesion_fraction"):
        config_from_dict({"data": {"lesion_fraction": None, "lesion_synthesis": {"enabled": True, "masks": ["x"]}}})
    with pytest.raises(InputError, match="neither a folder"):
        ls.donor_files(synth_cfg(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .nii"):
        ls.donor_files(synth_cfg(tmp_path / "empty"))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        ls.donor_files(synth_cfg(tmp_path / "broken"))
    subjects, _ = cohort
    no_t1 = [dataclasses.replace(s, t1=None) for s in subjects[:2]]
    with pytest.raises(InputError, match="where=tissue"):
        ls.check_inputs(synth_cfg(donors), no_t1)
    assert ls.check_inputs(synth_cfg(donors, where="tissue"), no_t1) == ls.donor_files(synth_cfg(donors))


def test_white_matter_painting_stays_near_the_t1_white_matter(cohort, monkeypatch):
    subjects, donors = cohort
    monkeypatch.setattr(ls, "WHITE_MATTER_MARGIN", 0)  # the synthetic lesions all lie within 2 voxels of it
    cfg = synth_cfg(donors, volumes=2)
    cache = MemoryCache()
    train = subjects[:2]
    from wmhkeras.training.cohort import check_cohort

    real = check_cohort(cfg, subjects, Split(train=tuple(s.subject for s in train)), cache=cache)
    records, report = ls.synthesise(cfg, train, cache)
    _, tissue_report = ls.synthesise(synth_cfg(donors, volumes=2, where="tissue"), train, MemoryCache())
    assert report["where"] == "white_matter" and tissue_report["where"] == "tissue"
    # the same donors and contrasts, painted into less room: only the T1's white matter
    assert [c["donor"] for c in report["copies"]] == [c["donor"] for c in tissue_report["copies"]]
    assert 0 < sum(c["voxels"] for c in report["copies"]) < sum(c["voxels"] for c in tissue_report["copies"])
    for record, info in zip(records, report["copies"], strict=True):
        subject = next(s for s in train if s.subject == info["subject"])
        region = ls.paint_region(cfg, subject, load_volume(subject.flair))
        labels = lambda sid, n: np.stack([(cache.read_labels(sid, k) & LESION_BIT) > 0 for k in range(n)])  # noqa: E731
        added = labels(record.subject, record.x_shape[0]) & ~labels(subject.subject, real[subject.subject].x_shape[0])
        assert added.any() and not (added & ~np.moveaxis(region, 2, 0)).any()
