"""Helpers shared by the training tests: the input pipeline's small config, split and sample counts; the tiny
training setup and the checks of a run's log."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from wmhkeras.config import config_from_dict
from wmhkeras.data.synth import make_cohort
from wmhkeras.io.run_folder import RunFolder, Split
from wmhkeras.training.cache import BRAIN_THRESHOLD

N_SAMPLES = 2000
BATCH = 8
SPLIT = Split(train=("sub-001", "sub-002", "sub-003", "sub-005"), validation=("sub-004", "sub-006"))


def make_cfg(**data):
    sections = {"model": {"input_size": [64, 64], "depth": 3}, "train": {"batch_size": BATCH, "seed": 0}}
    for key in ("augment", "train", "model"):
        if key in data:
            sections[key] = {**sections.get(key, {}), **data.pop(key)}
    return config_from_dict({"data": {"cache": "memory", **data}, **sections})


def lesion_share(dataset, samples=N_SAMPLES) -> float:
    """Share of samples whose (soft) mask has a lesion voxel."""
    hits = total = 0
    for _, y in dataset.take(samples // BATCH):
        hits += int((y.numpy()[..., 0] > 0.5).any(axis=(1, 2)).sum())
        total += y.shape[0]
    return hits / total


def brain_share(x: np.ndarray) -> np.ndarray:
    """Per-sample fraction of brain voxels of the max-normalised FLAIR ``x[..., 0]``."""
    return (x[..., 0] > BRAIN_THRESHOLD).mean(axis=(1, 2))


#: The tiny setup of every training test: 32 x 32 slices, depth 2, 4 filters, 3 steps of 4 slices.
TINY = {
    "data": {"split": [0.6, 0.2, 0.2], "lesion_fraction": 0.7},
    "model": {"arch": "dense_unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
    "loss": {"name": "dice", "weights": "random"},
    "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 4, "learning_rate": 0.01, "image_summary_every": 1},
}


def tiny_config(manifest=None, **sections):
    data = {key: dict(value) for key, value in TINY.items()}
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    if manifest is not None:
        data["data"]["path"] = str(manifest)
    return config_from_dict(data)


def read_log(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_best_is_the_best_of_the_log(run: RunFolder) -> None:
    """summary.json's and state.json's best validation Dice and epoch are those of the best row of log.csv,
    and best.keras is that epoch's model (its file's hash is the one state.json records)."""
    from wmhkeras.io.checkpoints import sha256

    dice = [float(r["val_dice"]) for r in read_log(run.log)]
    summary, state = json.loads(run.summary.read_text()), json.loads(run.state.read_text())
    assert summary["best_val_dice"] == pytest.approx(max(dice), rel=1e-6) == state["best"]
    assert summary["best_epoch"] == dice.index(max(dice)) + 1 == state["best_epoch"]
    assert state["best_sha256"] == sha256(run.best)


def tiny_cohort(folder: Path) -> Path:
    """Six synthetic subjects on two sites (4 train / 1 validation / 1 hold-out) in ``folder``: the manifest."""
    return make_cohort(folder, subjects=6, sites=2, seed=0).manifest
