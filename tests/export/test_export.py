"""``wmhkeras export``: SavedModel + TFLite artifacts, their verification, and refusals of bad input.

The test model is the tiny ``unet`` (32x32x1, depth 2, 4 filters) trained for a few dozen steps on
slices of a small synthetic cohort. Its target is a stand-in for lesions, "normalised FLAIR above 0.5"
(about a fifth of the pixels): the real lesions vanish at 32x32, and an untrained net outputs about 0.5
everywhere, where masks thresholded at 0.5 flip on rounding noise and the Dice checks of the quantised
variants would measure nothing. The run folder is laid out as ``wmhkeras train`` writes it
(:class:`wmhkeras.io.run_folder.RunFolder`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from click.testing import CliRunner  # noqa: E402

from wmhkeras.cli.export import export_command  # noqa: E402
from wmhkeras.config import config_from_dict, save_config  # noqa: E402
from wmhkeras.data.datasets import check_subject, load_dataset  # noqa: E402
from wmhkeras.data.preprocessing import preprocess_volume, restore_volume  # noqa: E402
from wmhkeras.data.splits import make_split, save_split  # noqa: E402
from wmhkeras.data.synth import SiteParams, make_cohort  # noqa: E402
from wmhkeras.errors import ConfigError, InputError, WmhError  # noqa: E402
from wmhkeras.export import runner as ex  # noqa: E402
from wmhkeras.io.run_folder import RunFolder  # noqa: E402
from wmhkeras.models.unet import build_generator  # noqa: E402

SITES = [
    SiteParams("siteA", (2.0, 2.0, 4.0), (56, 64, 16), 400.0),
    SiteParams("siteB", (2.2, 2.2, 4.0), (52, 60, 14), 900.0, noise=0.04),
]


def _train_tiny(slices: np.ndarray) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_generator("unet", input_shape=(32, 32, 1), depth=2, base_filters=4)
    for layer in model.layers:  # moving statistics must catch up within a few dozen steps
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.7
    model.compile(keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    model.fit(slices, (slices > 0.5).astype(np.float32), batch_size=16, epochs=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder: 6 synthetic subjects on 2 sites, split 4 / 1 / 1, the trained tiny U-Net as best.keras."""
    root = tmp_path_factory.mktemp("export_run")
    cohort = make_cohort(root / "cohort", subjects=6, sites=2, seed=1, site_params=SITES)
    subjects = load_dataset(cohort.manifest)
    cfg = config_from_dict({
        "data": {"path": str(cohort.manifest), "split": [0.6, 0.2, 0.2]},
        "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
        "loss": {"name": "bce"},
    })
    split = make_split(subjects, cfg.data.split, seed=0)
    run = RunFolder(root / "tiny")
    run.checkpoints.mkdir(parents=True)
    save_config(cfg, run.config)
    save_split(split, run.split)
    run.write_summary({"epochs": 8, "best_val_dice": 0.93, "best_epoch": 8})
    by_id = {s.subject: s for s in subjects}
    train = np.concatenate([preprocess_volume([check_subject(by_id[i])[0][0].data], (32, 32)).numpy()
                            for i in split["train"]])
    _train_tiny(train).save(run.best)
    return run, split, by_id


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    run, _, _ = tiny_run
    out = tmp_path_factory.mktemp("export_out") / "saved_models" / "tiny"
    report = ex.export(run.path, out)
    print("\n" + ex.format_table(report))
    return out, report


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-")) if folder.exists() else []


# === Export of a run folder ===


