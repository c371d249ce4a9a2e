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
  leave-one-site-out (``leave_one_site_out``) (:func:`wmhkeras.data.splits.make_splits`);
- every arm's best checkpoint segments its test subjects and the external set, and is evaluated
  (:func:`wmhkeras.inference.segment.segment`, :func:`wmhkeras.evaluation.evaluate.evaluate`) into the arm folder;
- the reports (:mod:`wmhkeras.experiment.report`, numbers from :mod:`wmhkeras.experiment.statistics`):
  ``table.md`` / ``table.csv`` (Table 1), ``figure5.png``, ``per_subject.csv``, ``wilcoxon.csv`` /
  ``wilcoxon.md`` (paired tests of the reference loss against each other loss); and ``config.yaml`` (the
  resolved experiment config), ``versions.json`` and ``experiment.json``.

An interrupted experiment continues where it stopped when run again with the same config and ``--out``:
finished arms are skipped, a half-trained arm resumes from its last checkpoint.

An experiment config is a run config (:class:`wmhkeras.config.Config`) with an ``experiment:`` section
(:class:`wmhkeras.config.ExperimentConfig`, all defaults when the file has none); every arm trains with
the run config, ``loss.name`` set to the arm's loss and ``train.seed`` to the arm's seed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from wmhkeras.config import Config, ExperimentConfig, config_from_dict, load_config, read_yaml, save_config
from wmhkeras.data.datasets import Subject, check_headers, check_subject, load_dataset, write_manifest
from wmhkeras.data.splits import check_split, make_splits
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.experiment.arms import plan_arms, run_arms
from wmhkeras.experiment.report import write_reports
from wmhkeras.io.files import atomic_write_json, check_new_folder, read_json
from wmhkeras.io.provenance import package_versions, utc_now
from wmhkeras.io.run_folder import Split

log = logging.getLogger(__name__)

#: Dataset keys in ``per_subject.csv``: the arm's own test subjects, and the external set.
HOLDOUT, EXTERNAL = "holdout", "external"
#: The experiment's split file (every fold's split, the external set, each subject's site).
SPLIT_NAME = "split.json"


@dataclass(frozen=True)
class Cohort:
    """The subjects of an experiment and its folds."""

    #: Every subject of the dataset.
    subjects: list[Subject]
    #: The subjects trained, validated and tested on (the cohort less an external site).
    pool: list[Subject]
    external: list[Subject]
    external_name: Optional[str]
    #: ``{fold: Split}``; ``holdout`` of each split is the fold's test set.
    splits: dict[str, Split]

    def by_id(self) -> dict[str, Subject]:
        return {s.subject: s for s in self.subjects}

    def tested(self) -> list[Subject]:
        """Every test subject of a fold, then the external set."""
        by_id = self.by_id()
        return [by_id[i] for i in sorted({i for split in self.splits.values() for i in split.holdout})] + self.external


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


# === Config and cohort ===


def load_experiment(config_paths, overrides=(), data_path: str | Path | None = None) -> Config:
    """The experiment config (:func:`wmhkeras.config.load_config` with an ``experiment`` section), its
    ``data.path`` set to ``data_path`` when given, made absolute."""
    cfg = load_config(config_paths, overrides, experiment=True)
    data = data_path or cfg.data.path
    if data is None:
        raise InputError("no dataset given: set data.path in the config or pass --data PATH")
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(Path(data).resolve())))


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


def _check_stored_splits(path: Path, stored: dict, pool: list[Subject], mode: str) -> dict[str, Split]:
    """Check a stored ``split.json`` against the cohort (:func:`wmhkeras.data.splits.check_split` per fold)."""
    folds = stored.get("folds")
    if stored.get("mode") != mode or not isinstance(folds, dict) or not folds:
        raise InputError(f"{path}: not a {mode} split of a wmhkeras experiment; use another --out")
    return {fold: check_split(split, pool, f"{path}: fold {fold!r}") for fold, split in folds.items()}


def load_cohort(cfg: Config, split_path: Path) -> Cohort:
    """The cohort of ``data.path``, its external set, and the folds: those of ``split_path`` when it exists
    (an experiment being continued), else new ones (:func:`wmhkeras.data.splits.make_splits`)."""
    exp = cfg.experiment
    subjects = load_dataset(cfg.data.path)
    pool, external, external_name = external_set(subjects, exp)
    if split_path.is_file():
        splits = _check_stored_splits(split_path, read_json(split_path), pool, exp.mode)
        log.info("reusing the split in %s", split_path)
    else:
        splits = make_splits(pool, cfg, exp)
    return Cohort(subjects, pool, external, external_name, splits)


# === The experiment folder ===


