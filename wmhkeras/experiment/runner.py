"""Experiments: the paper's comparison of losses in one call.

Mac, Moody & Khademi (MIDL 2020, sections 3.1-4) train one generator with four losses (Dice, Tversky,
Generalised Dice, Siamese content) under identical settings, split the MICCAI 2017 WMH training data
48 / 6 / 6 (train / validation / hold-out, balanced across sites), evaluate every model on the hold-out
and on an external cohort (CAIN), and report mean +- SD of the five challenge metrics (Table 1) and AVD
against positive class density (Figure 5). :func:`run_experiment` does all of that:

- one run folder per *arm* (one loss, one seed, one fold) at ``OUT/arms/<fold>/<loss>/``
  (``<loss>-seed<s>`` when several seeds are listed), written by :func:`wmhkeras.training.trainer.train`;
- one split for every arm, stratified by site, written once to ``OUT/split.json``: the paper's
  train / validation / hold-out split, site-stratified K-fold cross-validation (``folds``), or
  leave-one-site-out (``leave_one_site_out``);
- every arm's best checkpoint segments its test subjects and the external set, and is evaluated
  (:func:`wmhkeras.inference.segment.segment`, :func:`wmhkeras.evaluation.evaluate.evaluate`) into the arm folder;
- the reports: ``table.md`` / ``table.csv`` (Table 1), ``figure5.png``, ``per_subject.csv``,
  ``wilcoxon.csv`` / ``wilcoxon.md`` (paired tests of the reference loss against each other loss),
  ``config.yaml`` (the resolved experiment config), ``versions.json`` and ``experiment.json``.

An interrupted experiment continues where it stopped when run again with the same config and ``--out``:
finished arms are skipped, a half-trained arm resumes from its last checkpoint.

An experiment config is a run config (:class:`wmhkeras.config.Config`) plus an ``experiment:`` section
(:class:`ExperimentConfig`); every arm trains with the run config, ``loss.name`` set to the arm's loss and
``train.seed`` to the arm's seed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from wmhkeras.config import Config, LossConfig, config_from_dict, deep_merge, parse_override, read_yaml
from wmhkeras.config import _build as _build_section  # the same typed, validated section builder
from wmhkeras.data.datasets import Subject, check_subject, load_dataset, write_manifest
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, METRIC_KEYS
from wmhkeras.evaluation.reports import (
    PCD_BIN_EDGES,
    TABLE_HEADERS,
    describe,
    markdown_table,
    plot_avd_vs_pcd,
    summarize,
    write_csv,
    write_json,
    write_text,
)
from wmhkeras.data.splits import SPLIT_KEYS, make_split
from wmhkeras.io.files import atomic_write_json
from wmhkeras.io.provenance import package_versions, utc_now

log = logging.getLogger(__name__)

#: The loss names a run config accepts (``loss.name``).
LossName = typing.get_type_hints(LossConfig)["name"]
#: The name of the experiment section in a config file.
SECTION = "experiment"
#: Dataset keys in ``per_subject.csv``: the arm's own test subjects, and the external set.
HOLDOUT, EXTERNAL = "holdout", "external"


@dataclass
class ExperimentConfig:
    """The ``experiment:`` section: which arms to train and where to test them."""

    #: One arm per loss (``loss.name`` values), trained with otherwise identical settings.
    losses: list[LossName] = field(default_factory=lambda: ["dice", "tversky", "generalized_dice", "content"])
    #: The loss the paired tests compare every other loss with; default ``content`` if listed, else the first.
    reference: Optional[LossName] = None
    #: Training seeds: every loss is trained once per seed (``train.seed``); default ``[train.seed]``.
    seeds: Optional[list[int]] = None
    #: Seed of the subject split (and fold assignment); default ``train.seed``.
    split_seed: Optional[int] = None
    #: Site-stratified K-fold cross-validation instead of one hold-out split (K >= 2).
    folds: Optional[int] = None
    #: Train on all sites but one and test on it, for each site.
    leave_one_site_out: bool = False
    #: External test set: a manifest CSV, a folder with ``manifest.csv`` or a MICCAI-layout folder.
    external: Optional[str] = None
    #: Or: use the subjects of this site of the cohort as the external set (none of them is trained on).
    external_site: Optional[str] = None
    #: Name of the external set in the tables; default the site name, or the external folder's name.
    external_name: Optional[str] = None
    #: PCD bin edges (%) of Figure 5; default the paper's (0-0.03, ..., 0.45-0.55).
    pcd_bins: list[float] = field(default_factory=lambda: list(PCD_BIN_EDGES))
    #: Segmentation threshold on the sigmoid probability (``wmhkeras segment --threshold``).
    threshold: float = 0.5
    #: Write a QC montage per subject, arm and dataset (``evaluation/<dataset>/qc/``); slow for large cohorts.
    qc: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def mode(self) -> str:
        """``holdout`` (the paper's split), ``kfold`` or ``loso``."""
        return "kfold" if self.folds else "loso" if self.leave_one_site_out else "holdout"


@dataclass(frozen=True)
class Arm:
    """One training run of the experiment: a loss, a seed, a fold."""

    fold: str
    loss: str
    seed: int
    path: Path

    @property
    def name(self) -> str:
        return f"{self.fold}/{self.path.name}"


@dataclass
class ExperimentResult:
    """What :func:`run_experiment` did and wrote."""

    out_dir: Path
    #: ``{"fold", "loss", "seed", "path", "status"}`` per arm; status ``trained``, ``resumed``,
    #: ``evaluated`` (training was complete, evaluation was not) or ``skipped``.
    arms: list[dict]
    #: Every per-subject metric row (``per_subject.csv``).
    rows: list[dict]
    #: The paired tests (``wilcoxon.csv``).
    tests: list[dict]
    #: The Table 1 Markdown (``table.md``).
    table: str
    wall_time_s: float
    files: dict[str, Path] = field(default_factory=dict)


# === Config ===


def _check_experiment(cfg: Config, exp: ExperimentConfig) -> ExperimentConfig:
    """Cross-field checks; fills the defaults that depend on the run config."""

    def need(ok: bool, key: str, value, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"experiment.{key}: {value!r} is not allowed; {allowed}")

    need(len(exp.losses) >= 1 and len(set(exp.losses)) == len(exp.losses), "losses", exp.losses,
         "list at least one loss, each once")
    if exp.reference is None:
        exp.reference = "content" if "content" in exp.losses else exp.losses[0]
    need(exp.reference in exp.losses, "reference", exp.reference, f"use one of the listed losses {exp.losses}")
    if exp.seeds is None:
        exp.seeds = [cfg.train.seed]
    need(len(exp.seeds) >= 1 and len(set(exp.seeds)) == len(exp.seeds) and all(s >= 0 for s in exp.seeds),
         "seeds", exp.seeds, "list at least one non-negative seed, each once")
    if exp.split_seed is None:
        exp.split_seed = cfg.train.seed
    need(exp.split_seed >= 0, "split_seed", exp.split_seed, "use a non-negative integer")
    need(exp.folds is None or exp.folds >= 2, "folds", exp.folds, "use 2 or more, or null")
    need(not (exp.folds and exp.leave_one_site_out), "leave_one_site_out", exp.leave_one_site_out,
         f"choose K-fold (folds = {exp.folds}) or leave-one-site-out, not both")
    need(not (exp.external and exp.external_site), "external_site", exp.external_site,
         f"give an external dataset (external = {exp.external!r}) or an external site, not both")
    edges = exp.pcd_bins
    need(len(edges) >= 2 and all(b > a for a, b in zip(edges[:-1], edges[1:], strict=True)) and edges[0] >= 0, "pcd_bins", edges,
         "use at least two increasing, non-negative bin edges (%)")
    need(0 < exp.threshold <= 1, "threshold", exp.threshold, "use a value in (0, 1]")
    if exp.mode == "holdout":
        need(cfg.data.split[2] > 0 or exp.external or exp.external_site, "external", exp.external,
             f"data.split {cfg.data.split} leaves no hold-out subject, so name an external set to test on")
    return exp


def experiment_from_dict(data: dict) -> tuple[Config, ExperimentConfig]:
    """Build and validate the run config and the ``experiment`` section from one merged mapping."""
    data = dict(data)
    section = data.pop(SECTION, None)
    cfg = config_from_dict(data)
    exp = _build_section(ExperimentConfig, section, SECTION)
    return cfg, _check_experiment(cfg, exp)


def load_experiment_config(paths=(), overrides=()) -> tuple[Config, ExperimentConfig]:
    """Load YAML files (deep-merged in order), apply ``key=value`` overrides, validate.

    Like :func:`wmhkeras.config.load_config`, plus the ``experiment:`` section (overrides such as
    ``experiment.folds=5`` work too). Relative ``data.path`` and ``experiment.external`` values in a file
    are resolved against that file's folder.

    Returns:
        ``(run config, experiment config)``.
    """
    merged: dict = {}
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        data = read_yaml(p)
        for section, key in (("data", "path"), (SECTION, "external")):
            value = data.get(section).get(key) if isinstance(data.get(section), dict) else None
            if isinstance(value, str) and not Path(value).expanduser().is_absolute():
                data = deep_merge(data, {section: {key: str((Path(p).parent / value).resolve())}})
        merged = deep_merge(merged, data)
    for text in overrides:
        merged = deep_merge(merged, parse_override(text))
    return experiment_from_dict(merged)


def resolved_dict(cfg: Config, exp: ExperimentConfig) -> dict:
    """The whole experiment config as one mapping (what ``OUT/config.yaml`` holds)."""
    return {**cfg.to_dict(), SECTION: exp.to_dict()}


def arm_config(cfg: Config, loss: str, seed: int) -> Config:
    """The run config of one arm: the shared settings, with this arm's loss and seed."""
    return dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, name=loss),
        train=dataclasses.replace(cfg.train, seed=seed),
    )


