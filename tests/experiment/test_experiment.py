"""The experiment runner: config section, site-stratified folds, paired tests, resume, one tiny experiment."""

from __future__ import annotations

import csv
import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from wmhkeras.data.datasets import Subject
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.experiment.runner import (
    ROW_KEYS,
    ExperimentConfig,
    _check_out_dir,
    kfold_splits,
    leave_one_site_out_splits,
    load_experiment_config,
    make_splits,
    paired_tests,
    subject_means,
)
from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, METRIC_KEYS

TINY = {
    "data": {"split": [0.34, 0.33, 0.33], "lesion_fraction": 0.7},
    "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
    "loss": {"weights": "random"},
    "augment": {"rotation_degrees": 0},
    "train": {"epochs": 2, "steps_per_epoch": 2, "batch_size": 4, "image_summary_every": 0},
    "experiment": {"losses": ["dice", "tversky"], "external_site": "site2"},
}


def cohort(sizes: dict[str, int]) -> list[Subject]:
    """Subjects ``<site>-<i>`` (files are never opened by the split functions)."""
    return [Subject(f"{site}-{i}", site, Path(f"/nowhere/{site}-{i}.nii.gz"))
            for site, n in sizes.items() for i in range(n)]


def write_config(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# === Config ===


def test_config_defaults_and_overrides(tmp_path):
    path = write_config(tmp_path, {"train": {"seed": 3}, "experiment": {"external": "ext/manifest.csv"}})
    cfg, exp = load_experiment_config([path], ["experiment.folds=4"])
    assert exp.losses == ["dice", "tversky", "generalized_dice", "content"]
    assert exp.reference == "content" and exp.seeds == [3] and exp.split_seed == 3
    assert exp.folds == 4 and exp.mode == "kfold"
    assert exp.external == str((tmp_path / "ext" / "manifest.csv").resolve())  # relative to the config file
    assert cfg.train.seed == 3
    _, exp = load_experiment_config([write_config(tmp_path, {"experiment": {"losses": ["tversky", "dice"]}})])
    assert exp.reference == "tversky" and exp.mode == "holdout"


@pytest.mark.parametrize("section, message", [
    ({"lossses": ["dice"]}, "experiment.lossses: unknown key"),
    ({"losses": ["dice", "jaccard"]}, "experiment.losses[1]: 'jaccard' is not allowed"),
    ({"losses": ["dice", "dice"]}, "experiment.losses"),
    ({"losses": ["dice"], "reference": "content"}, "experiment.reference: 'content'"),
    ({"folds": 1}, "experiment.folds: 1"),
    ({"folds": 3, "leave_one_site_out": True}, "not both"),
    ({"external": "a.csv", "external_site": "s1"}, "not both"),
    ({"pcd_bins": [0.5, 0.1]}, "experiment.pcd_bins"),
])
def test_config_errors(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_experiment_config([write_config(tmp_path, {"experiment": section})])


def test_no_test_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="experiment.external"):
        load_experiment_config([write_config(tmp_path, {"data": {"split": [0.9, 0.1, 0.0]}})])


def test_changed_config_is_refused(tmp_path):
    cfg, exp = load_experiment_config([write_config(tmp_path, {})])
    resolved = {**cfg.to_dict(), "experiment": exp.to_dict()}
    out = tmp_path / "out"
    assert _check_out_dir(out, resolved) is False
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(resolved))
    assert _check_out_dir(out, resolved) is True
    changed = {**resolved, "train": {**resolved["train"], "epochs": 7}}
    with pytest.raises(InputError, match="train.epochs = 100, now 7"):
        _check_out_dir(out, changed)


# === Splits ===


@pytest.mark.parametrize("k", [2, 3, 5])
def test_kfold_every_subject_tested_once_and_sites_spread(k):
    subjects = cohort({"a": 7, "b": 5, "c": 4})
    folds = kfold_splits(subjects, k, fractions=(0.7, 0.2, 0.1), seed=1)
    assert list(folds) == [f"fold{i + 1}" for i in range(k)]
    tested = [sid for split in folds.values() for sid in split["holdout"]]
    assert sorted(tested) == sorted(s.subject for s in subjects)  # each subject in exactly one test fold
    site = {s.subject: s.site for s in subjects}
    for split in folds.values():
        train, val, test = (set(split[key]) for key in ("train", "validation", "holdout"))
        assert not (train & test) and not (val & test) and not (train & val)
        assert train | val | test == set(site)  # the rest of the cohort trains or validates
        assert val  # validation is taken from the training part
    for name in ("a", "b", "c"):  # every site is dealt evenly over the folds
        per_fold = [sum(site[s] == name for s in split["holdout"]) for split in folds.values()]
        assert max(per_fold) - min(per_fold) <= 1
    sizes = [len(split["holdout"]) for split in folds.values()]
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
        assert sorted(split["holdout"]) == sorted(s.subject for s in subjects if s.site == left_out)
        assert not any(sid.startswith(left_out) for sid in split["train"] + split["validation"])
        assert len(split["train"]) + len(split["validation"]) + len(split["holdout"]) == len(subjects)
    with pytest.raises(InputError, match="at least 2 sites"):
        leave_one_site_out_splits(cohort({"only": 4}))


