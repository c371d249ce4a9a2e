"""Subject splits: stratified by site, largest-remainder counts, reproducible, saved and checked."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from wmhkeras.config import ExperimentConfig, load_config
from wmhkeras.data.datasets import Subject
from wmhkeras.data.splits import allocate, kfold_splits, leave_one_site_out_splits, load_split, make_split, make_splits
from wmhkeras.errors import InputError


def cohort(sizes: dict[str, int]) -> list[Subject]:
    return [Subject(f"{site}-{i:02d}", site, Path(f"/none/{site}/{i}.nii.gz")) for site, n in sizes.items() for i in range(n)]


def site_of(sid: str) -> str:
    return sid.split("-")[0]


def test_paper_split_is_48_6_6_with_16_2_2_per_site():
    subjects = cohort({"utrecht": 20, "singapore": 20, "amsterdam": 20})
    split = make_split(subjects, (0.8, 0.1, 0.1), seed=0)
    assert [len(getattr(split, k)) for k in ("train", "validation", "holdout")] == [48, 6, 6]
    for key, per_site in (("train", 16), ("validation", 2), ("holdout", 2)):
        assert Counter(site_of(s) for s in getattr(split, key)) == {"utrecht": per_site, "singapore": per_site, "amsterdam": per_site}
    everyone = split.train + split.validation + split.holdout
    assert sorted(everyone) == sorted(s.subject for s in subjects)  # a partition: no loss, no overlap


def test_split_is_seeded_and_ignores_manifest_order():
    subjects = cohort({"a": 10, "b": 10})
    first = make_split(subjects, (0.6, 0.2, 0.2), seed=3)
    assert make_split(list(reversed(subjects)), (0.6, 0.2, 0.2), seed=3) == first
    assert make_split(subjects, (0.6, 0.2, 0.2), seed=4) != first


def test_small_sites_keep_the_cohort_totals():
    # 5 per site at (0.8, 0.1, 0.1): quotas 4 / 0.5 / 0.5 in every site; the cohort's own rounding of
    # 12 / 1.5 / 1.5 is 12 / 2 / 1, so by hand sites a and b give one to validation, site c to hold-out.
    split = make_split(cohort({"a": 5, "b": 5, "c": 5}), (0.8, 0.1, 0.1))
    assert [len(getattr(split, k)) for k in ("train", "validation", "holdout")] == [12, 2, 1]
    assert sorted(site_of(s) for s in split.holdout) == ["c"]
    # 2 per site: every site alone would round to 2 / 0 / 0; the cohort's 4.8 / 0.6 / 0.6 gives 5 / 1 / 0.
    np.testing.assert_array_equal(allocate([2, 2, 2], (0.8, 0.1, 0.1)), [[2, 0, 0], [2, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(allocate([20, 20, 20], (0.8, 0.1, 0.1)), [[16, 2, 2]] * 3)
    # 7 and 3 at (0.6, 0.2, 0.2): floors 4/1/1 and 1/0/0; cohort 6/2/2. Remainders, largest first: site 2
    # train 0.8 -> train, site 2 validation 0.6 -> validation, site 1 hold-out 0.4 -> hold-out.
    np.testing.assert_array_equal(allocate([7, 3], (0.6, 0.2, 0.2)), [[4, 1, 2], [2, 1, 0]])


def test_too_small_or_bad_splits_raise_with_counts():
    with pytest.raises(InputError, match=r"too few for validation fraction 0.1 \(train 1, validation 0, holdout 0\)"):
        make_split(cohort({"a": 1}), (0.8, 0.1, 0.1))
    with pytest.raises(InputError, match="empty training set"):
        make_split([], (0.8, 0.1, 0.1))
    with pytest.raises(InputError, match="summing to 1"):
        make_split(cohort({"a": 4}), (0.5, 0.1, 0.1))
    assert len(make_split(cohort({"a": 1}), (1.0, 0.0, 0.0)).train) == 1  # no validation asked for


def test_save_and_load_round_trip_and_checks(tmp_path):
    subjects = cohort({"a": 6, "b": 4})
    split = make_split(subjects, (0.6, 0.2, 0.2), seed=1)
    path = split.write(tmp_path / "split.json")
    assert load_split(path, subjects) == split
    assert not list(tmp_path.glob(".tmp-*"))  # written atomically

    data = json.loads(path.read_text())
    data["holdout"].append("a-99")
    (tmp_path / "unknown.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="'a-99', which is not in the dataset"):
        load_split(tmp_path / "unknown.json", subjects)
    data = json.loads(path.read_text())
    data["holdout"].append(data["train"][0])
    (tmp_path / "twice.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="listed in both train and holdout"):
        load_split(tmp_path / "twice.json", subjects)
    with pytest.raises(InputError, match="split file not found"):
        load_split(tmp_path / "missing.json", subjects)


# === Experiment folds: k-fold, leave-one-site-out ===


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_every_subject_tested_once_and_sites_spread(k):
    subjects = cohort({"a": 7, "b": 5, "c": 4})
    folds = kfold_splits(subjects, k, fractions=(0.7, 0.2, 0.1), seed=1)
    assert list(folds) == [f"fold{i + 1}" for i in range(k)]
    tested = [sid for split in folds.values() for sid in split.holdout]
    assert sorted(tested) == sorted(s.subject for s in subjects)  # each subject in exactly one test fold
    site = {s.subject: s.site for s in subjects}
    for split in folds.values():
        train, val, test = (set(getattr(split, key)) for key in ("train", "validation", "holdout"))
        assert not (train & test) and not (val & test) and not (train & val)
        assert train | val | test == set(site)  # the rest of the cohort trains or validates
        assert val  # validation is taken from the training part
    for name in ("a", "b", "c"):  # every site is dealt evenly over the folds
        per_fold = [sum(site[s] == name for s in split.holdout) for split in folds.values()]
        assert max(per_fold) - min(per_fold) <= 1
    sizes = [len(split.holdout) for split in folds.values()]
    assert max(sizes) - min(sizes) <= 1
    assert kfold_splits(subjects, k, (0.7, 0.2, 0.1), seed=1) == folds  # seeded
    assert kfold_splits(list(reversed(subjects)), k, (0.7, 0.2, 0.1), seed=1) == folds  # order-independent


def test_kfold_needs_enough_subjects():
    with pytest.raises(InputError, match="folds: 5 folds"):
        kfold_splits(cohort({"a": 2, "b": 2}), 5)


def test_leave_one_site_out():
    subjects = cohort({"s1": 4, "s2": 5, "s3": 3})
    folds = leave_one_site_out_splits(subjects, fractions=(0.8, 0.2, 0.0), seed=0)
    assert list(folds) == ["site-s1", "site-s2", "site-s3"]
    for name, split in folds.items():
        left_out = name.removeprefix("site-")
        assert sorted(split.holdout) == sorted(s.subject for s in subjects if s.site == left_out)
        assert not any(sid.startswith(left_out) for sid in split.train + split.validation)
        assert len(split.train) + len(split.validation) + len(split.holdout) == len(subjects)
    with pytest.raises(InputError, match="at least 2 sites"):
        leave_one_site_out_splits(cohort({"only": 4}))


def test_make_splits_modes():
    subjects = cohort({"a": 10, "b": 10})
    cfg = load_config([])
    assert list(make_splits(subjects, cfg, ExperimentConfig(folds=4, split_seed=0))) == ["fold1", "fold2", "fold3", "fold4"]
    (split,) = make_splits(subjects, cfg, ExperimentConfig(split_seed=0)).values()
    assert [len(getattr(split, k)) for k in ("train", "validation", "holdout")] == [16, 2, 2]  # the paper's 48/6/6, scaled


# === Participants: one person's images (sessions) always in one set ===


def sessions(n_participants: int, per: int, site: str = "a") -> list[Subject]:
    return [Subject(f"sub-{p:02d}_ses-{s}", site, Path(f"/none/{p}-{s}.nii.gz"), participant=f"sub-{p:02d}")
            for p in range(n_participants) for s in range(per)]


def set_of(split, sid: str) -> str:
    return next(key for key in ("train", "validation", "holdout") if sid in getattr(split, key))


def test_split_keeps_each_participants_sessions_together():
    subjects = sessions(10, 3)  # 10 participants x 3 sessions
    for seed in range(5):
        split = make_split(subjects, (0.8, 0.1, 0.1), seed=seed)
        # the counts are of participants: 8 / 1 / 1 people, so 24 / 3 / 3 images
        assert [len(getattr(split, k)) for k in ("train", "validation", "holdout")] == [24, 3, 3]
        for p in range(10):
            assert len({set_of(split, f"sub-{p:02d}_ses-{s}") for s in range(3)}) == 1


def test_split_without_participants_is_unchanged_by_the_grouping():
    plain = cohort({"a": 6, "b": 5})
    # each subject its own participant: the same split as without the field
    named = [Subject(s.subject, s.site, s.flair, participant=s.subject) for s in plain]
    assert make_split(named, (0.6, 0.2, 0.2), seed=3) == make_split(plain, (0.6, 0.2, 0.2), seed=3)
    assert kfold_splits(named, 3, seed=3) == kfold_splits(plain, 3, seed=3)


def test_kfold_tests_whole_participants_and_counts_them():
    subjects = sessions(4, 2)
    folds = kfold_splits(subjects, 4, fractions=(0.7, 0.3, 0.0), seed=0)
    for split in folds.values():
        assert len(split.holdout) == 2 and len({sid.split("_")[0] for sid in split.holdout}) == 1
        for p in range(4):  # no participant straddles train / validation either
            assert len({set_of(split, f"sub-{p:02d}_ses-{s}") for s in range(2)}) == 1
    with pytest.raises(InputError, match="the 4 participants"):
        kfold_splits(subjects, 5)


def test_loaded_split_that_separates_a_participant_warns(caplog):
    subjects = sessions(3, 2)
    split = {"train": ["sub-00_ses-0", "sub-01_ses-0", "sub-01_ses-1", "sub-02_ses-0"], "validation": ["sub-02_ses-1"],
             "holdout": ["sub-00_ses-1"]}
    from wmhkeras.data.splits import check_split
    with caplog.at_level("WARNING", logger="wmhkeras.data.splits"):
        check_split(split, subjects)
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "sub-00 has images in holdout and train" in warned and "sub-02 has images in train and validation" in warned
    assert "sub-01" not in warned
