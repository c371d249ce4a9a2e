"""Subject-level train / validation / hold-out splits, stratified by site.

Mac et al. (MIDL 2020, section 3.1) split the 60 MICCAI 2017 WMH subjects 48 / 6 / 6, balanced across
the three sites. :func:`make_split` generalises that: each site's subjects are shuffled with the seed
and divided by the fractions with largest-remainder (Hamilton) rounding, so 20 subjects of a site and
``(0.8, 0.1, 0.1)`` give exactly 16 / 2 / 2. The cohort totals are kept equal to the largest-remainder
rounding of the whole cohort (:func:`allocate`), so small sites do not all round the same way: three
sites of five give 12 / 2 / 1 in total, not 12 / 3 / 0, and three sites of two give 5 / 1 / 0, not 6 / 0 / 0.

A split is a :class:`wmhkeras.io.run_folder.Split`, saved as ``split.json`` in every run folder
(``Split.write``) so that a run can be reproduced and the hold-out subjects evaluated later
(:func:`load_split` reads it back and checks it against the cohort). The experiment's folds are built
here too: site-stratified K-fold cross-validation (:func:`kfold_splits`) and leave-one-site-out
(:func:`leave_one_site_out_splits`), one :class:`Split` per fold (:func:`make_splits`). No TensorFlow here.

The unit of every split is the participant (``Subject.group``): the images of one person (BIDS sessions,
a manifest's ``participant`` column) always land in one set, so a model is never tested on a scan of
someone it was trained on. Without participants each subject is its own unit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wmhkeras.config import Config, ExperimentConfig
from wmhkeras.data.datasets import Subject
from wmhkeras.errors import InputError
from wmhkeras.io.run_folder import Split

log = logging.getLogger(__name__)

#: Keys of a split, in order (train, validation, hold-out).
SPLIT_KEYS = Split.KEYS


def _largest_remainder(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Hamilton rounding of ``n * fractions`` (ties to the earlier set)."""
    quotas = n * np.asarray(fractions, dtype=float)
    counts = np.floor(quotas + 1e-9).astype(int)
    order = sorted(range(len(quotas)), key=lambda i: (-round(quotas[i] - counts[i], 9), i))
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def allocate(site_sizes: Sequence[int], fractions: Sequence[float]) -> np.ndarray:
    """Counts ``(sites, 3)``: each site's largest-remainder rounding, cohort totals kept exact.

    Each site first gets the floors of its quotas ``size * fraction``. Its remaining subjects go to
    the sets with the largest remainders, in order, as long as the set is below its cohort-wide count
    (the largest-remainder rounding of the whole cohort); so sites of 20 at (0.8, 0.1, 0.1) give exactly
    16 / 2 / 2, and small sites cannot all round the same way (three sites of two give 5 / 1 / 0 in all,
    not 6 / 0 / 0).
    """
    sizes = np.asarray(site_sizes, dtype=int)
    quotas = np.outer(sizes, np.asarray(fractions, dtype=float))
    counts = np.floor(quotas + 1e-9).astype(int)
    remainders = quotas - counts
    left = sizes - counts.sum(axis=1)
    deficit = _largest_remainder(int(sizes.sum()), fractions) - counts.sum(axis=0)
    pairs = sorted(np.ndindex(*counts.shape), key=lambda p: (-round(remainders[p], 9), p))
    for site, key in pairs:
        if left[site] > 0 and deficit[key] > 0:
            counts[site, key] += 1
            left[site] -= 1
            deficit[key] -= 1
    for site in np.flatnonzero(left):  # rare dead ends: any set still short of its cohort count
        for key in np.argsort(-deficit, kind="stable"):
            take = min(left[site], deficit[key])
            counts[site, key] += take
            left[site] -= take
            deficit[key] -= take
    return counts


