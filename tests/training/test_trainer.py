"""The trainer: the resume check, loss/schedule wiring, a tiny real training, bad input via the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from tests.training.helpers import TINY, assert_best_is_the_best_of_the_log, read_log, tiny_cohort, tiny_config
from wmhkeras.data.datasets import read_manifest, write_manifest
from wmhkeras.data.synth import make_cohort
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.io.run_folder import RunFolder
from wmhkeras.losses import LossTermMetric
from wmhkeras.training.trainer import build_model, make_learning_rate, make_loss, make_metrics, train


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Six synthetic subjects on two sites (4 train / 1 validation / 1 hold-out)."""
    return tiny_cohort(tmp_path_factory.mktemp("cohort"))


def event_tags(folder: Path) -> set[str]:
    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


# === The resume check (fast) ===


def test_a_resume_takes_no_split_or_model_and_needs_a_run_folder(tmp_path):
    """The one resume check (RunFolder.check_resume), as train() and `train --resume` both apply it."""
    run = RunFolder(tmp_path / "run")
    with pytest.raises(ConfigError, match="give no CONFIG file, --out, --split or --init"):
        run.check_resume(given=True)
    with pytest.raises(ConfigError, match="give no CONFIG file"):
        train(None, run.path, resume=True, split={"train": [], "validation": [], "holdout": []}, verbose=0)
    with pytest.raises(InputError, match="run folder not found"):
        run.check_resume(given=False)
    run.path.mkdir()
    run.config.write_text("{}")
    with pytest.raises(InputError, match=r"split.json is missing"):
        train(None, run.path, resume=True, verbose=0)


# === Wiring of the config onto Keras objects (fast) ===