@pytest.mark.slow
def test_run_folder_export_verifies_every_artifact(exported, tiny_run):
    out, report = exported
    run, split, _ = tiny_run
    assert report.passed, ex.format_table(report)
    names = [a.name for a in report.artifacts]
    assert names == ["keras", "saved_model", "segment_volume", "fp32", "fp16", "dynamic", "int8"]
    checks = {a.name: a for a in report.artifacts}
    assert checks["saved_model"].max_abs_diff <= 1e-4 and checks["fp32"].max_abs_diff <= 1e-4
    assert checks["segment_volume"].max_abs_diff <= 1e-4
    assert checks["fp16"].mask_dice >= 0.99 and checks["dynamic"].mask_dice >= 0.99
    assert checks["int8"].mask_dice >= 0.95
    # The int8 model is smaller than the float32 one; every file exists with the reported size.
    assert checks["int8"].size_bytes < checks["fp32"].size_bytes
    for v in ex.TFLITE_VARIANTS:
        assert (out / "tflite" / f"model_{v}.tflite").stat().st_size == checks[v].size_bytes
    # Verification used held-back subjects only; calibration the training subjects only.
    held = set(split["validation"] + split["holdout"])
    assert set(report.verification["subjects"]) <= held
    assert set(report.calibration["subjects"]) <= set(split["train"])
    assert not _leftovers(out.parent)

    saved = json.loads((out / "export_report.json").read_text())
    assert saved["passed"] is True and len(saved["artifacts"]) == 7
    card = json.loads((out / "model_card.json").read_text())
    assert card["modalities"] == ["flair"] and card["normalisation"] == "max" and card["input_size"] == [32, 32]
    assert card["signatures"]["serving_default"]["inputs"]["slices"]["shape"] == [None, 32, 32, 1]
    assert card["signatures"]["segment_volume"]["inputs"]["flair"]["dtype"] == "float32"
    assert card["orientation"].startswith("RAS")
    assert card["training_config"]["model"]["arch"] == "unet"
    assert card["data"]["subjects"] == {k: len(v) for k, v in split.items()}
    assert card["data"]["sites"]["train"] == ["siteA", "siteB"]
    assert card["validation_metrics"]["best_val_dice"] == 0.93
    assert card["versions"]["tensorflow"] == tf.__version__ and card["created"]
    assert set(card["tflite"]) == set(ex.TFLITE_VARIANTS)


@pytest.mark.slow
def test_tflite_files_rerun_independently(exported, tiny_run):
    """Each .tflite file, run with LiteRT on a held-out subject, matches the Keras model within tolerance."""
    from ai_edge_litert.interpreter import Interpreter

    out, _ = exported
    run, split, by_id = tiny_run
    model = keras.saving.load_model(run.best)
    slices = preprocess_volume([check_subject(by_id[split["holdout"][0]])[0][0].data], (32, 32)).numpy()
    ref = model(slices, training=False).numpy()
    for v in ex.TFLITE_VARIANTS:
        runner = Interpreter(model_path=str(out / "tflite" / f"model_{v}.tflite")).get_signature_runner()
        got = np.concatenate([runner(slices=s[None])["probabilities"] for s in slices])
        limits = ex.DEFAULT_TOLERANCES[v]
        assert np.abs(got - ref).max() <= limits.get("max_abs_diff", np.inf), v
        assert ex.mask_dice(got, ref) >= limits.get("mask_dice", 0.0), v


