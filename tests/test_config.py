import pytest
import yaml

from wmhkeras.config import (
    CONFIG_VERSION,
    Config,
    config_from_dict,
    deep_merge,
    load_config,
    parse_override,
    save_config,
)
from wmhkeras.errors import ConfigError

from .conftest import REPO


def test_shipped_configs_load_and_hold_the_paper_setup():
    cfg = load_config([REPO / "configs" / "paper.yaml"])
    assert cfg.version == CONFIG_VERSION
    assert (cfg.model.arch, cfg.model.input_size, cfg.model.depth, cfg.model.base_filters) == ("dense_unet", [224, 224], 5, 32)
    assert (cfg.loss.name, cfg.loss.backbone, cfg.loss.layers) == ("content", "vgg19", ["block1_pool", "block2_pool"])
    assert (cfg.train.learning_rate, cfg.train.batch_size, cfg.train.epochs, cfg.train.steps_per_epoch) == (1e-3, 8, 100, 100)
    assert cfg.augment.rotation_degrees == 30 and cfg.data.label_smoothing == [0.1, 0.9]
    demo = load_config([REPO / "configs" / "demo.yaml"])
    assert demo.loss.weights == "random"  # the demo asks for random backbone weights explicitly


def test_deep_merge_and_overrides(tmp_path):
    base = tmp_path / "a.yaml"
    extra = tmp_path / "b.yaml"
    base.write_text("train: {epochs: 5, batch_size: 4}\nmodel: {depth: 3}\n")
    extra.write_text("train: {epochs: 7}\n")
    cfg = load_config([base, extra], ["model.base_filters=16", "loss.layers=[block1_pool]", "data.lesion_fraction=null"])
    assert cfg.train.epochs == 7 and cfg.train.batch_size == 4  # merged, not replaced
    assert cfg.model.depth == 3 and cfg.model.base_filters == 16
    assert cfg.loss.layers == ["block1_pool"] and cfg.data.lesion_fraction is None
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
    assert parse_override("a.b.c=0.5") == {"a": {"b": {"c": 0.5}}}


def test_relative_data_path_is_taken_from_the_config_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "x.yaml").write_text("data: {path: ../cohort/manifest.csv}\n")
    cfg = load_config([tmp_path / "cfg" / "x.yaml"])
    assert cfg.data.path == str((tmp_path / "cohort" / "manifest.csv").resolve())


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epoch=3", "train.epoch: unknown key; known keys in train: epochs"),
        ("trian.epochs=3", "trian: unknown key"),
        ("loss.backbone=vgg11", "loss.backbone: 'vgg11' is not allowed; use one of 'vgg16', 'vgg19'"),
        ("train.epochs=many", "train.epochs: expected int, got 'many'"),
        ("train.epochs=0", "train.epochs: 0 is not allowed; use at least 1"),
        ("model.input_size=[200,200]", "model.input_size: [200, 200] is not allowed; each size must divide by 2^depth = 32"),
        ("data.split=[0.5,0.5,0.5]", "data.split: [0.5, 0.5, 0.5] is not allowed"),
        ("data.modalities=[t1]", "data.modalities: ['t1'] is not allowed; use [flair] or [flair, t1]"),
        ("data.label_smoothing=[0.6,0.9]", "data.label_smoothing: [0.6, 0.9] is not allowed"),
        ("train.jit_compile=1", "train.jit_compile: expected bool, got 1"),
        ("version=99", "version: 99 is newer than this wmhkeras understands"),

        ("train.epochs", "--set 'train.epochs': expected section.key=value"),
    ],
)
def test_validation_messages_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    assert message in str(err.value)


def test_cross_field_check_gamma_needs_max_normalisation():
    assert load_config([], ["augment.gamma=0.2"]).augment.gamma == 0.2
    assert load_config([], ["data.normalisation=zscore"]).data.normalisation == "zscore"
    with pytest.raises(ConfigError, match="augment.gamma: 0.2 is not allowed; gamma needs intensities in"):
        load_config([], ["augment.gamma=0.2", "data.normalisation=zscore"])


def test_ints_are_accepted_where_floats_are_expected():
    assert config_from_dict({"train": {"learning_rate": 1}}).train.learning_rate == 1.0


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config([REPO / "configs" / "paper.yaml"], ["train.epochs=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config([path]) == cfg
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3
    assert Config() == config_from_dict({})
