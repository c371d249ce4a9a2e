"""The arms of an experiment: one run folder per loss, seed and fold, trained, then evaluated.

An arm that finished is skipped, a half-trained one resumes from its last checkpoint (the trainer's
``--resume`` code path), and an arm whose training is complete but whose evaluation is not is only
evaluated; so running an interrupted experiment again continues it.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from wmhkeras.config import Config, ExperimentConfig
from wmhkeras.evaluation.metrics import METRIC_KEYS
from wmhkeras.experiment.statistics import loss_label, metric_value
from wmhkeras.io.run_folder import RunFolder, Split

log = logging.getLogger(__name__)


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


def arm_config(cfg: Config, loss: str, seed: int) -> Config:
    """The run config of one arm: the shared settings, with this arm's loss and seed (no experiment section)."""
    return dataclasses.replace(
        cfg,
        loss=dataclasses.replace(cfg.loss, name=loss),
        train=dataclasses.replace(cfg.train, seed=seed),
        experiment=None,
    )


def plan_arms(out_dir: Path, folds: list[str], exp: ExperimentConfig) -> list[Arm]:
    """Every arm, fold by fold, seed by seed, loss by loss: ``OUT/arms/<fold>/<loss>[-seed<s>]``."""
    arms = []
    for fold in folds:
        for seed in exp.seeds:
            for loss in exp.losses:
                name = loss if len(exp.seeds) == 1 else f"{loss}-seed{seed}"
                arms.append(Arm(fold, loss, seed, Path(out_dir) / "arms" / fold / name))
    return arms


def _finished_training(run: RunFolder, cfg: Config) -> bool:
    """True when every configured epoch is done (or early stopping ended the run).

    ``summary.json`` says so; ``checkpoints/state.json`` too, for a run killed after saving its last
    epoch's checkpoint but before rewriting its summary (the trainer refuses to resume such a run).
    """
    if not run.summary.is_file():
        return False
    summary = run.read_summary()
    epochs = max(summary.epochs or 0, run.read_state().epochs or 0)
    return epochs >= cfg.train.epochs or bool(summary.finished and summary.stopped_early)


def _train_arm(arm: Arm, cfg: Config, split: Split, verbose: int) -> str:
    """Train one arm unless it is done: ``trained`` (new), ``resumed`` or ``done``.

    A new arm trains on the experiment's split (passed to the trainer); a killed arm resumes from its
    last completed epoch on the split its run folder recorded.
    """
    run = RunFolder(arm.path)
    if _finished_training(run, cfg):
        return "done"
    from wmhkeras.training.trainer import train  # TensorFlow: only when there is training to do

    status = "resumed" if run.config.is_file() and run.split.is_file() else "trained"
    log.info("%s arm %s: %s loss, seed %d, %d train / %d validation subjects", "resuming" if status == "resumed"
             else "training", arm.name, arm.loss, arm.seed, len(split.train), len(split.validation))
    if status == "resumed":
        train(cfg, run.path, data_path=cfg.data.path, resume=True, verbose=verbose)
    else:
        train(cfg, run.path, data_path=cfg.data.path, split=split, verbose=verbose)
    return status


def _read_metrics(arm: Arm, key: str, metrics_csv: Path) -> list[dict]:
    """The per-subject rows (:data:`~wmhkeras.experiment.statistics.ROW_KEYS` and metrics) of one
    evaluation; failed subjects are logged and left out."""
    rows = []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("status", "ok") != "ok":
                log.warning("arm %s, %s: subject %s not evaluated: %s", arm.name, key, row["subject"], row["error"])
                continue
            rows.append({"loss": arm.loss, "seed": arm.seed, "dataset": key, "fold": arm.fold,
                         "subject": row["subject"], "site": row.get("site", ""),
                         **{m: metric_value(m, row.get(m)) for m in METRIC_KEYS}})
    return rows


def _evaluate_arm(arm: Arm, datasets: dict[str, tuple[Path, str]], exp: ExperimentConfig) -> tuple[list[dict], bool]:
    """Segment and evaluate each dataset with the arm's model, unless already done; per-subject rows.

    Outputs: ``<arm>/predictions/<dataset>/`` (masks, probabilities) and ``<arm>/evaluation/<dataset>/``
    (``metrics.csv``, ``summary.json`` - written last, so its presence marks a finished evaluation).

    Returns:
        ``(rows, did_work)``; rows of failed subjects are logged and left out.
    """
    from wmhkeras.evaluation.evaluate import METRICS_CSV, SUMMARY_JSON, evaluate

    rows, did_work, segmenter = [], False, None
    for key, (manifest, label) in datasets.items():
        pred_dir, eval_dir = arm.path / "predictions" / key, arm.path / "evaluation" / key
        if not (eval_dir / SUMMARY_JSON).is_file():
            from wmhkeras.inference.loaders import load_segmenter  # TensorFlow: only when there is work
            from wmhkeras.inference.record import SegmentSettings
            from wmhkeras.inference.segment import segment

            did_work = True
            segmenter = segmenter or load_segmenter(arm.path)
            result = segment(segmenter, [manifest], pred_dir, SegmentSettings(threshold=exp.threshold))
            if result.n_failed:
                log.warning("arm %s, %s: %d subject(s) failed to segment (see %s)", arm.name, key, result.n_failed,
                            result.summary_csv)
            evaluate(pred_dir, manifest, eval_dir, model_name=loss_label(arm.loss), dataset_name=label, qc=exp.qc)
        rows += _read_metrics(arm, key, eval_dir / METRICS_CSV)
    return rows, did_work


def run_arms(arms: list[Arm], cfg: Config, splits: dict[str, Split],
              manifests: dict[str, dict[str, tuple[Path, str]]], verbose: int) -> tuple[list[dict], list[dict]]:
    """Train and evaluate every arm in turn (finished work skipped): ``(arm records, per-subject rows)``."""
    records, rows = [], []
    for i, arm in enumerate(arms, 1):
        arm_start = time.monotonic()
        status = _train_arm(arm, arm_config(cfg, arm.loss, arm.seed), splits[arm.fold], verbose)
        arm_rows, evaluated = _evaluate_arm(arm, manifests[arm.fold], cfg.experiment)
        if status == "done":
            status = "evaluated" if evaluated else "skipped"
            if status == "skipped":
                log.info("skipping finished arm %s (%d/%d)", arm.name, i, len(arms))
        rows += arm_rows
        records.append({"fold": arm.fold, "loss": arm.loss, "seed": arm.seed, "path": str(arm.path), "status": status,
                        "seconds": round(time.monotonic() - arm_start, 1)})
        log.info("arm %d/%d %s: %s in %.0f s", i, len(arms), arm.name, status, records[-1]["seconds"])
    return records, rows