def test_make_splits_modes():
    subjects = cohort({"a": 10, "b": 10})
    cfg, _ = load_experiment_config([])
    assert list(make_splits(subjects, cfg, ExperimentConfig(folds=4, split_seed=0))) == ["fold1", "fold2", "fold3", "fold4"]
    (split,) = make_splits(subjects, cfg, ExperimentConfig(split_seed=0)).values()
    assert [len(split[k]) for k in ("train", "validation", "holdout")] == [16, 2, 2]  # the paper's 48/6/6, scaled


# === Statistics ===


def rows_for(loss: str, values: list[float], dataset: str = "holdout", seed: int = 0) -> list[dict]:
    return [{"loss": loss, "seed": seed, "dataset": dataset, "fold": "holdout", "subject": f"s{i}", "site": "a",
             **{m: v for m in METRIC_KEYS}} for i, v in enumerate(values)]


def test_subject_means_average_over_seeds_nan_aware():
    rows = rows_for("dice", [1.0, np.nan], seed=0) + rows_for("dice", [3.0, np.nan], seed=1)
    means = {r["subject"]: r for r in subject_means(rows)}
    assert means["s0"]["dice"] == 2.0 and means["s0"]["repeats"] == 2
    assert np.isnan(means["s1"]["dice"])


def test_paired_tests_by_hand():
    ref = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, np.nan]
    other = [0.1, 0.2, 0.3, 0.4, 0.45, 0.35, 0.5]  # reference larger on all 6 complete pairs
    same = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    means = subject_means(rows_for("content", ref) + rows_for("dice", other) + rows_for("tversky", same))
    tests = paired_tests(means, "content", ["dice", "content", "tversky"], ["holdout", "external"])
    by = {(t["dataset"], t["loss"], t["metric"]): t for t in tests}
    assert len(tests) == 2 * 2 * len(CHALLENGE_KEYS)
    dice = by[("holdout", "dice", "dice")]
    assert dice["n"] == 6  # the subject with NaN for the reference is left out
    assert dice["p_value"] == pytest.approx(2 / 2**6)  # exact two-sided: all 6 signs agree
    assert dice["median_difference"] == pytest.approx(np.median([0.8, 0.6, 0.4, 0.2, 0.05, 0.05]))
    assert by[("holdout", "tversky", "dice")]["p_value"] == 1.0  # identical values
    assert by[("external", "dice", "avd")]["n"] == 0 and np.isnan(by[("external", "dice", "avd")]["p_value"])


# === Arms: skip, start, resume ===


def test_train_arm_routing(tmp_path, monkeypatch):
    """A finished arm is not trained again; a new or half-finished arm trains on the experiment's split."""
    from wmhkeras.experiment.runner import Arm, _train_arm
    from wmhkeras.io.run_folder import RunFolder

    calls = []
    # A stand-in trainer module: no TensorFlow import, no training.
    trainer = types.ModuleType("wmhkeras.training.trainer")
    def fake_train(cfg, out, **kw):
        calls.append((Path(out), kw))
        if "split" in kw:  # a new run writes its folder as the real trainer does
            from wmhkeras.config import save_config
            from wmhkeras.data.splits import save_split

            save_split(kw["split"], RunFolder(out).split)
            save_config(cfg, RunFolder(out).config)

    trainer.train = fake_train
    monkeypatch.setitem(sys.modules, "wmhkeras.training.trainer", trainer)
    cfg, _ = load_experiment_config([write_config(tmp_path, TINY)])
    split = {"train": ["a"], "validation": ["b"], "holdout": ["c"]}
    arm = Arm("holdout", "dice", 0, tmp_path / "arms" / "holdout" / "dice")
    run = RunFolder(arm.path)

    assert _train_arm(arm, cfg, split, verbose=0) == "trained"
    assert calls[-1][1]["split"] == split and not calls[-1][1].get("resume")  # trained on the given split
    assert json.loads(run.split.read_text()) == split and run.config.is_file()

    run.write_summary({"epochs": 1, "finished": False})
    assert _train_arm(arm, cfg, split, verbose=0) == "resumed"
    assert calls[-1][1]["resume"] is True and "split" not in calls[-1][1]  # reads its own split.json
    run.write_summary({"epochs": 2, "finished": True})
    assert _train_arm(arm, cfg, split, verbose=0) == "done"
    run.write_summary({"epochs": 1, "finished": True, "stopped_early": True})
    assert _train_arm(arm, cfg, split, verbose=0) == "done"
    assert len(calls) == 2


