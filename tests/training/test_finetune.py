"""Fine-tuning (`wmhkeras train --init MODEL`): refused when the weights would mean something else, before
any work; the run starts from the model's weights, at finetune.learning_rate, with the encoder frozen as
asked, records the model (init.json) and hands its lineage to the exported card."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tests.inference.helpers import tiny_model_file
from tests.training.helpers import tiny_config
from wmhkeras.cli.main import main
from wmhkeras.config import load_config, save_config
from wmhkeras.data.synth import make_cohort
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.inference.sources import init_record
from wmhkeras.io.files import path_sha256
from wmhkeras.io.model_card import ModelCard
from wmhkeras.io.run_folder import RunFolder, Split
from wmhkeras.models.unet import build_generator
from wmhkeras.registration import load_model
from wmhkeras.training.finetune import check_init_config, encoder_layers
from wmhkeras.training.trainer import train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("cohort"), subjects=6, sites=2, seed=0).manifest


@pytest.fixture(scope="module")
def base(cohort, tmp_path_factory):
    """A tiny run trained from scratch: the model the fine-tuning tests start from."""
    run = tmp_path_factory.mktemp("base") / "run"
    train(tiny_config(cohort, train={"epochs": 1, "steps_per_epoch": 2, "image_summary_every": 0}), run, verbose=0)
    return run


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run folder as training leaves it (config, split, best.keras), without training: the tiny config's
    generator, untrained, on a dataset that does not exist (the checks below never read data)."""
    run = RunFolder(tmp_path_factory.mktemp("saved") / "run")
    run.checkpoints.mkdir(parents=True)
    cfg = tiny_config(run.path / "never_read.csv")
    save_config(cfg, run.config)
    run.write_split(Split(("a", "b", "c", "d"), ("e",), ("f",)))
    m = cfg.model
    build_generator(m.arch, input_shape=(None, None, 1), depth=m.depth, base_filters=m.base_filters).save(run.best)
    return run.path


def _weights(path: Path, encoder: bool) -> dict[str, np.ndarray]:
    model = load_model(path)
    names = {layer.name for layer in encoder_layers(model)}
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights if (v.path.split("/")[0] in names) == encoder}


def _config_file(folder: Path, cohort: Path, **sections) -> Path:
    path = folder / "config.yaml"
    save_config(tiny_config(cohort, **sections), path)
    return path


@pytest.mark.parametrize("key, change, shown", [
    ("model.base_filters", {"model": {"base_filters": 8}}, "model.base_filters 4 in the model, 8 in this config"),
    ("model.arch", {"model": {"arch": "unet"}}, "model.arch dense_unet in the model, unet in this config"),
    ("model.depth", {"model": {"depth": 3}}, "model.depth 2 in the model, 3 in this config"),
    ("data.modalities", {"data": {"modalities": ["flair", "t1"]}}, "data.modalities ['flair'] in the model, ['flair', 't1']"),
    ("data.context_slices", {"data": {"context_slices": 1}}, "data.context_slices 0 in the model, 1 in this config"),
    ("data.normalisation", {"data": {"normalisation": "zscore"}}, "data.normalisation max in the model, zscore"),
    ("data.resample", {"data": {"resample": "spacing"}}, "data.resample fixed in the model, spacing in this config"),
    ("model.input_size", {"model": {"input_size": [64, 64]}}, "model.input_size [32, 32] in the model, [64, 64]"),
])
def test_a_config_that_disagrees_with_the_model_is_refused_before_any_work(saved_run, tmp_path, key, change, shown):
    config = _config_file(tmp_path, tmp_path / "never_read.csv", **change)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", str(config), "--init", str(saved_run), "--out", str(out)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"--init {saved_run}: the config disagrees with the model" in errors[0]
    assert shown in errors[0] and not out.exists()


def test_other_settings_may_change_and_the_record_says_what_was_loaded(saved_run, tmp_path):
    record = init_record(saved_run)
    assert (record.format, record.builtin, record.sha256) == ("keras", None, path_sha256(RunFolder(saved_run).best))
    assert record.training_data == {"dataset": str(saved_run / "never_read.csv"),
                                    "subjects": {"train": 4, "validation": 1, "holdout": 1}}
    # what does not change the weights' meaning: patches, batch, loss, augmentation, epochs, prior
    cohort = tmp_path / "other.csv"
    check_init_config(tiny_config(cohort, data={"sampling": "patches", "patch_size": [16, 16], "resample": "fixed"},
                                  loss={"name": "dice_bce"}, augment={"flip": True}, model={"output_prior": 0.01},
                                  train={"batch_size": 2}), record)


def test_weights_that_do_not_fit_are_refused_before_the_data_is_read(tmp_path, caplog):
    bare = tiny_model_file(tmp_path / "other.keras")  # a plain U-Net outside any run: no settings recorded
    with pytest.raises(ConfigError, match=r"weights do not fit this config's model: .*enc0_.* in this config"):
        train(tiny_config(tmp_path / "no_such_manifest.csv"), tmp_path / "out", verbose=0, init=init_record(bare))
    assert "records no preprocessing" in caplog.text and not (tmp_path / "out").exists()


