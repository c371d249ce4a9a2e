"""Subject-level train / validation / hold-out splits, stratified by site.

Mac et al. (MIDL 2020, section 3.1) split the 60 MICCAI 2017 WMH subjects 48 / 6 / 6, balanced across
the three sites. :func:`make_split` generalises that: each site's subjects are shuffled with the seed
and divided by the fractions with largest-remainder (Hamilton) rounding, so 20 subjects of a site and
``(0.8, 0.1, 0.1)`` give exactly 16 / 2 / 2. The cohort totals are kept equal to the largest-remainder
rounding of the whole cohort (:func:`allocate`), so small sites do not all round the same way: three
sites of five give 12 / 2 / 1 in total, not 12 / 3 / 0, and three sites of two give 5 / 1 / 0, not 6 / 0 / 0.

A split is a :class:`wmhkeras.io.run_folder.Split`, saved as ``split.json`` in every run folder
(``Split.write``) so that a run can be reproduced and the hold-out subjects evaluated later
(:func:`load_split` reads it back and checks it against the cohort). No TensorFlow here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
    by_site: dict[str, list[str]] = {}
    for s in subjects:
        by_site.setdefault(s.site, []).append(s.subject)

    rng = np.random.default_rng(seed)
    sites = sorted(by_site)
    counts = allocate([len(by_site[site]) for site in sites], fractions)
    split = {key: [] for key in SPLIT_KEYS}
    for site, site_counts in zip(sites, counts, strict=True):
        members = sorted(by_site[site])
        rng.shuffle(members)
        start = 0
        for key, count in zip(SPLIT_KEYS, site_counts, strict=True):
            split[key].extend(members[start:start + count])
            start += count
        log.debug("site %s: %d subjects -> %s", site, len(members), dict(zip(SPLIT_KEYS, site_counts.tolist(), strict=True)))
    split = Split(**split)
    _check_sizes(split, fractions, len(subjects))
    log.info("split of %d subjects over %d sites: %s", len(subjects), len(by_site),
             ", ".join(f"{k} {v}" for k, v in split.counts().items()))
    return split


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
    return split