# === One tiny experiment, end to end ===


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """6 subjects of 2 sites (site2 external), dice and tversky, 2 epochs of 2 steps at 32 x 32."""
    from wmhkeras.experiment.runner import run_experiment
    from wmhkeras.data.synth import make_cohort

    root = tmp_path_factory.mktemp("experiment")
    make_cohort(root / "cohort", subjects=6, sites=2, seed=0)
    config = write_config(root, TINY)
    result = run_experiment([config], [], root / "out", data_path=root / "cohort", verbose=0)
    return root, config, result


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_tiny_experiment_writes_reports(tiny_experiment):
    root, _, result = tiny_experiment
    out = root / "out"
    assert [(a["fold"], a["loss"], a["status"]) for a in result.arms] == [("holdout", "dice", "trained"),
                                                                           ("holdout", "tversky", "trained")]
    split = json.loads((out / "split.json").read_text())
    fold = split["folds"]["holdout"]
    assert split["external"]["subjects"] == ["sub-002", "sub-004", "sub-006"]  # site2
    assert [len(fold[k]) for k in ("train", "validation", "holdout")] == [1, 1, 1]  # site1's three subjects
    for loss in ("dice", "tversky"):
        arm = out / "arms" / "holdout" / loss
        assert json.loads((arm / "split.json").read_text()) == fold  # every arm trains on the one split
        assert (arm / "checkpoints" / "best.keras").is_file()
        assert (arm / "evaluation" / "external" / "metrics.csv").is_file()

    rows = read_csv(out / "per_subject.csv")
    assert list(rows[0]) == [*ROW_KEYS, *METRIC_KEYS]
    assert len(rows) == 2 * (1 + 3)  # two losses x (1 hold-out + 3 external subjects)
    assert {(r["loss"], r["dataset"]) for r in rows} == {(loss, d) for loss in ("dice", "tversky")
                                                         for d in ("holdout", "external")}
    assert {r["site"] for r in rows if r["dataset"] == "external"} == {"site2"}

    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| data | model | Dice | HD95 (mm) | AVD (%) | lesion recall | lesion F1 |")
    assert [line.split("|")[1:3] for line in table[2:]] == [[" hold-out ", " Dice loss "], ["  ", " Tversky "],
                                                            [" external: site2 ", " Dice loss "], ["  ", " Tversky "]]
    table_csv = read_csv(out / "table.csv")
    assert [(r["dataset"], r["loss"], r["subjects"]) for r in table_csv] == [
        ("holdout", "dice", "1"), ("holdout", "tversky", "1"), ("external", "dice", "3"), ("external", "tversky", "3")]
    assert {f"{m}_{s}" for m in CHALLENGE_KEYS for s in ("mean", "sd")} <= set(table_csv[0])

    tests = read_csv(out / "wilcoxon.csv")
    assert len(tests) == 2 * len(CHALLENGE_KEYS)  # 2 datasets x 1 comparison (tversky vs dice) x 5 metrics
    assert {(t["reference"], t["loss"]) for t in tests} == {("dice", "tversky")}
    assert (out / "figure5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert yaml.safe_load((out / "config.yaml").read_text())["experiment"]["losses"] == ["dice", "tversky"]
    assert "tensorflow" in json.loads((out / "versions.json").read_text())


@pytest.mark.slow
def test_rerun_skips_finished_arms(tiny_experiment, caplog):
    """Running the same experiment again (here through the CLI) retrains nothing and rewrites the reports."""
    from click.testing import CliRunner

    from wmhkeras.cli.experiment import experiment

    root, config, _ = tiny_experiment
    out = root / "out"
    checkpoints = sorted(out.glob("arms/*/*/checkpoints/*.keras"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    with caplog.at_level(logging.INFO, logger="wmhkeras.experiment.runner"):
        result = CliRunner().invoke(experiment, [str(config), "--data", str(root / "cohort"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 arms (2 skipped)" in result.output and "| external: site2 | Dice loss |" in result.output
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before and len(before) >= 2
    assert sum("skipping finished arm" in r.getMessage() for r in caplog.records) == 2

    changed = CliRunner().invoke(experiment, [str(config), "--data", str(root / "cohort"), "--out", str(out),
                                              "--set", "train.epochs=3"])
    assert changed.exit_code == 2 and "train.epochs = 2, now 3" in changed.output