def make_split(subjects: list[Subject], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> Split:
    """Split subjects into train / validation / hold-out, stratified by site.

    Args:
        subjects: the cohort (ids must be unique).
        fractions: ``(train, validation, holdout)``, non-negative, summing to 1.
        seed: shuffles each site's subjects (sites in sorted order, ids sorted before shuffling, so the
            split does not depend on the order of the manifest).

    Returns:
        a :class:`Split` of subject ids, each set sorted by site then shuffled order.

    Raises:
        InputError: bad fractions, duplicate ids, or too few subjects for a non-empty training set and,
            when its fraction is above 0, a non-empty validation set (the message gives the counts).
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise InputError(f"split fractions {list(fractions)}: use three non-negative fractions [train, validation, "
                         "hold-out] summing to 1, train > 0")
    ids = [s.subject for s in subjects]
    if len(set(ids)) != len(ids):
        raise InputError("split: subject ids must be unique; found duplicates "
                         f"{sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    units = _units(subjects)
    by_site = _units_by_site(units)

    rng = np.random.default_rng(seed)
    sites = sorted(by_site)
    counts = allocate([len(by_site[site]) for site in sites], fractions)
    split = {key: [] for key in SPLIT_KEYS}
    for site, site_counts in zip(sites, counts, strict=True):
        members = sorted(by_site[site])
        rng.shuffle(members)
        start = 0
        for key, count in zip(SPLIT_KEYS, site_counts, strict=True):
            split[key].extend(s.subject for unit in members[start:start + count] for s in units[unit])
            start += count
        log.debug("site %s: %d units -> %s", site, len(members), dict(zip(SPLIT_KEYS, site_counts.tolist(), strict=True)))
    split = Split(**split)
    _check_sizes(split, fractions, len(subjects))
    log.info("split of %d subjects over %d sites: %s", len(subjects), len(by_site),
             ", ".join(f"{k} {v}" for k, v in split.counts().items()))
    return split


def _units(subjects: list[Subject]) -> dict[str, list[Subject]]:
    """``{unit: its subjects sorted by id}``: a unit is a participant (``Subject.group``); its site is that
    of its first image."""
    units: dict[str, list[Subject]] = {}
    for s in subjects:
        units.setdefault(s.group, []).append(s)
    return {u: sorted(members, key=lambda s: s.subject) for u, members in units.items()}


def _units_by_site(units: dict[str, list[Subject]]) -> dict[str, list[str]]:
    """``{site: its unit ids}``; a unit's site is that of its first image."""
    by_site: dict[str, list[str]] = {}
    for unit, members in units.items():
        by_site.setdefault(members[0].site, []).append(unit)
    return by_site


def _check_sizes(split: Split, fractions: Sequence[float] | None, total: int) -> None:
    counts = ", ".join(f"{k} {v}" for k, v in split.counts().items())
    if not split.train:
        raise InputError(f"split: {total} subjects give an empty training set ({counts}); add subjects")
    if fractions is not None and fractions[1] > 0 and not split.validation:
        raise InputError(
            f"split: {total} subjects are too few for validation fraction {fractions[1]:g} ({counts}); "
            "add subjects or set data.split to [1, 0, 0]"
        )


def load_split(path: str | Path, subjects: list[Subject]) -> Split:
    """Read a split (``Split.read``) and check it against the cohort (:func:`check_split`).

    Raises:
        InputError: the file is missing or malformed, an id is not in ``subjects``, an id is listed in
            two sets, or the training set is empty.
    """
    return check_split(Split.read(path), subjects, path)


def check_split(split: Split | dict, subjects: list[Subject], source="split") -> Split:
    """Check a split (or a mapping of ``train``, ``validation``, ``holdout`` id lists) against the cohort.

    Raises:
        InputError: malformed, an id not in ``subjects`` or in two sets, or an empty training set.
    """
    if not isinstance(split, Split):
        split = Split.from_dict(split, source)
    known = {s.subject for s in subjects}
    for key in SPLIT_KEYS:
        for sid in getattr(split, key):
            if sid not in known:
                raise InputError(f"{source}: {key} lists subject {sid!r}, which is not in the dataset "
                                 f"({len(known)} subjects)")
    _check_sizes(split, None, len(split.subjects))
    where = {sid: key for key in SPLIT_KEYS for sid in getattr(split, key)}
    for unit, members in _units([s for s in subjects if s.subject in where]).items():
        sets = sorted({where[s.subject] for s in members})
        if len(sets) > 1:
            log.warning("%s: participant %s has images in %s (%s): results on them are not independent of training",
                        source, unit, " and ".join(sets), ", ".join(s.subject for s in members))
    return split


# === Experiment folds: one split per fold ===


def _by_site(subjects: list[Subject]) -> dict[str, list[Subject]]:
    sites: dict[str, list[Subject]] = {}
    for s in subjects:
        sites.setdefault(s.site, []).append(s)
    return {site: sites[site] for site in sorted(sites)}


def _train_validation(subjects: list[Subject], test: Sequence[str], fractions, seed: int, fold: str) -> Split:
    """A split whose hold-out is ``test``; validation drawn from the rest, stratified by site.

    The rest is divided by the train and validation fractions of ``data.split``, renormalised to sum to 1.
    """
    train_fraction, validation_fraction = float(fractions[0]), float(fractions[1])
    total = train_fraction + validation_fraction
    held = set(test)
    rest = [s for s in subjects if s.subject not in held]
    if not rest:
        raise InputError(f"{fold}: no subject is left for training once its {len(held)} test subject(s) are held out")
    try:
        split = make_split(rest, (train_fraction / total, validation_fraction / total, 0.0), seed)
    except InputError as exc:
        raise InputError(f"{fold}: dividing the {len(rest)} non-test subjects by the train : validation ratio "
                         f"of data.split {list(fractions)} failed: {exc}") from None
    return dataclasses.replace(split, holdout=tuple(test))


def kfold_splits(subjects: list[Subject], k: int, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, Split]:
    """Site-stratified K-fold cross-validation: every subject is in exactly one test fold.

    Each site's participants (ids sorted, then shuffled with ``seed``) are dealt to the folds in turn, the deal
    continuing from site to site, so every fold holds about ``1/k`` of each site and fold sizes differ by at
    most one. The rest of each fold is split into train and validation, stratified by site, with the
    train : validation ratio of ``fractions`` (the hold-out fraction is not used: the fold is the test set).

    Args:
        subjects: the cohort (unique ids).
        k: number of folds, ``2 <= k <= len(subjects)``.
        fractions: ``data.split`` ``(train, validation, holdout)``.
        seed: shuffles the subjects of each site and seeds each fold's validation split.

    Returns:
        ``{"fold1": Split, ...}`` (``holdout`` = the test fold).
    """
    units = _units(subjects)
    if not 2 <= k <= len(units):
        what = "participants" if len(units) < len(subjects) else "subjects"
        raise InputError(f"folds: {k} folds need 2 <= folds <= the {len(units)} {what} of the cohort")
    by_site = _units_by_site(units)
    rng = np.random.default_rng(seed)
    tests: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for site in sorted(by_site):
        ids = sorted(by_site[site])
        rng.shuffle(ids)
        for unit in ids:
            tests[dealt % k].extend(s.subject for s in units[unit])
            dealt += 1
    return {f"fold{i + 1}": _train_validation(subjects, test, fractions, seed + i, f"fold{i + 1}")
            for i, test in enumerate(tests)}


def leave_one_site_out_splits(subjects: list[Subject], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, Split]:
    """One fold per site: test on all of its subjects, train and validate on the other sites.

    Returns:
        ``{"site-<name>": Split}`` in site order (``holdout`` = that site).
    """
    sites = _by_site(subjects)
    if len(sites) < 2:
        raise InputError(f"leave-one-site-out needs subjects from at least 2 sites; the cohort has {list(sites)}")
    return {
        f"site-{site}": _train_validation(subjects, sorted(s.subject for s in members), fractions, seed, f"site-{site}")
        for site, members in sites.items()
    }


def make_splits(subjects: list[Subject], cfg: Config, exp: ExperimentConfig) -> dict[str, Split]:
    """The split of every fold of an experiment: ``experiment.folds`` folds (:func:`kfold_splits`), one
    per site (:func:`leave_one_site_out_splits`), or one fold, ``holdout``, for the paper's protocol
    (:func:`make_split` with ``data.split``)."""
    if exp.mode == "kfold":
        return kfold_splits(subjects, exp.folds, cfg.data.split, exp.split_seed)
    if exp.mode == "loso":
        return leave_one_site_out_splits(subjects, cfg.data.split, exp.split_seed)
    return {"holdout": make_split(subjects, cfg.data.split, exp.split_seed)}