def test_what_cannot_start_a_training(saved_run, tmp_path):
    export = tmp_path / "export"
    (export / "tflite").mkdir(parents=True)
    (export / "tflite" / "model_fp32.tflite").write_bytes(b"")
    (export / "model_card.json").write_text(json.dumps({"modalities": ["flair"], "normalisation": "max",
                                                       "input_size": [32, 32]}))
    with pytest.raises(InputError, match="a TFLite file cannot start a training"):
        init_record(export / "tflite" / "model_fp32.tflite")
    with pytest.raises(ConfigError, match="freeze_encoder_epochs: 1 freezes the encoder of the model given by --init"):
        train(tiny_config(tmp_path / "never_read.csv", finetune={"freeze_encoder_epochs": 1}), tmp_path / "scratch",
              verbose=0)
    result = CliRunner().invoke(main, ["train", "--resume", str(saved_run), "--init", str(saved_run)])
    assert result.exit_code == 2 and "give no CONFIG file, --out, --split or --init" in result.output


@pytest.mark.slow
def test_finetuning_starts_from_the_weights_freezes_the_encoder_and_is_recorded(base, cohort, tmp_path):
    cfg = tiny_config(cohort, train={"epochs": 2, "steps_per_epoch": 2, "image_summary_every": 0},
                      finetune={"learning_rate": 0.002, "freeze_encoder_epochs": 2})  # frozen throughout
    run = RunFolder(tmp_path / "ft")
    train(cfg, run.path, verbose=0, init=init_record(base))
    start, end = RunFolder(base).best, run.last
    for key, value in _weights(start, encoder=True).items():  # the encoder (BatchNorm statistics too) as it was
        np.testing.assert_array_equal(_weights(end, encoder=True)[key], value, err_msg=key)
    moved = [k for k, v in _weights(start, encoder=False).items() if not np.array_equal(_weights(end, encoder=False)[k], v)]
    assert moved  # the decoder trained
    saved = yaml.safe_load(run.config.read_text())
    assert saved["train"]["learning_rate"] == 0.002  # finetune.learning_rate, recorded as the run's rate
    record = run.read_init()
    assert (record.model, record.sha256) == (str(base), path_sha256(start))
    # resumed for more epochs: the same record, the encoder trained once the frozen epochs are over
    result = CliRunner().invoke(main, ["train", "--resume", str(run.path), "--set", "train.epochs=3",
                                       "--set", "finetune.freeze_encoder_epochs=2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert run.read_init() == record
    changed = [k for k, v in _weights(start, encoder=True).items() if not np.array_equal(_weights(run.last, encoder=True)[k], v)]
    assert changed


@pytest.mark.slow
def test_export_of_a_finetuned_run_keeps_its_lineage_and_its_savedmodel_starts_a_training(base, cohort, tmp_path):
    ft = tmp_path / "ft"
    train(tiny_config(cohort, train={"epochs": 1, "steps_per_epoch": 1, "image_summary_every": 0}), ft, verbose=0,
          init=init_record(base))
    export = tmp_path / "export"
    result = CliRunner().invoke(main, ["export", str(ft), "--out", str(export), "--tflite", "none",
                                       "--saved-model", "float32"])
    assert result.exit_code == 0, result.output
    card = ModelCard.read(export / "model_card.json")
    assert card.parent.sha256 == path_sha256(RunFolder(base).best) and card.parent.format == "keras"
    assert card.parent.training_data.subjects == {"train": 4, "validation": 1, "holdout": 1}
    assert card.training_data.subjects == {"train": 4, "validation": 1, "holdout": 1}
    # the export as a starting point: its SavedModel's variables are the fine-tuned weights
    from wmhkeras.training.finetune import read_init_weights

    record = init_record(export)
    assert record.format == "saved_model" and record.parent["sha256"] == card.parent.sha256
    weights = read_init_weights(record)
    for key, value in _weights(RunFolder(ft).best, encoder=True).items():
        np.testing.assert_allclose(weights[key], value, err_msg=key)
    check_init_config(tiny_config(cohort), record)


def test_configs_finetune_matches_the_shipped_model():
    check_init_config(load_config(REPO / "configs" / "finetune.yaml"), init_record("open_ms_flair"))
    with pytest.raises(ConfigError, match="data.normalisation zscore in the model, max in this config"):
        check_init_config(load_config(REPO / "configs" / "demo.yaml"), init_record("open_ms_flair"))


@pytest.mark.slow
def test_finetune_the_builtin_model_with_configs_finetune(cohort, tmp_path):
    out = tmp_path / "site"
    result = CliRunner().invoke(main, [
        "train", str(REPO / "configs" / "finetune.yaml"), "--init", "open_ms_flair", "--data", str(cohort),
        "--out", str(out), "--quiet", "--set", "train.epochs=2", "--set", "train.steps_per_epoch=1",
        "--set", "train.batch_size=2", "--set", "data.split=[1.0, 0.0, 0.0]"])
    assert result.exit_code == 0, result.output
    assert "starting from open_ms_flair" in result.output
    record = RunFolder(out).read_init()
    assert record.builtin == "open_ms_flair" and record.training_data["licence"].startswith("CC-BY")