# === Splits ===


def _by_site(subjects: list[Subject]) -> dict[str, list[Subject]]:
    sites: dict[str, list[Subject]] = {}
    for s in subjects:
        sites.setdefault(s.site, []).append(s)
    return {site: sites[site] for site in sorted(sites)}


def _train_validation(subjects: list[Subject], test: list[str], fractions, seed: int, fold: str) -> dict:
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
    split["holdout"] = list(test)
    return split


def kfold_splits(subjects: list[Subject], k: int, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, dict]:
    """Site-stratified K-fold cross-validation: every subject is in exactly one test fold.

    Each site's subjects (ids sorted, then shuffled with ``seed``) are dealt to the folds in turn, the deal
    continuing from site to site, so every fold holds about ``1/k`` of each site and fold sizes differ by at
    most one. The rest of each fold is split into train and validation, stratified by site, with the
    train : validation ratio of ``fractions`` (the hold-out fraction is not used: the fold is the test set).

    Args:
        subjects: the cohort (unique ids).
        k: number of folds, ``2 <= k <= len(subjects)``.
        fractions: ``data.split`` ``(train, validation, holdout)``.
        seed: shuffles the subjects of each site and seeds each fold's validation split.

    Returns:
        ``{"fold1": {"train", "validation", "holdout"}, ...}``, subject id lists (``holdout`` = the test fold).
    """
    if not 2 <= k <= len(subjects):
        raise InputError(f"folds: {k} folds need 2 <= folds <= the {len(subjects)} subjects of the cohort")
    rng = np.random.default_rng(seed)
    tests: list[list[str]] = [[] for _ in range(k)]
    dealt = 0
    for members in _by_site(subjects).values():
        ids = sorted(s.subject for s in members)
        rng.shuffle(ids)
        for sid in ids:
            tests[dealt % k].append(sid)
            dealt += 1
    return {f"fold{i + 1}": _train_validation(subjects, test, fractions, seed + i, f"fold{i + 1}")
            for i, test in enumerate(tests)}