def _flat(data: dict, prefix: str = "") -> dict:
    items = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        items.update(_flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return items


def _check_out_dir(out_dir: Path, resolved: dict) -> bool:
    """Refuse an ``--out`` folder written by a different experiment config; True when it is resumed.

    ``resolved`` is the experiment config as plain data (``Config.to_dict()``, what ``config.yaml`` holds).
    """
    path = out_dir / "config.yaml"
    if not path.is_file():
        check_new_folder(out_dir, "it holds no experiment (config.yaml); choose another --out")
        return False
    # through the schema, so keys added since (with their defaults) do not count as changes
    before, now = _flat(config_from_dict(read_yaml(path)).to_dict()), _flat(resolved)
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        key = changed[0]
        raise InputError(f"{path}: this experiment was run with {key} = {before.get(key)!r}, now {now.get(key)!r}; "
                         "resume it with the same config, or choose another --out")
    return True


def _write_setup(out_dir: Path, cfg: Config, cohort: Cohort) -> None:
    """``config.yaml``, ``versions.json`` and, for a new experiment, ``split.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    atomic_write_json(out_dir / "versions.json", package_versions())
    split_path = out_dir / SPLIT_NAME
    if not split_path.is_file():
        atomic_write_json(split_path, {
            "mode": cfg.experiment.mode, "seed": cfg.experiment.split_seed,
            "folds": {fold: split.to_dict() for fold, split in cohort.splits.items()},
            "external": {"name": cohort.external_name, "subjects": [s.subject for s in cohort.external]},
            "sites": {s.subject: s.site for s in cohort.subjects},
        })


def _dataset_labels(exp: ExperimentConfig, external_name: Optional[str], n_folds: int) -> dict[str, str]:
    holdout = {"holdout": "hold-out", "kfold": f"test folds ({n_folds}-fold CV)", "loso": "left-out site"}[exp.mode]
    labels = {HOLDOUT: holdout}
    if external_name:
        labels[EXTERNAL] = f"external: {external_name}"
    return labels


def _write_manifests(out_dir: Path, cohort: Cohort, labels: dict[str, str]) -> dict[str, dict[str, tuple[Path, str]]]:
    """``OUT/manifests/<fold>.csv`` (a fold's test subjects) and ``external.csv``:
    ``{fold: {dataset key: (manifest, label)}}``."""
    # The arms segment their test sets as trained, without brain masks a cohort manifest may list.
    by_id = {k: replace(s, brain_mask=None) for k, s in cohort.by_id().items()}
    external = ([replace(s, brain_mask=None) for s in cohort.external] if cohort.external else None)
    external = write_manifest(external, out_dir / "manifests" / "external.csv") if external else None
    manifests: dict[str, dict[str, tuple[Path, str]]] = {}
    for fold, split in cohort.splits.items():
        manifests[fold] = {}
        if split.holdout:
            manifests[fold][HOLDOUT] = (write_manifest([by_id[i] for i in split.holdout],
                                                       out_dir / "manifests" / f"{fold}.csv"), labels[HOLDOUT])
        if external is not None:
            manifests[fold][EXTERNAL] = (external, labels[EXTERNAL])
    return manifests


# === The experiment ===


def _prepare(cfg: Config, out_dir: Path) -> tuple[Cohort, dict[str, str], dict[str, dict[str, tuple[Path, str]]]]:
    """Check the cohort and every test subject, then write the setup files and the test manifests:
    ``(cohort, dataset labels, manifests)``. Nothing is written before every check has passed."""
    cohort = load_cohort(cfg, out_dir / SPLIT_NAME)
    # The trainer checks its training and validation subjects; the test subjects are checked here, so that
    # a broken or unlabelled file stops the experiment now rather than after hours of training.
    tested = cohort.tested()
    for subjects in (cohort.subjects, cohort.external):  # the header pre-pass of every file
        check_headers(subjects, cfg.data.modalities)
    log.info("checking the files of %d test subjects", len(tested))
    for subject in tested:
        check_subject(subject, cfg.data.modalities, need_label=True)
    log.info("checked the files of %d test subjects", len(tested))
    _write_setup(out_dir, cfg, cohort)
    labels = _dataset_labels(cfg.experiment, cohort.external_name, len(cohort.splits))
    return cohort, labels, _write_manifests(out_dir, cohort, labels)


def _write_record(out_dir: Path, cfg: Config, cohort: Cohort, records: list[dict], labels: dict[str, str],
                  files: dict[str, Path], wall: float) -> dict[str, Path]:
    """``experiment.json``: the arms with their status and time, datasets, subject counts, file list."""
    files = {**files, "config": out_dir / "config.yaml", "split": out_dir / SPLIT_NAME,
             "versions": out_dir / "versions.json", "experiment": out_dir / "experiment.json"}
    atomic_write_json(out_dir / "experiment.json", {
        "mode": cfg.experiment.mode, "updated": utc_now(), "wall_time_s": round(wall, 1), "arms": records,
        "datasets": labels,
        "subjects": {"cohort": len(cohort.subjects), "pool": len(cohort.pool), "external": len(cohort.external)},
        "files": {k: str(Path(p).relative_to(out_dir)) for k, p in files.items()},
    })
    return files


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
        config_paths: experiment config YAML file(s), deep-merged in order (:func:`wmhkeras.config.load_config`).
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
    cfg = load_experiment(config_paths, overrides, data_path)
    exp, out_dir = cfg.experiment, Path(out_dir)
    resuming = _check_out_dir(out_dir, cfg.to_dict())
    cohort, labels, manifests = _prepare(cfg, out_dir)
    arms = plan_arms(out_dir, list(cohort.splits), exp)
    log.info("%s experiment in %s: %d fold(s) x %d seed(s) x %d loss(es) = %d arms%s", exp.mode, out_dir,
             len(cohort.splits), len(exp.seeds), len(exp.losses), len(arms), " (resuming)" if resuming else "")
    records, rows = run_arms(arms, cfg, cohort.splits, manifests, verbose)
    reports = write_reports(rows, out_dir, exp, labels)
    wall = time.monotonic() - start
    files = _write_record(out_dir, cfg, cohort, records, labels, reports["files"], wall)
    log.info("experiment done in %.0f s: %s", wall, out_dir / "table.md")
    return ExperimentResult(out_dir, records, rows, reports["tests"], reports["table"], wall, files)