@pytest.mark.slow
def test_saved_model_runs_in_plain_tensorflow(exported, tiny_run, tmp_path):
    """A downstream app: a fresh process importing only TensorFlow segments a volume with segment_volume."""
    from wmhkeras.inference.segment import load_segmenter, predict_volume

    out, _ = exported
    run, split, by_id = tiny_run
    flair = check_subject(by_id[split["holdout"][0]])[0][0].data  # canonical RAS [X, Y, Z]
    np.save(tmp_path / "flair.npy", flair)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        model = tf.saved_model.load({str(out / "saved_model")!r})
        flair = tf.constant(np.load({str(tmp_path / "flair.npy")!r}))
        prob = model.signatures["segment_volume"](flair=flair)["probabilities"].numpy()
        slices = np.zeros((3, 32, 32, 1), np.float32)
        served = model.signatures["serving_default"](slices=tf.constant(slices))["probabilities"]
        assert served.shape == (3, 32, 32, 1), served.shape
        assert "wmhkeras" not in sys.modules
        np.save({str(tmp_path / "prob.npy")!r}, prob)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=120)
    prob = np.load(tmp_path / "prob.npy")
    assert prob.shape == flair.shape and prob.dtype == np.float32

    model = keras.saving.load_model(run.best)
    eager = restore_volume(model(preprocess_volume([flair], (32, 32)), training=False), flair.shape).numpy()
    np.testing.assert_allclose(prob, eager, atol=1e-4)
    assert (eager >= 0.5).any()  # the comparison covers lesion and background
    # ... and `wmhkeras segment`'s probability map, from the checkpoint and from the exported SavedModel.
    for source in (run.path, out / "saved_model", out / "tflite" / "model_fp32.tflite"):
        np.testing.assert_allclose(predict_volume(load_segmenter(source), [flair]), prob, atol=1e-4)
    # the fp16 file through `wmhkeras segment` gives the same mask almost everywhere
    fp16 = predict_volume(load_segmenter(out / "tflite" / "model_fp16.tflite"), [flair])
    assert ex.mask_dice(fp16, prob) >= 0.99
    with pytest.raises(InputError, match="exported model"):
        ex.export(out / "tflite" / "model_fp32.tflite", tmp_path / "again")


# === Bare .keras files ===


@pytest.mark.slow
def test_non_default_input_size_exports_and_verifies(tmp_path):
    path = tmp_path / "wide.keras"
    build_generator("unet", input_shape=(48, 64, 1), depth=2, base_filters=4).save(path)
    report = ex.export(path, tmp_path / "out", tflite=("fp32",))
    assert report.passed, ex.format_table(report)
    assert [a.name for a in report.artifacts] == ["keras", "saved_model", "segment_volume", "fp32"]
    assert "synthetic" in report.verification["source"]
    card = json.loads((tmp_path / "out" / "model_card.json").read_text())
    assert card["input_size"] == [48, 64] and card["training_config"] is None and card["data"] is None
    loaded = tf.saved_model.load(str(tmp_path / "out" / "saved_model"))
    spec = loaded.signatures["serving_default"].structured_input_signature[1]["slices"]
    assert spec.shape.as_list() == [None, 48, 64, 1]
    prob = loaded.signatures["segment_volume"](flair=tf.random.uniform((30, 20, 5)))["probabilities"]
    assert prob.shape == (30, 20, 5)


@pytest.fixture
def bare_keras(tmp_path):
    path = tmp_path / "model.keras"
    build_generator("unet", input_shape=(32, 32, 1), depth=2, base_filters=4).save(path)
    return path


def _bad_checkpoint(kind, tmp_path, bare_keras):
    if kind == "missing":
        return tmp_path / "nope.keras"
    if kind == "text":
        path = tmp_path / "notes.keras"
        path.write_text("these are not weights\n")
        return path
    if kind == "truncated":
        path = tmp_path / "cut.keras"
        data = bare_keras.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path
    if kind == "classifier":  # a real Keras model, but not (b, H, W, C) -> (b, H, W, 1)
        inputs = keras.Input((32, 32, 1))
        outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
        path = tmp_path / "classifier.keras"
        keras.Model(inputs, outputs).save(path)
        return path
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "text", "truncated", "classifier"])
def test_bad_checkpoint_is_refused_and_leaves_nothing(kind, tmp_path, bare_keras):
    source = _bad_checkpoint(kind, tmp_path, bare_keras)
    out = tmp_path / "exports" / "model"
    with pytest.raises(InputError, match=source.name):
        ex.export(source, out)
    assert not (tmp_path / "exports").exists()


