"""Model sources: a run folder, an exported SavedModel or TFLite file and its model card, each loaded and checked."""

import json
import logging
import shutil

import keras
import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras.cli.main  # noqa: F401  (the group first: the command modules import it back)
from tests.inference.helpers import blob_volume, free_model_file, run_folder, tiny_model_file, write_nifti
from wmhkeras.cli.segment import segment_command
from wmhkeras.config import config_from_dict, save_config
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.inference.loaders import load_segmenter
from wmhkeras.inference.predictor import predict_volume
from wmhkeras.inference.sources import inspect_model


def test_run_folder_with_t1(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    tiny_model_file(run / "checkpoints" / "last.keras", channels=2)
    save_config(config_from_dict({"data": {"modalities": ["flair", "t1"], "normalisation": "zscore"},
                                  "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4}}),
                run / "config.yaml")
    spec = inspect_model(run)
    assert (spec.format, spec.path.name, spec.modalities, spec.normalisation, spec.input_size) == (
        "run", "last.keras", ("flair", "t1"), "zscore", (32, 32))
    flair = write_nifti(tmp_path / "a_FLAIR.nii.gz", blob_volume(), np.eye(4))
    t1 = write_nifti(tmp_path / "a_T1.nii.gz", blob_volume(1), np.eye(4))
    res = CliRunner().invoke(segment_command, [str(run), str(flair), "--t1", str(t1), "--out", str(tmp_path / "o"),
                                               "--tta", "--min-lesion-mm3", "5", "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "a_wmh_mask.nii.gz").is_file()
    # a T1 on another grid is refused by the header pre-pass (exit 2), before the model runs; nothing written
    t1_bad = write_nifti(tmp_path / "b_T1.nii.gz", blob_volume(1), np.diag([2.0, 1, 1, 1]))
    res = CliRunner().invoke(segment_command, [str(run), str(flair), "--t1", str(t1_bad), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "affine differs" in res.output and not (tmp_path / "p").exists()


def _export_layout(root, card):
    """The folders `wmhkeras export` writes, with empty model files (read without TensorFlow)."""
    (root / "saved_model").mkdir(parents=True)
    (root / "saved_model" / "saved_model.pb").write_bytes(b"")
    (root / "tflite").mkdir()
    (root / "tflite" / "model_fp32.tflite").write_bytes(b"")
    if card is not None:
        (root / "model_card.json").write_text(json.dumps(card))
    return root


def test_exported_sources_take_their_settings_from_the_model_card(tmp_path):
    card = {"modalities": ["flair", "t1"], "normalisation": "zscore", "input_size": [64, 48]}
    export = _export_layout(tmp_path / "exported", card)
    for path, fmt in ((export, "saved_model"), (export / "saved_model", "saved_model"),
                      (export / "tflite" / "model_fp32.tflite", "tflite")):
        spec = inspect_model(path)
        assert (spec.format, spec.modalities, spec.normalisation, spec.input_size) == (
            fmt, ("flair", "t1"), "zscore", (64, 48))


@pytest.mark.parametrize("card, message", [
    (None, "without model_card.json"),
    ({"modalities": ["flair"], "normalisation": "max"}, "expected JSON with modalities, normalisation and input_size"),
    ({"modalities": ["t1"], "normalisation": "max", "input_size": [32, 32]}, "not allowed"),
    ({"modalities": ["flair"], "normalisation": "minmax", "input_size": [32, 32]}, "normalisation 'minmax' is not known"),
    ({"modalities": ["flair"], "normalisation": "max", "input_size": [32]}, "must be \\[height, width\\]"),
])
def test_a_missing_or_bad_model_card_is_refused(tmp_path, card, message):
    export = _export_layout(tmp_path / "exported", card)
    for path in (export, export / "tflite" / "model_fp32.tflite"):
        with pytest.raises(InputError, match=message):
            inspect_model(path)


def test_saved_model_matches_keras(tmp_path, tiny_model):
    import keras

    # the layout of `wmhkeras export`: OUT/saved_model/ and OUT/model_card.json beside it
    export_dir = tmp_path / "exported"
    keras.saving.load_model(tiny_model).export(str(export_dir / "saved_model"), format="tf_saved_model", verbose=False)
    (export_dir / "model_card.json").write_text(json.dumps(
        {"modalities": ["flair"], "normalisation": "max", "input_size": [32, 32]}))
    assert inspect_model(export_dir).format == "saved_model"
    saved, native = load_segmenter(export_dir / "saved_model"), load_segmenter(tiny_model)
    assert saved.input_size == (32, 32) and saved.modalities == ("flair",)
    vol = blob_volume()
    np.testing.assert_allclose(predict_volume(saved, [vol]), predict_volume(native, [vol]), atol=1e-5)


# === Resampling and 2.5D context carried by the source ===


def test_bare_free_size_keras_file_segments_in_none_mode(tmp_path):
    path = free_model_file(tmp_path / "free.keras")
    spec = inspect_model(path)
    assert (spec.modalities, spec.input_size, spec.context_slices) == (("flair",), None, 0)
    assert (spec.resampling.mode, spec.resampling.multiple) == ("none", 4)  # 2 MaxPooling2D layers
    affine = np.diag([0.9, 0.9, 3.0, 1.0])
    vol = np.random.default_rng(0).random((37, 29, 5)).astype(np.float32)
    flair = write_nifti(tmp_path / "a.nii.gz", vol, affine)
    res = CliRunner().invoke(segment_command, [str(path), str(flair), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    out = nib.load(str(tmp_path / "o" / "a_wmh_prob.nii.gz"))
    assert out.shape == vol.shape
    np.testing.assert_allclose(out.affine, affine, atol=1e-6)  # as stored: float32
    # on the native grid: the model sees each slice padded to 40 x 32, and the crop is the input's grid
    seg = load_segmenter(path)
    assert tuple(seg.preprocess([vol]).shape) == (5, 40, 32, 1)
    np.testing.assert_allclose(np.asarray(out.dataobj), predict_volume(seg, [vol]), atol=1e-6)


def test_run_folder_carries_resampling_and_context(tmp_path):
    run = run_folder(tmp_path / "run", {"resample": "spacing", "spacing": [1.0, 0.8], "context_slices": 1}, channels=3)
    spec = inspect_model(run)
    assert (spec.modalities, spec.input_size, spec.context_slices) == (("flair",), None, 1)
    assert (spec.resampling.mode, spec.resampling.spacing, spec.resampling.multiple) == ("spacing", (1.0, 0.8), 4)
    seg = load_segmenter(run)
    assert seg.channels == 3
    with pytest.raises(InputError, match="needs the volume's voxel size"):
        seg.preprocess([blob_volume()])
    # 32 x 1 mm -> 32 px, 32 x 1 mm / 0.8 mm -> 40 px: the model grid; three slices per channel
    assert tuple(seg.preprocess([blob_volume()], (1.0, 1.0, 2.0)).shape) == (10, 32, 40, 3)
    # fixed by default for whole slices; patches default to the native grid
    assert inspect_model(run_folder(tmp_path / "r2")).resampling.mode == "fixed"
    assert inspect_model(run_folder(tmp_path / "r3", {"sampling": "patches"})).resampling.mode == "none"


def test_run_config_that_disagrees_with_the_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="context_slices 1"):
        inspect_model(run_folder(tmp_path / "a", {"context_slices": 1}, channels=1))
    fixed = tmp_path / "b"
    (fixed / "checkpoints").mkdir(parents=True)
    tiny_model_file(fixed / "checkpoints" / "best.keras")  # 32 x 32 only
    save_config(config_from_dict({"data": {"resample": "fixed"}, "model": {"arch": "unet", "input_size": [64, 64],
                                                                           "depth": 2, "base_filters": 4}}),
                fixed / "config.yaml")
    with pytest.raises(ConfigError, match="input_size \\[64, 64\\]"):
        inspect_model(fixed)


def test_a_checkpoint_built_for_one_size_segments_whole_slices(tmp_path):
    """A patch-trained checkpoint (32 x 32, e.g. from before free-size generators, or a training-state
    last.keras) segments a whole 48 x 40 slice natively: it is loaded as its free-size copy."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    tiny_model_file(run / "checkpoints" / "best.keras")
    save_config(config_from_dict({"data": {"sampling": "patches", "patch_size": [32, 32]},
                                  "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4}}),
                run / "config.yaml")
    assert inspect_model(run).resampling.mode == "none"
    seg = load_segmenter(run)
    assert tuple(seg.model.input_shape) == (None, None, None, 1)
    volume = np.random.default_rng(0).random((48, 40, 3)).astype(np.float32)
    prob = predict_volume(seg, [volume])
    assert prob.shape == volume.shape
    # the reference: the same weights in the fixed-size model built for 48 x 40 slices
    from wmhkeras.models import build_generator

    fixed = build_generator("unet", input_shape=(48, 40, 1), depth=2, base_filters=4)
    fixed.set_weights(keras.saving.load_model(run / "checkpoints" / "best.keras").get_weights())
    slices = seg.preprocess([volume])
    assert tuple(slices.shape) == (3, 48, 40, 1)  # resample none: the slices as they are (48, 40 divide by 4)
    expected = np.asarray(seg.restore(fixed(slices, training=False), volume.shape))
    np.testing.assert_allclose(prob, expected, atol=1e-5)
    assert prob.std() > 1e-3  # not a constant map


@pytest.mark.parametrize("card, message", [
    ({"input_size": None}, "resample 'fixed' needs it"),
    ({"input_size": None, "resample": {"mode": "spacing", "multiple": 4}}, "spacing None must be \\[x, y\\]"),
    ({"input_size": None, "resample": {"mode": "sinc", "multiple": 4}}, "mode one of fixed, spacing, none"),
    ({"input_size": None, "resample": {"mode": "none", "multiple": 0}}, "multiple 0"),
    ({"input_size": [32, 32], "context_slices": -1}, "context_slices -1"),
])
def test_bad_resampling_in_a_model_card_is_refused(tmp_path, card, message):
    export = _export_layout(tmp_path / "exported", {"modalities": ["flair"], "normalisation": "max", **card})
    with pytest.raises(InputError, match=message):
        inspect_model(export)


def test_card_of_a_free_model_with_context(tmp_path):
    card = {"modalities": ["flair", "t1"], "normalisation": "max", "input_size": None, "context_slices": 2,
            "resample": {"mode": "spacing", "spacing": [1.0, 1.0], "multiple": 32}}
    spec = inspect_model(_export_layout(tmp_path / "exported", card) / "tflite" / "model_fp32.tflite")
    assert (spec.input_size, spec.context_slices, spec.modalities) == (None, 2, ("flair", "t1"))
    assert (spec.resampling.mode, spec.resampling.spacing, spec.resampling.multiple) == ("spacing", (1.0, 1.0), 32)


# === Where the card of an exported model is found ===


def test_card_inside_the_saved_model_travels_with_it(tmp_path):
    """The card in ``saved_model/assets.extra/`` wins over the one beside it, and a copied SavedModel folder
    alone still carries its settings; an older export (card beside only) still reads."""
    export = _export_layout(tmp_path / "exported", {"modalities": ["flair"], "normalisation": "max",
                                                    "input_size": [32, 32]})
    inside = export / "saved_model" / "assets.extra" / "model_card.json"
    assert inspect_model(export).input_size == (32, 32)  # older export
    inside.parent.mkdir()
    inside.write_text(json.dumps({"modalities": ["flair", "t1"], "normalisation": "zscore", "input_size": [64, 48]}))
    spec = inspect_model(export / "saved_model")
    assert (spec.modalities, spec.input_size, spec.card.normalisation) == (("flair", "t1"), (64, 48), "zscore")
    copy = tmp_path / "copied"
    shutil.copytree(export / "saved_model", copy)
    assert inspect_model(copy).input_size == (64, 48)
    (copy / "assets.extra" / "model_card.json").unlink()
    with pytest.raises(InputError, match="looked in its assets.extra/, inside and beside it"):
        inspect_model(copy)


def test_serving_layout_is_found_from_the_export_and_the_base_folder(tmp_path):
    """``--serving-version``: the SavedModel at ``<export>/<name>/<N>/``; the export folder finds it through
    its card, the serving base folder ``<export>/<name>`` by its highest version."""
    card = {"modalities": ["flair"], "normalisation": "max", "input_size": [32, 32], "saved_model": "wmh/10"}
    export = tmp_path / "exported"
    for version in (2, 10):
        (export / "wmh" / str(version) / "assets.extra").mkdir(parents=True)
        (export / "wmh" / str(version) / "saved_model.pb").write_bytes(b"")
        (export / "wmh" / str(version) / "assets.extra" / "model_card.json").write_text(json.dumps(card))
    (export / "model_card.json").write_text(json.dumps(card))
    for path in (export, export / "wmh", export / "wmh" / "10"):
        spec = inspect_model(path)
        assert (spec.format, spec.path) == ("saved_model", export / "wmh" / "10"), path


@pytest.mark.parametrize("data, warned", [
    ({"sampling": "patches", "patch_size": [32, 32], "lesion_position": "centre"}, True),
    ({"sampling": "patches", "patch_size": [32, 32], "lesion_position": "random"}, False),
    ({"sampling": "slices", "lesion_position": "centre"}, False),     # whole slices have no patch centre
])
def test_a_run_trained_with_centred_lesions_is_flagged(tmp_path, caplog, data, warned):
    run = run_folder(tmp_path / "run", data)
    caplog.set_level(logging.WARNING, logger="wmhkeras")
    inspect_model(run)
    flagged = [r.getMessage() for r in caplog.records if "centre prior" in r.getMessage()]
    assert bool(flagged) == warned, flagged


def test_an_old_patch_run_without_lesion_position_is_flagged(tmp_path, caplog):
    """A config.yaml saved before the key existed is read as ``centre`` (the run's own behaviour)."""
    import yaml

    run = run_folder(tmp_path / "run", {"sampling": "patches", "patch_size": [32, 32]})
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["data"]["lesion_position"]
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    caplog.set_level(logging.WARNING, logger="wmhkeras")
    inspect_model(run)
    assert any("centre prior" in r.getMessage() and str(run) in r.getMessage() for r in caplog.records)
