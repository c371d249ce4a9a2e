"""The experiment: the --out check, paired tests, resume, one tiny experiment (its config section is tested in
tests/config/test_load.py, its folds in tests/data/test_splits.py)."""

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

from tests.experiment.helpers import TINY
from wmhkeras.config import load_config
from wmhkeras.errors import InputError
from wmhkeras.evaluation.metrics import CHALLENGE_KEYS, METRIC_KEYS
from wmhkeras.experiment.runner import _check_out_dir
from wmhkeras.experiment.statistics import ROW_KEYS, paired_tests, subject_means
from wmhkeras.io.run_folder import RunSummary, Split


def write_config(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


# === The experiment folder ===


def test_changed_config_is_refused(tmp_path):
    resolved = load_config([write_config(tmp_path, {})], experiment=True).to_dict()
    out = tmp_path / "out"
    assert _check_out_dir(out, resolved) is False
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump(resolved))
    assert _check_out_dir(out, resolved) is True
    changed = {**resolved, "train": {**resolved["train"], "epochs": 7}}
    with pytest.raises(InputError, match="train.epochs = 100, now 7"):
        _check_out_dir(out, changed)


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
    from wmhkeras.experiment.arms import Arm, _train_arm
    from wmhkeras.io.run_folder import RunFolder

    calls = []
    # A stand-in trainer module: no TensorFlow import, no training.
    trainer = types.ModuleType("wmhkeras.training.trainer")
    def fake_train(cfg, out, **kw):
        calls.append((Path(out), kw))
        if "split" in kw:  # a new run writes its folder as the real trainer does
            from wmhkeras.config import save_config

            RunFolder(out).write_split(kw["split"])
            save_config(cfg, RunFolder(out).config)

    trainer.train = fake_train
    monkeypatch.setitem(sys.modules, "wmhkeras.training.trainer", trainer)
    cfg = load_config([write_config(tmp_path, TINY)])
    split = Split(train=("a",), validation=("b",), holdout=("c",))
    arm = Arm("holdout", "dice", 0, tmp_path / "arms" / "holdout" / "dice")
    run = RunFolder(arm.path)

    assert _train_arm(arm, cfg, split, verbose=0) == "trained"
    assert calls[-1][1]["split"] == split and not calls[-1][1].get("resume")  # trained on the given split
    assert json.loads(run.split.read_text()) == split.to_dict() and run.config.is_file()

    run.write_summary(RunSummary(epochs=1, finished=False))
    assert _train_arm(arm, cfg, split, verbose=0) == "resumed"
    assert calls[-1][1]["resume"] is True and "split" not in calls[-1][1]  # reads its own split.json
    run.write_summary(RunSummary(epochs=2, finished=True))
    assert _train_arm(arm, cfg, split, verbose=0) == "done"
    run.write_summary(RunSummary(epochs=1, finished=True, stopped_early=True))
    assert _train_arm(arm, cfg, split, verbose=0) == "done"
    assert len(calls) == 2


# === One tiny experiment, end to end ===


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """6 subjects of 2 sites (site2 external), dice and tversky, 2 epochs of 2 steps at 32 x 32."""
    from wmhkeras.data.synth import make_cohort
    from wmhkeras.experiment.runner import run_experiment

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
    with caplog.at_level(logging.INFO, logger="wmhkeras.experiment"):
        result = CliRunner().invoke(experiment, [str(config), "--data", str(root / "cohort"), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "2 arms (2 skipped)" in result.output and "| external: site2 | Dice loss |" in result.output
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before and len(before) >= 2
    assert sum("skipping finished arm" in r.getMessage() for r in caplog.records) == 2

    changed = CliRunner().invoke(experiment, [str(config), "--data", str(root / "cohort"), "--out", str(out),
                                              "--set", "train.epochs=3"])
    assert changed.exit_code == 2 and "train.epochs = 2, now 3" in changed.output
