import pytest
import yaml

from wmhkeras.config import (
    CONFIG_VERSION,
    PCD_BIN_EDGES,
    Config,
    ExperimentConfig,
    config_from_dict,
    deep_merge,
    load_config,
    parse_override,
    save_config,
)
from wmhkeras.errors import ConfigError

from ..conftest import REPO


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
        ("data.resample=linear", "data.resample: 'linear' is not allowed; use one of 'fixed', 'spacing', 'none'"),
        ("data.spacing=[1]", "data.spacing: [1.0] is not allowed; use [x, y] in mm > 0"),
        ("data.spacing=[0,1]", "data.spacing: [0.0, 1.0] is not allowed; use [x, y] in mm > 0"),
        ("data.spacing=[1,-0.5]", "data.spacing: [1.0, -0.5] is not allowed; use [x, y] in mm > 0"),
        ("data.spacing=1", "data.spacing: expected a list, got 1"),
        ("data.context_slices=-1", "data.context_slices: -1 is not allowed; use 0 (2D) to 7"),
        ("data.context_slices=8", "data.context_slices: 8 is not allowed; use 0 (2D) to 7"),
        ("data.context_slices=1.5", "data.context_slices: expected int, got 1.5"),

        ("train.epochs", "--set 'train.epochs': expected section.key=value"),
    ],
)
def test_validation_messages_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config([], [override])
    assert message in str(err.value)


def test_resolution_keys_default_to_the_paper_behaviour():
    cfg = load_config([REPO / "configs" / "paper.yaml"])
    assert (cfg.data.resample, cfg.data.spacing, cfg.data.context_slices) == (None, [1.0, 1.0], 0)
    cfg = load_config([], ["data.resample=spacing", "data.spacing=[0.5,1]", "data.context_slices=2"])
    assert (cfg.data.resample, cfg.data.spacing, cfg.data.context_slices) == ("spacing", [0.5, 1.0], 2)


def test_augment_ranges_are_checked_and_gamma_works_with_zscore():
    cfg = load_config([], ["augment.gamma=0.2", "data.normalisation=zscore", "augment.scale=0.2",
                           "augment.intensity_shift=0.1", "augment.noise=0.05"])
    assert (cfg.augment.gamma, cfg.augment.scale, cfg.augment.intensity_shift, cfg.augment.noise) == (0.2, 0.2, 0.1, 0.05)
    with pytest.raises(ConfigError, match="augment.scale: 1.0 is not allowed"):
        load_config([], ["augment.scale=1.0"])
    with pytest.raises(ConfigError, match="augment.noise: -0.1 is not allowed"):
        load_config([], ["augment.noise=-0.1"])
    assert load_config([], ["augment.histogram_shift=0.25"]).augment.histogram_shift == 0.25
    with pytest.raises(ConfigError, match=r"augment.histogram_shift: 0.5 is not allowed.*strictly increasing"):
        load_config([], ["augment.histogram_shift=0.5"])


def test_ints_are_accepted_where_floats_are_expected():
    assert config_from_dict({"train": {"learning_rate": 1}}).train.learning_rate == 1.0


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config([REPO / "configs" / "paper.yaml"], ["train.epochs=3"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config([path]) == cfg
    assert yaml.safe_load(path.read_text())["train"]["epochs"] == 3
    assert Config() == config_from_dict({})


# === The experiment section ===


def write_config(tmp_path, data: dict, name: str = "exp.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_experiment_config_defaults_and_overrides(tmp_path):
    path = write_config(tmp_path, {"train": {"seed": 3}, "experiment": {"external": "ext/manifest.csv"}})
    cfg = load_config([path], ["experiment.folds=4"])
    exp = cfg.experiment
    assert exp.losses == ["dice", "tversky", "generalized_dice", "content"]
    assert exp.reference == "content" and exp.seeds == [3] and exp.split_seed == 3
    assert exp.folds == 4 and exp.mode == "kfold"
    assert exp.external == str((tmp_path / "ext" / "manifest.csv").resolve())  # relative to the config file
    assert cfg.train.seed == 3
    exp = load_config([write_config(tmp_path, {"experiment": {"losses": ["tversky", "dice"]}})]).experiment
    assert exp.reference == "tversky" and exp.mode == "holdout"


def test_experiment_section_is_optional_and_written_only_when_present(tmp_path):
    cfg = load_config([])
    assert cfg.experiment is None and "experiment" not in cfg.to_dict()  # a run config writes no experiment
    exp = load_config([], experiment=True).experiment  # wmhkeras experiment: every run config is one
    assert exp == ExperimentConfig(reference="content", seeds=[0], split_seed=0)
    assert exp.pcd_bins == list(PCD_BIN_EDGES)
    full = load_config([], ["experiment.qc=true"])
    path = save_config(full, tmp_path / "config.yaml")
    assert list(yaml.safe_load(path.read_text()))[-1] == "experiment"  # the last section, as before
    assert load_config([path]) == full


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
def test_experiment_config_errors(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config([write_config(tmp_path, {"experiment": section})])


def test_experiment_without_a_test_set_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="experiment.external"):
        load_config([write_config(tmp_path, {"data": {"split": [0.9, 0.1, 0.0]}})], experiment=True)


def test_a_run_saved_before_a_changed_default_reads_back_as_it_ran(tmp_path):
    from wmhkeras.config import load_run_config

    saved = load_config(REPO / "configs" / "real_flair.yaml").to_dict()
    assert saved["data"]["lesion_position"] == "random"
    old = {**saved, "data": {k: v for k, v in saved["data"].items() if k != "lesion_position"}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(saved))
    # a saved run config that lacks the key ran with its lesion voxels at the patch centre
    assert load_run_config(tmp_path / "old.yaml").data.lesion_position == "centre"
    assert load_run_config(tmp_path / "new.yaml").data.lesion_position == "random"
    # a user's config without the key gets today's default; overrides apply to run configs too
    assert load_config(tmp_path / "old.yaml").data.lesion_position == "random"
    assert load_run_config(tmp_path / "old.yaml", ["data.lesion_position=random", "train.epochs=3"]).train.epochs == 3
    assert load_run_config(tmp_path / "old.yaml", ["data.lesion_position=random"]).data.lesion_position == "random"


@pytest.mark.parametrize("overrides, message", [
    (["data.sampling=patches", "data.hard_negatives.share=1.5"], "data.hard_negatives.share: 1.5 is not allowed"),
    (["data.sampling=patches", "data.hard_negatives.share=0.5", "data.hard_negatives.brightest=0"],
     "data.hard_negatives.brightest: 0"),
    (["data.sampling=slices", "data.hard_negatives.share=0.5"], "use data.sampling: patches"),
    (["data.sampling=patches", "data.hard_negatives.share=0.5", "data.lesion_fraction=null"],
     "share of the lesion-free patches"),
    (["data.sampling=patches", "data.hard_negatives.share=0.5", "data.lesion_fraction=1.0"],
     "share of the lesion-free patches"),
])
def test_hard_negatives_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config([], overrides)


def test_hard_negatives_are_off_by_default_and_load_from_a_file(tmp_path):
    assert load_config([]).data.hard_negatives.share == 0.0
    path = write_config(tmp_path, {"data": {"sampling": "patches", "hard_negatives": {"share": 0.25}}})
    cfg = load_config([path])
    assert (cfg.data.hard_negatives.share, cfg.data.hard_negatives.brightest) == (0.25, 0.05)
    assert load_config([save_config(cfg, tmp_path / "saved.yaml")]) == cfg