def leave_one_site_out_splits(subjects: list[Subject], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, dict]:
    """One fold per site: test on all of its subjects, train and validate on the other sites.

    Returns:
        ``{"site-<name>": {"train", "validation", "holdout"}}`` in site order (``holdout`` = that site).
    """
    sites = _by_site(subjects)
    if len(sites) < 2:
        raise InputError(f"leave-one-site-out needs subjects from at least 2 sites; the cohort has {list(sites)}")
    return {
        f"site-{site}": _train_validation(subjects, sorted(s.subject for s in members), fractions, seed, f"site-{site}")
        for site, members in sites.items()
    }


def make_splits(subjects: list[Subject], cfg: Config, exp: ExperimentConfig) -> dict[str, dict]:
    """The splits of every fold of the experiment (one fold, ``holdout``, for the paper's protocol)."""
    if exp.mode == "kfold":
        return kfold_splits(subjects, exp.folds, cfg.data.split, exp.split_seed)
    if exp.mode == "loso":
        return leave_one_site_out_splits(subjects, cfg.data.split, exp.split_seed)
    return {"holdout": make_split(subjects, cfg.data.split, exp.split_seed)}


# === Reports ===

#: Display names of the losses in the tables (the paper's wording where it has one).
LOSS_LABELS = {
    "dice": "Dice loss",
    "tversky": "Tversky",
    "generalized_dice": "Generalised Dice",
    "content": "Siamese content loss",
    "focal": "focal loss",
    "bce": "cross-entropy",
    "hybrid": "content + overlap",
}
#: Identifying columns of ``per_subject.csv``, before the metrics of :data:`wmhkeras.evaluation.metrics.METRIC_KEYS`.
ROW_KEYS = ("loss", "seed", "dataset", "fold", "subject", "site")
#: Metrics that are counts (written as integers).
COUNT_KEYS = ("truth_lesions", "pred_lesions")


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _number(key: str, value):
    """A metric read back from ``metrics.csv``: lesion counts as int, the rest as float (NaN when empty)."""
    number = _float(value)
    return int(number) if key in COUNT_KEYS and not math.isnan(number) else number


