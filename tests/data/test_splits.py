"""Subject splits: stratified by site, largest-remainder counts, reproducible, saved and checked."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from wmhkeras.data.datasets import Subject
from wmhkeras.data.splits import allocate, load_split, make_split, save_split
from wmhkeras.errors import InputError


def cohort(sizes: dict[str, int]) -> list[Subject]:
    return [Subject(f"{site}-{i:02d}", site, Path(f"/none/{site}/{i}.nii.gz")) for site, n in sizes.items() for i in range(n)]


def site_of(sid: str) -> str:
    return sid.split("-")[0]


def test_paper_split_is_48_6_6_with_16_2_2_per_site():
    subjects = cohort({"utrecht": 20, "singapore": 20, "amsterdam": 20})
    split = make_split(subjects, (0.8, 0.1, 0.1), seed=0)
    assert [len(split[k]) for k in ("train", "validation", "holdout")] == [48, 6, 6]
    for key, per_site in (("train", 16), ("validation", 2), ("holdout", 2)):
        assert Counter(site_of(s) for s in split[key]) == {"utrecht": per_site, "singapore": per_site, "amsterdam": per_site}
    everyone = split["train"] + split["validation"] + split["holdout"]
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
    assert [len(split[k]) for k in ("train", "validation", "holdout")] == [12, 2, 1]
    assert sorted(site_of(s) for s in split["holdout"]) == ["c"]
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
    assert len(make_split(cohort({"a": 1}), (1.0, 0.0, 0.0))["train"]) == 1  # no validation asked for


def test_save_and_load_round_trip_and_checks(tmp_path):
    subjects = cohort({"a": 6, "b": 4})
    split = make_split(subjects, (0.6, 0.2, 0.2), seed=1)
    path = save_split(split, tmp_path / "split.json")
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