def test_learning_rate_schedules():
    cfg = tiny_config(train={"epochs": 4, "steps_per_epoch": 10, "learning_rate": 0.1})
    assert make_learning_rate(cfg) == 0.1
    cosine = make_learning_rate(replace(cfg, train=replace(cfg.train, lr_schedule="cosine")))
    np.testing.assert_allclose([float(cosine(s)) for s in (0, 20, 40)], [0.1, 0.05, 0.0], atol=1e-6)
    step = make_learning_rate(replace(cfg, train=replace(cfg.train, lr_schedule="step")))
    np.testing.assert_allclose([float(step(s)) for s in (0, 20, 21, 30, 31)], [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-5)


def test_loss_section_maps_onto_the_constructors():
    cfg = tiny_config(loss={"name": "hybrid", "overlap": "tversky", "weight": 0.5, "backbone": "vgg19",
                            "layers": ["block1_pool"], "reduction": "per_layer_mean"})
    loss = make_loss(cfg, (32, 32))
    assert loss.weight == 0.5 and type(loss.overlap).__name__ == "TverskyLoss"
    content = loss.content
    assert (content.backbone, content.layers, content.weights, content.reduction_mode) == (
        "vgg19", ("block1_pool",), "random", "per_layer_mean")
    assert [m.name for m in make_metrics(cfg, loss)] == ["dice", "content_loss", "tversky_loss"]
    with pytest.raises(ConfigError, match="finetune_backbone"):
        make_loss(tiny_config(loss={"finetune_backbone": True}), (32, 32))


def test_loss_term_metric_is_the_mean_of_the_term():
    from wmhkeras.losses import DiceLoss

    y_true = np.zeros((2, 4, 4, 2), np.float32)
    y_true[0, :2, :2, 0] = 1.0
    y_pred = np.zeros((2, 4, 4, 1), np.float32)
    y_pred[0, :2, :2, 0] = 1.0
    metric = LossTermMetric(DiceLoss(), name="dice_loss")
    metric.update_state(y_true, y_pred)
    # sample 0: perfect -> 0; sample 1: empty / empty -> 1 - 1/1 = 0; a third, all wrong: 1 - 1/5 = 0.8
    wrong = np.zeros((1, 4, 4, 1), np.float32)
    wrong[0, 0, 0, 0] = 1.0
    metric.update_state(y_true[:1], wrong + 0.0 * y_pred[:1])  # truth 4 px, prediction 1 px elsewhere
    assert float(metric.result()) == pytest.approx((0 + 0 + (1 - (2 * 1 + 1) / (4 + 1 + 1))) / 3)
    clone = LossTermMetric.from_config(metric.get_config())
    assert clone.name == "dice_loss" and type(clone.loss).__name__ == "DiceLoss"


def test_mixed_precision_keeps_loss_and_output_in_float32():
    cfg = tiny_config(loss={"name": "content"}, train={"precision": "mixed_float16"})
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, generator = build_model(cfg)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model is generator
    assert generator.get_layer("enc0_init").compute_dtype == "float16"
    assert generator.output.dtype == "float32"
    assert model.loss.get_backbone().layers[1].compute_dtype == "float32"
    assert type(model.optimizer).__name__ == "LossScaleOptimizer"


# === Training (slow) ===


@pytest.mark.slow
def test_two_epochs_write_the_run_folder(cohort, tmp_path):
    run_dir = tmp_path / "run"
    result = train(tiny_config(cohort), run_dir, verbose=0)
    run = RunFolder(run_dir)
    for path in (run.config, run.split, run.versions, run.summary, run.log, run.best, run.last, run.state):
        assert path.is_file(), path
    assert not list(tmp_path.glob(".tmp-*")) and not list(run.checkpoints.glob(".tmp-*"))

    summary = json.loads(run.summary.read_text())
    assert summary["epochs"] == 2 == result.epochs
    assert summary["finished"] is True and summary["loss"] == "dice"
    assert summary["subjects"] == {"train": 4, "validation": 1, "holdout": 1}
    assert summary["wall_time_s"] > 0
    assert result.history["loss"][1] < result.history["loss"][0]  # training lowers the loss

    rows = read_log(run.log)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert {"loss", "dice", "val_loss", "val_dice", "learning_rate"} <= set(rows[0])
    assert_best_is_the_best_of_the_log(run)
    state = json.loads(run.state.read_text())
    assert (state["epochs"], state["iterations"], state["running_epoch"]) == (2, 6, None)
    assert yaml.safe_load(run.config.read_text())["data"]["path"] == str(Path(cohort).resolve())
    assert set(json.loads(run.split.read_text())) == {"train", "validation", "holdout"}
    assert "tensorflow" in json.loads(run.versions.read_text())

    # best.keras: the bare generator, loadable without the loss or custom objects, of free input size
    best = keras.saving.load_model(run.best)
    # a fixed-mode run keeps the training size in best.keras (slices are resized to it); its free-size
    # copy (what segment uses in the spacing and none modes) runs on any size divisible by 2^depth
    assert getattr(best, "optimizer", None) is None and best.output_shape == (None, 32, 32, 1)
    from wmhkeras.models.unet import free_size

    assert free_size(best).predict(np.zeros((1, 32, 48, 1), "float32"), verbose=0).shape == (1, 32, 48, 1)
    # last.keras: with the optimizer state after 6 steps
    last = keras.saving.load_model(run.last)
    assert int(last.optimizer.iterations.numpy()) == 6

    assert {"epoch_loss", "epoch_dice", "epoch_learning_rate"} <= event_tags(run.tensorboard / "train")
    assert {"epoch_loss", "epoch_dice"} <= event_tags(run.tensorboard / "validation")
    assert "preview" in event_tags(run.tensorboard / "images")


@pytest.mark.slow
def test_content_loss_resumes_with_optimizer_state(cohort, tmp_path):
    cfg = tiny_config(cohort, loss={"name": "content", "weights": "random"},
                      train={"epochs": 1, "image_summary_every": 0})
    run_dir = tmp_path / "run"
    first = train(cfg, run_dir, verbose=0)
    assert first.epochs == 1 and first.summary.loss == "content"
    run = RunFolder(run_dir)
    # A kill between last.keras and state.json: the counter is taken from the checkpoint's optimizer.
    run.write_state(replace(run.read_state(), epochs=0, iterations=0))

    more = replace(cfg, train=replace(cfg.train, epochs=2))
    resumed = train(more, run_dir, resume=True, verbose=0)
    assert resumed.epochs == 2 and len(resumed.history["loss"]) == 1  # only epoch 2 ran in this call
    assert [r["epoch"] for r in read_log(run.log)] == ["0", "1"]
    assert json.loads(run.state.read_text())["iterations"] == 6
    assert yaml.safe_load(run.config.read_text())["train"]["epochs"] == 2
    with pytest.raises(ConfigError, match="already done"):
        train(None, run_dir, resume=True, verbose=0)


@pytest.mark.slow
def test_same_seed_gives_the_same_weights(cohort, tmp_path):
    cfg = tiny_config(cohort, model={"arch": "unet"},
                      train={"epochs": 1, "steps_per_epoch": 1, "image_summary_every": 0})
    weights = []
    for name in ("a", "b"):
        train(cfg, tmp_path / name, verbose=0)
        weights.append(keras.saving.load_model(tmp_path / name / "checkpoints" / "last.keras").get_weights())
    assert len(weights[0]) == len(weights[1])
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


# === Bad input: exit code 2, no run folder ===


@pytest.fixture
def write_config(tmp_path):
    def write(data: dict) -> Path:
        path = tmp_path / "cfg.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def run_cli(*args):
    from wmhkeras.cli.train import train_command

    return CliRunner().invoke(train_command, [str(a) for a in args])


def test_cli_unknown_config_key(tmp_path, write_config):
    config = write_config({**TINY, "train": {**TINY["train"], "epochz": 3}})
    result = run_cli(config, "--data", tmp_path, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "train.epochz: unknown key" in result.output
    assert not (tmp_path / "run").exists()


def test_cli_missing_file_in_manifest(tmp_path, write_config, cohort):
    subjects = read_manifest(cohort)
    subjects[0] = replace(subjects[0], flair=tmp_path / "nowhere" / "FLAIR.nii.gz")
    broken = write_manifest(subjects, tmp_path / "manifest.csv")
    result = run_cli(write_config(TINY), "--data", broken, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "error:" in result.output and "nowhere/FLAIR.nii.gz" in result.output
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-*"))


def test_cli_cohort_without_lesions(tmp_path, write_config):
    manifest = make_cohort(tmp_path / "clean", subjects=3, sites=1, seed=1, lesion_fraction=(0, 0)).manifest
    result = run_cli(write_config(TINY), "--data", manifest, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "lesion" in result.output
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".tmp-*"))


def test_cli_resume_rejects_config_files(tmp_path, write_config):
    result = run_cli(write_config(TINY), "--resume", tmp_path)
    assert result.exit_code == 2 and "--resume" in result.output
    result = run_cli()
    assert result.exit_code == 2 and "CONFIG" in result.output


def test_a_given_split_is_used_and_bad_ones_are_refused(cohort, tmp_path):
    from wmhkeras.data.datasets import read_manifest as read

    ids = [s.subject for s in read(cohort)]
    given = {"train": ids[2:], "validation": ids[:1], "holdout": ids[1:2]}
    cfg = tiny_config(cohort, train={"epochs": 1, "steps_per_epoch": 1, "image_summary_every": 0})
    result = train(cfg, tmp_path / "run", split=given, verbose=0)
    assert json.loads(RunFolder(result.run_dir).split.read_text()) == given
    again = train(cfg, tmp_path / "again", split=RunFolder(result.run_dir).split, verbose=0)  # a split.json
    assert json.loads(RunFolder(again.run_dir).split.read_text()) == given
    with pytest.raises(InputError, match="not in the dataset"):
        train(cfg, tmp_path / "bad", split={"train": ["nobody"], "validation": [], "holdout": []}, verbose=0)
    assert not (tmp_path / "bad").exists()