def subject_means(rows: list[dict], metrics=METRIC_KEYS) -> list[dict]:
    """One row per (dataset, loss, subject): each metric averaged (NaN-aware) over seeds and folds.

    A subject of the hold-out is tested by one fold per seed; an external subject by every fold. Averaging
    first gives every subject one value per loss, so Table 1's SD is across subjects (as in the paper) and
    the paired tests pair each subject once.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["loss"], row["subject"]), []).append(row)
    out = []
    for (dataset, loss, subject), members in groups.items():
        merged = {"dataset": dataset, "loss": loss, "subject": subject, "site": members[0].get("site", ""),
                  "repeats": len(members)}
        for m in metrics:
            values = np.array([_float(r.get(m)) for r in members])
            merged[m] = float(np.mean(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else float("nan")
        out.append(merged)
    return out


def table_results(means: list[dict], datasets: dict[str, str], losses: list[str]) -> dict[str, dict[str, dict]]:
    """``{dataset label: {loss label: summarize(...)}}`` in the order of ``datasets`` and ``losses``."""
    results: dict[str, dict[str, dict]] = {}
    for key, label in datasets.items():
        block = {}
        for loss in losses:
            subset = [r for r in means if r["dataset"] == key and r["loss"] == loss]
            if subset:
                block[LOSS_LABELS.get(loss, loss)] = summarize(subset, metrics=list(CHALLENGE_KEYS))
        if block:
            results[label] = block
    return results


def table_rows(means: list[dict], datasets: dict[str, str], losses: list[str]) -> list[dict]:
    """``table.csv``: per dataset and loss, n subjects and mean, SD, n of each challenge metric."""
    out = []
    for key, label in datasets.items():
        for loss in losses:
            subset = [r for r in means if r["dataset"] == key and r["loss"] == loss]
            if not subset:
                continue
            row = {"dataset": key, "dataset_label": label, "loss": loss, "subjects": len(subset)}
            for m in CHALLENGE_KEYS:
                stats = describe([r[m] for r in subset])
                row.update({f"{m}_mean": stats["mean"], f"{m}_sd": stats["sd"], f"{m}_n": stats["n"]})
            out.append(row)
    return out


def paired_tests(means: list[dict], reference: str, losses: list[str], datasets: list[str],
                 metrics=CHALLENGE_KEYS) -> list[dict]:
    """Two-sided Wilcoxon signed-rank tests of ``reference`` against every other loss.

    Per dataset and metric, on the subjects for which both losses have a finite value (NaN-aware pairing;
    ``n`` is the number of pairs). ``median_difference`` is the median of ``reference - other``. ``p_value``
    is NaN when there is no pair, 1 when every difference is zero (nothing to rank). Uses
    :func:`scipy.stats.wilcoxon` (its default: exact distribution for small ``n``, zero differences dropped).
    """
    import warnings

    from scipy.stats import wilcoxon

    by_key = {(r["dataset"], r["loss"], r["subject"]): r for r in means}
    out = []
    for dataset in datasets:
        subjects = sorted({r["subject"] for r in means if r["dataset"] == dataset})
        for other in (loss for loss in losses if loss != reference):
            for m in metrics:
                pairs = [(by_key[(dataset, reference, s)][m], by_key[(dataset, other, s)][m]) for s in subjects
                         if (dataset, reference, s) in by_key and (dataset, other, s) in by_key]
                pairs = np.array([p for p in pairs if not (math.isnan(p[0]) or math.isnan(p[1]))], dtype=float)
                row = {"dataset": dataset, "metric": m, "reference": reference, "loss": other, "n": len(pairs),
                       "reference_mean": float("nan"), "loss_mean": float("nan"), "median_difference": float("nan"),
                       "statistic": float("nan"), "p_value": float("nan"), "note": ""}
                if len(pairs):
                    diff = pairs[:, 0] - pairs[:, 1]
                    row.update(reference_mean=float(pairs[:, 0].mean()), loss_mean=float(pairs[:, 1].mean()),
                               median_difference=float(np.median(diff)))
                    if np.all(diff == 0):
                        row.update(statistic=0.0, p_value=1.0, note="all differences are zero")
                    else:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            result = wilcoxon(pairs[:, 0], pairs[:, 1])
                        row.update(statistic=float(result.statistic), p_value=float(result.pvalue))
                else:
                    row["note"] = "no subject with both values"
                out.append(row)
    return out


def tests_markdown(tests: list[dict], datasets: dict[str, str]) -> str:
    """``wilcoxon.md``: one line per dataset, metric and compared loss."""
    lines = [
        "| data | metric | reference | loss | n | reference mean | loss mean | median diff. | p |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def num(value, digits=3) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    for row in tests:
        p = row["p_value"]
        p_text = "n/a" if math.isnan(p) else f"{p:.3g}"
        lines.append(
            f"| {datasets.get(row['dataset'], row['dataset'])} | {TABLE_HEADERS.get(row['metric'], row['metric'])} "
            f"| {LOSS_LABELS.get(row['reference'], row['reference'])} | {LOSS_LABELS.get(row['loss'], row['loss'])} "
            f"| {row['n']} | {num(row['reference_mean'])} | {num(row['loss_mean'])} | {num(row['median_difference'])} "
            f"| {p_text} |"
        )
    return "\n".join(lines) + "\n"


def write_reports(rows: list[dict], out_dir: Path, exp: ExperimentConfig, datasets: dict[str, str]) -> dict:
    """Write Table 1, Figure 5, the per-subject CSV and the paired tests from per-subject rows.

    Args:
        rows: per-subject metric rows (keys :data:`ROW_KEYS` and the metrics).
        out_dir: the experiment folder.
        exp: the experiment config (losses, reference loss, PCD bins).
        datasets: ``{dataset key: label in the tables}``, in table order.

    Returns:
        ``{"table": markdown, "tests": rows, "files": {name: path}}``.
    """
    out_dir = Path(out_dir)
    files = {"per_subject": write_csv(rows, out_dir / "per_subject.csv", columns=[*ROW_KEYS, *METRIC_KEYS])}
    means = subject_means(rows)
    table = markdown_table(table_results(means, datasets, exp.losses))
    files["table_md"] = write_text(table, out_dir / "table.md")
    files["table_csv"] = write_csv(table_rows(means, datasets, exp.losses), out_dir / "table.csv")
    series = {
        LOSS_LABELS.get(loss, loss): ([r["pcd"] for r in means if r["loss"] == loss],
                                      [r["avd"] for r in means if r["loss"] == loss])
        for loss in exp.losses
    }
    names = " + ".join(datasets[k] for k in datasets if any(r["dataset"] == k for r in means))
    files["figure5"] = plot_avd_vs_pcd(series, out_dir / "figure5.png", edges=exp.pcd_bins,
                                       title=f"AVD against PCD ({names})")
    tests = paired_tests(means, exp.reference, exp.losses, list(datasets))
    files["wilcoxon_csv"] = write_csv(tests, out_dir / "wilcoxon.csv")
    files["wilcoxon_md"] = write_text(tests_markdown(tests, datasets), out_dir / "wilcoxon.md")
    return {"table": table, "tests": tests, "files": files}


# === Running ===


def plan_arms(out_dir: Path, folds: list[str], exp: ExperimentConfig) -> list[Arm]:
    """Every arm, fold by fold, seed by seed, loss by loss: ``OUT/arms/<fold>/<loss>[-seed<s>]``."""
    arms = []
    for fold in folds:
        for seed in exp.seeds:
            for loss in exp.losses:
                name = loss if len(exp.seeds) == 1 else f"{loss}-seed{seed}"
                arms.append(Arm(fold, loss, seed, Path(out_dir) / "arms" / fold / name))
    return arms


def external_set(subjects: list[Subject], exp: ExperimentConfig) -> tuple[list[Subject], list[Subject], Optional[str]]:
    """Split the cohort into ``(pool to train and test on, external subjects, external name)``.

    With ``external_site`` the site's subjects leave the pool; with ``external`` the dataset is loaded.
    Every external subject needs a label.
    """
    if exp.external_site:
        sites = sorted({s.site for s in subjects})
        if exp.external_site not in sites:
            raise ConfigError(f"experiment.external_site: {exp.external_site!r} is not a site of the cohort; "
                              f"its sites are {sites}")
        external = [s for s in subjects if s.site == exp.external_site]
        pool = [s for s in subjects if s.site != exp.external_site]
        name = exp.external_name or exp.external_site
    elif exp.external:
        path = Path(exp.external)
        external, pool = load_dataset(path), subjects
        name = exp.external_name or (path.parent.name if path.name.endswith(".csv") and path.stem == "manifest"
                                     else path.stem if path.is_file() else path.name)
    else:
        return subjects, [], None
    unlabelled = [s.subject for s in external if s.label is None]
    if unlabelled:
        raise InputError(f"external set {name!r}: no label for {', '.join(unlabelled[:5])}"
                         f"{' and others' if len(unlabelled) > 5 else ''}; evaluation needs a label for every subject")
    return pool, external, name


def _check_stored_splits(path: Path, stored: dict, pool: list[Subject], mode: str) -> dict[str, dict]:
    """Check a stored ``split.json`` against the cohort: known ids, no id in two sets of a fold."""
    known = {s.subject for s in pool}
    folds = stored.get("folds") if isinstance(stored, dict) else None
    if stored.get("mode") != mode or not isinstance(folds, dict) or not folds:
        raise InputError(f"{path}: not a {mode} split of a wmhkeras experiment; use another --out")
    for fold, split in folds.items():
        seen: set[str] = set()
        for key in SPLIT_KEYS:
            ids = split.get(key) if isinstance(split, dict) else None
            if not isinstance(ids, list):
                raise InputError(f"{path}: fold {fold!r} has no {key} list")
            bad = [i for i in ids if i not in known or i in seen]
            if bad:
                raise InputError(f"{path}: fold {fold!r} lists {bad[0]!r} in {key}, which is not in the cohort "
                                 "or is listed twice")
            seen.update(ids)
    return {fold: {key: list(split[key]) for key in SPLIT_KEYS} for fold, split in folds.items()}


def _check_out_dir(out_dir: Path, resolved: dict) -> bool:
    """Refuse an ``--out`` folder written by a different experiment config; True when it is resumed."""
    path = out_dir / "config.yaml"
    if not path.is_file():
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise InputError(f"{out_dir}: exists, is not empty and holds no experiment (config.yaml); "
                             "choose another --out")
        return False
    old = yaml.safe_load(path.read_text()) or {}

    def flat(d, prefix=""):
        items = {}
        for key, value in d.items():
            name = f"{prefix}{key}"
            items.update(flat(value, name + ".") if isinstance(value, dict) else {name: value})
        return items

    before, now = flat(old), flat(yaml.safe_load(yaml.safe_dump(resolved)))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        key = changed[0]
        raise InputError(f"{path}: this experiment was run with {key} = {before.get(key)!r}, now {now.get(key)!r}; "
                         "resume it with the same config, or choose another --out")
    return True


def _finished_training(run, cfg: Config) -> bool:
    """True when every configured epoch is done (or early stopping ended the run).

    ``summary.json`` says so; ``checkpoints/state.json`` too, for a run killed after saving its last
    epoch's checkpoint but before rewriting its summary (the trainer refuses to resume such a run).
    """
    if not run.summary.is_file():
        return False
    summary = run.read_summary()
    epochs = max(int(summary.get("epochs") or 0), int(run.read_state().get("epochs") or 0))
    return epochs >= cfg.train.epochs or bool(summary.get("finished") and summary.get("stopped_early"))


def _train_arm(arm: Arm, cfg: Config, split: dict, verbose: int) -> str:
    """Train one arm unless it is done: ``trained`` (new), ``resumed`` or ``done``.

    A new arm trains on the experiment's split (passed to the trainer); a killed arm resumes from its
    last completed epoch on the split its run folder recorded.
    """
    from wmhkeras.io.run_folder import RunFolder

    run = RunFolder(arm.path)
    if _finished_training(run, cfg):
        return "done"
    from wmhkeras.training.trainer import train  # TensorFlow: only when there is training to do
    status = "resumed" if run.config.is_file() and run.split.is_file() else "trained"
    log.info("%s arm %s: %s loss, seed %d, %d train / %d validation subjects", "resuming" if status == "resumed"
             else "training", arm.name, arm.loss, arm.seed, len(split["train"]), len(split["validation"]))
    if status == "resumed":
        train(cfg, run.path, data_path=cfg.data.path, resume=True, verbose=verbose)
    else:
        train(cfg, run.path, data_path=cfg.data.path, split=split, verbose=verbose)
    return status


def _evaluate_arm(arm: Arm, datasets: dict[str, tuple[Path, str]], exp: ExperimentConfig) -> tuple[list[dict], bool]:
    """Segment and evaluate each dataset with the arm's model, unless already done; per-subject rows.

    Outputs: ``<arm>/predictions/<dataset>/`` (masks, probabilities) and ``<arm>/evaluation/<dataset>/``
    (``metrics.csv``, ``summary.json`` - written last, so its presence marks a finished evaluation).

    Returns:
        ``(rows, did_work)``; rows of failed subjects are logged and left out.
    """
    import csv

    from wmhkeras.evaluation.evaluate import METRICS_CSV, SUMMARY_JSON, evaluate

    rows, did_work, segmenter = [], False, None
    for key, (manifest, label) in datasets.items():
        pred_dir, eval_dir = arm.path / "predictions" / key, arm.path / "evaluation" / key
        if not (eval_dir / SUMMARY_JSON).is_file():
            from wmhkeras.inference.segment import load_segmenter, segment

            did_work = True
            segmenter = segmenter or load_segmenter(arm.path)
            result = segment(segmenter, [manifest], pred_dir, threshold=exp.threshold)
            if result.n_failed:
                log.warning("arm %s, %s: %d subject(s) failed to segment (see %s)", arm.name, key, result.n_failed,
                            result.summary_csv)
            evaluate(pred_dir, manifest, eval_dir, model_name=LOSS_LABELS.get(arm.loss, arm.loss), dataset_name=label,
                     qc=exp.qc)
        with open(eval_dir / METRICS_CSV, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("status", "ok") != "ok":
                    log.warning("arm %s, %s: subject %s not evaluated: %s", arm.name, key, row["subject"], row["error"])
                    continue
                rows.append({"loss": arm.loss, "seed": arm.seed, "dataset": key, "fold": arm.fold,
                             "subject": row["subject"], "site": row.get("site", ""),
                             **{m: _number(m, row.get(m)) for m in METRIC_KEYS}})
    return rows, did_work


def _dataset_labels(exp: ExperimentConfig, external_name: Optional[str], n_folds: int) -> dict[str, str]:
    holdout = {"holdout": "hold-out", "kfold": f"test folds ({n_folds}-fold CV)", "loso": "left-out site"}[exp.mode]
    labels = {HOLDOUT: holdout}
    if external_name:
        labels[EXTERNAL] = f"external: {external_name}"
    return labels


def run_experiment(
    config_paths,
    overrides=(),
    out_dir: str | Path = "experiment",
    data_path: str | Path | None = None,
    *,
    verbose: int = 2,
) -> ExperimentResult:
    """Run (or continue) the experiment: train every arm, evaluate it, write the reports.

    Args:
        config_paths: experiment config YAML file(s), deep-merged in order (see :func:`load_experiment_config`).
        overrides: ``section.key=value`` strings, e.g. ``experiment.folds=5`` or ``train.epochs=10``.
        out_dir: the experiment folder. Running again with the same config continues an interrupted
            experiment there; a different config is refused (the message names the first changed key).
        data_path: the cohort (manifest CSV, folder with ``manifest.csv`` or MICCAI 2017 layout); default
            ``data.path``.
        verbose: Keras ``fit`` verbosity of each arm (2: one line per epoch).

    Returns:
        :class:`ExperimentResult`.

    Raises:
        InputError / ConfigError: a bad config, dataset, external set or ``--out`` folder, raised before any
            training starts.
    """
    start = time.monotonic()
    cfg, exp = load_experiment_config(config_paths, overrides)
    data = data_path or cfg.data.path
    if data is None:
        raise InputError("no dataset given: set data.path in the config or pass --data PATH")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(Path(data).resolve())))
    out_dir = Path(out_dir)
    resolved = resolved_dict(cfg, exp)
    resuming = _check_out_dir(out_dir, resolved)

    subjects = load_dataset(cfg.data.path)
    pool, external, external_name = external_set(subjects, exp)
    split_path = out_dir / "split.json"
    if split_path.is_file():
        import json

        splits = _check_stored_splits(split_path, json.loads(split_path.read_text()), pool, exp.mode)
        log.info("reusing the split in %s", split_path)
    else:
        splits = make_splits(pool, cfg, exp)
    by_id = {s.subject: s for s in subjects}
    # The trainer checks its training and validation subjects; the test subjects are checked here, so that
    # a broken or unlabelled file stops the experiment now rather than after hours of training.
    tested = [by_id[i] for i in sorted({i for split in splits.values() for i in split["holdout"]})] + external
    for subject in tested:
        check_subject(subject, cfg.data.modalities, need_label=True)
    log.info("checked the files of %d test subjects", len(tested))

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(yaml.safe_dump(resolved, sort_keys=False), out_dir / "config.yaml")
    atomic_write_json(out_dir / "versions.json", package_versions())
    if not split_path.is_file():
        atomic_write_json(split_path, {
            "mode": exp.mode, "seed": exp.split_seed, "folds": splits,
            "external": {"name": external_name, "subjects": [s.subject for s in external]},
            "sites": {s.subject: s.site for s in subjects},
        })
    manifests: dict[str, dict[str, tuple[Path, str]]] = {}
    labels = _dataset_labels(exp, external_name, len(splits))
    external_manifest = write_manifest(external, out_dir / "manifests" / "external.csv") if external else None
    for fold, split in splits.items():
        manifests[fold] = {}
        if split["holdout"]:
            manifests[fold][HOLDOUT] = (write_manifest([by_id[i] for i in split["holdout"]],
                                                       out_dir / "manifests" / f"{fold}.csv"), labels[HOLDOUT])
        if external_manifest is not None:
            manifests[fold][EXTERNAL] = (external_manifest, labels[EXTERNAL])

    arms = plan_arms(out_dir, list(splits), exp)
    log.info("%s experiment in %s: %d fold(s) x %d seed(s) x %d loss(es) = %d arms%s", exp.mode, out_dir, len(splits),
             len(exp.seeds), len(exp.losses), len(arms), " (resuming)" if resuming else "")
    records, rows = [], []
    for i, arm in enumerate(arms, 1):
        arm_start = time.monotonic()
        status = _train_arm(arm, arm_config(cfg, arm.loss, arm.seed), splits[arm.fold], verbose)
        arm_rows, evaluated = _evaluate_arm(arm, manifests[arm.fold], exp)
        if status == "done":
            status = "evaluated" if evaluated else "skipped"
            if status == "skipped":
                log.info("skipping finished arm %s (%d/%d)", arm.name, i, len(arms))
        rows += arm_rows
        records.append({"fold": arm.fold, "loss": arm.loss, "seed": arm.seed, "path": str(arm.path), "status": status,
                        "seconds": round(time.monotonic() - arm_start, 1)})
        log.info("arm %d/%d %s: %s in %.0f s", i, len(arms), arm.name, status, records[-1]["seconds"])

    reports = write_reports(rows, out_dir, exp, labels)
    wall = time.monotonic() - start
    files = {**reports["files"], "config": out_dir / "config.yaml", "split": split_path,
             "versions": out_dir / "versions.json", "experiment": out_dir / "experiment.json"}
    write_json({
        "mode": exp.mode, "updated": utc_now(), "wall_time_s": round(wall, 1), "arms": records,
        "datasets": labels, "subjects": {"cohort": len(subjects), "pool": len(pool), "external": len(external)},
        "files": {k: str(Path(p).relative_to(out_dir)) for k, p in files.items()},
    }, out_dir / "experiment.json")
    log.info("experiment done in %.0f s: %s", wall, out_dir / "table.md")
    return ExperimentResult(out_dir, records, rows, reports["tests"], reports["table"], wall, files)