def test_non_empty_out_dir_is_refused_without_force(tmp_path, bare_keras):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        ex.export(bare_keras, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and not _leftovers(tmp_path)


def test_unknown_variant_and_tolerance_are_refused(tmp_path, bare_keras):
    with pytest.raises(ConfigError, match="int4"):
        ex.export(bare_keras, tmp_path / "out", tflite=("fp32", "int4"))
    with pytest.raises(ConfigError, match="tolerances"):
        ex.export(bare_keras, tmp_path / "out", tolerances={"int16": {"mask_dice": 0.9}})
    with pytest.raises(ConfigError, match="mask_dice"):
        ex.resolve_tolerances({"int8": {"mask_dice": 1.5}})
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_int8_without_calibration_data(tmp_path, bare_keras):
    """A bare .keras file: int8 asked for explicitly needs calibration data; the default set skips it."""
    with pytest.raises(InputError, match="--calibration"):
        ex.export(bare_keras, tmp_path / "out", tflite=("int8",))
    with pytest.raises(InputError, match="calibration data"):
        ex.export(bare_keras, tmp_path / "out", tflite=("int8",), calibration_data=np.zeros((4, 16, 16, 1)))
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_exported_saved_model_is_not_a_source(tmp_path):
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    (folder / "model_card.json").write_text(json.dumps({"modalities": ["flair"], "normalisation": "max",
                                                        "input_size": [32, 32]}))
    with pytest.raises(WmhError):
        ex.export(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# === Options and helpers ===


def test_parse_variants_and_default_out_dir(tmp_path):
    assert ex.parse_variants(None) is None
    assert ex.parse_variants("fp16, int8,fp16") == ("fp16", "int8")
    assert ex.parse_variants("none") == () and ex.parse_variants("") == ()
    with pytest.raises(ConfigError, match="'fp8'"):
        ex.parse_variants("fp8")
    assert ex.default_out_dir("runs/demo") == ex.Path("saved_models/demo")
    assert ex.default_out_dir("runs/demo/checkpoints/best.keras") == ex.Path("saved_models/demo")
    assert ex.default_out_dir("models/wide.keras") == ex.Path("saved_models/wide")


def test_mask_dice_by_hand():
    a = np.array([0.9, 0.6, 0.2, 0.1])
    b = np.array([0.7, 0.4, 0.5, 0.0])
    # masks [1, 1, 0, 0] and [1, 0, 1, 0]: 2 * 1 / (2 + 2)
    assert ex.mask_dice(a, b) == pytest.approx(0.5)
    assert ex.mask_dice(np.zeros(3), np.zeros(3)) == 1.0


# === CLI ===


@pytest.mark.slow
def test_cli_default_out_force_and_table(tmp_path, bare_keras, monkeypatch):
    monkeypatch.chdir(tmp_path)
    old = tmp_path / "saved_models" / "model"
    old.mkdir(parents=True)
    (old / "stale.txt").write_text("old export")
    result = CliRunner().invoke(export_command, [str(bare_keras), "--tflite", "none"])
    assert result.exit_code == 2 and "--force" in result.output
    result = CliRunner().invoke(export_command, [str(bare_keras), "--tflite", "none", "--force"])
    assert result.exit_code == 0, result.output
    assert "saved_model" in result.output and "segment_volume" in result.output and "max|diff|" in result.output
    assert sorted(p.name for p in old.iterdir()) == ["export_report.json", "model_card.json", "saved_model"]
    assert not _leftovers(tmp_path / "saved_models")


@pytest.mark.slow
def test_cli_exits_1_when_outside_tolerance(tmp_path, bare_keras, monkeypatch):
    monkeypatch.setitem(ex.DEFAULT_TOLERANCES, "saved_model", {"max_abs_diff": -1.0})  # nothing can pass
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, [str(bare_keras), "--out", str(out), "--tflite", "none"])
    assert result.exit_code == 1
    assert "outside tolerance: saved_model" in result.output
    assert json.loads((out / "export_report.json").read_text())["passed"] is False


def test_cli_bad_variant_exits_2(tmp_path, bare_keras):
    result = CliRunner().invoke(export_command, [str(bare_keras), "--out", str(tmp_path / "o"), "--tflite", "int3"])
    assert result.exit_code == 2 and "int3" in result.output
    assert not (tmp_path / "o").exists()
