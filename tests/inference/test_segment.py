"""wmhkeras segment: model sources, input rules, geometry kept exactly, failures isolated, exit codes."""

import csv
import gzip
import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras.cli.main  # noqa: F401  (the group first: the command modules import it back)
from wmhkeras.cli.segment import segment_command
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.inference.segment import (
    Segmenter,
    inspect_model,
    lesion_mask,
    load_segmenter,
    predict_volume,
    resolve_inputs,
    segment,
    subject_id,
)

SHAPE = (32, 32, 10)


def _write(path, data, affine, dtype=np.float32, qcode=1, scode=1):
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_qform(affine, code=qcode)
    img.header.set_sform(affine if scode else np.eye(4), code=scode)
    nib.save(img, str(path))
    return path


def _blob_volume(seed=0):
    """A noisy [32, 32, 10] RAS volume with one bright, asymmetric blob (the 'lesion')."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(0.05, 0.3, SHAPE).astype(np.float32)
    data[5:9, 20:26, 3:6] = 1.0
    data[6, 26, 4] = 0.9  # touches the blob: still one lesion
    return data


def _tiny_model(path, channels=1):
    from wmhkeras.models import build_generator

    build_generator("unet", input_shape=(32, 32, channels), depth=2, base_filters=4).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("model") / "tiny.keras")


def _bright_segmenter(input_size=(32, 32)):
    """A 'model' that marks bright voxels: probability 1 where the max-normalised image is > 0.5."""
    import tensorflow as tf

    return Segmenter(lambda x: tf.cast(x[..., :1] > 0.5, tf.float32), ("flair",), "max", input_size, "bright")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# === Names and input rules ===


@pytest.mark.parametrize(
    "name, expected",
    [("sub01_FLAIR.nii.gz", "sub01"), ("sub01-flair.nii", "sub01"), ("sub01FLAIR.nii.gz", "sub01"),
     ("sub01.nii.gz", "sub01"), ("patient07/FLAIR.nii.gz", "patient07"), ("a_flair_b.nii", "a_flair_b")],
)
def test_subject_id(tmp_path, name, expected):
    assert subject_id(tmp_path / name) == expected


def test_folder_rule_pairs_flair_with_t1_and_skips_outputs(tmp_path):
    vol = _blob_volume()
    for name in ("a_FLAIR.nii.gz", "a_T1.nii.gz", "b_FLAIR.nii", "x_wmh_mask.nii.gz", "x_wmh_prob.nii.gz"):
        _write(tmp_path / name, vol, np.eye(4))
    items = resolve_inputs([tmp_path])
    assert [(i.subject, i.t1.name if i.t1 else None) for i in items] == [("a", "a_T1.nii.gz"), ("b", None)]
    # without FLAIR-tagged names, every NIfTI file is a FLAIR image
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("s1.nii.gz", "s2.nii.gz"):
        _write(plain / name, vol, np.eye(4))
    assert [i.subject for i in resolve_inputs([plain])] == ["s1", "s2"]


def test_input_errors(tmp_path):
    f = _write(tmp_path / "a.nii.gz", _blob_volume(), np.eye(4))
    (tmp_path / "b").mkdir()
    g = _write(tmp_path / "b" / "a.nii.gz", _blob_volume(), np.eye(4))
    with pytest.raises(InputError, match="given twice"):
        resolve_inputs([f, g])
    with pytest.raises(InputError, match="input not found"):
        resolve_inputs([tmp_path / "missing.nii.gz"])
    with pytest.raises(InputError, match="--t1 is given 2 times for 1"):
        resolve_inputs([f], t1=[f, g])
    with pytest.raises(ConfigError, match="threshold"):
        segment(_bright_segmenter(), [f], tmp_path / "out", threshold=0.0)


def test_lesion_mask_removes_small_components_26_connected():
    prob = np.zeros((6, 6, 6), np.float32)
    prob[0, 0, 0] = 0.9                      # 1 voxel: 2 mm^3
    prob[3, 3, 3] = prob[4, 4, 4] = 0.6      # diagonal neighbours: one 26-connected lesion of 4 mm^3
    prob[5, 0, 5] = 0.4                      # below threshold
    np.testing.assert_array_equal(lesion_mask(prob, 0.5, 0.0, 2.0), prob >= 0.5)
    kept = lesion_mask(prob, 0.5, min_lesion_mm3=4.0, voxel_volume_mm3=2.0)
    assert kept.dtype == np.uint8 and kept.sum() == 2 and kept[3, 3, 3] == kept[4, 4, 4] == 1


def test_flip_tta_mirrors_the_left_right_axis():
    import tensorflow as tf

    # A 'model' whose output rises along the slice height (= X, left-right in RAS): its flip average is flat.
    ramp = tf.reshape(tf.linspace(0.0, 1.0, 32), (1, 32, 1, 1))
    seg = Segmenter(lambda x: tf.broadcast_to(ramp, tf.shape(x[..., :1])), ("flair",), "max", (32, 32))
    vol = _blob_volume()
    plain = predict_volume(seg, [vol], batch_size=4)
    assert plain[-1, 0, 0] > 0.9 and plain[0, 0, 0] < 0.1
    np.testing.assert_allclose(predict_volume(seg, [vol], batch_size=4, tta_flip=True), 0.5, atol=1e-5)


# === Geometry ===


def test_real_flair_keeps_its_geometry_exactly(open_ms, tiny_model, tmp_path):
    src = open_ms / "patient07" / "FLAIR.nii.gz"
    result = segment(tiny_model, [src], tmp_path / "out")
    assert result.ok and result.subjects[0].subject == "patient07"
    ref = nib.load(str(src))
    for suffix, dtype in (("_wmh_prob.nii.gz", np.float32), ("_wmh_mask.nii.gz", np.uint8)):
        out = nib.load(str(tmp_path / "out" / f"patient07{suffix}"))
        assert out.shape == ref.shape == (182, 218, 182)
        assert out.get_data_dtype() == dtype
        np.testing.assert_array_equal(out.affine, ref.affine)
        assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 0
        np.testing.assert_array_equal(out.header.get_qform(), ref.header.get_qform())
        np.testing.assert_array_equal(out.header["pixdim"], ref.header["pixdim"])
    mask = np.asarray(nib.load(str(tmp_path / "out" / "patient07_wmh_mask.nii.gz")).dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    summary = _rows(tmp_path / "out" / "summary.csv")
    assert summary[0]["subject"] == "patient07" and summary[0]["status"] == "ok"
    assert int(summary[0]["lesion_count"]) == len(_rows(tmp_path / "out" / "patient07_lesions.csv"))
    assert abs(float(summary[0]["lesion_volume_ml"]) - mask.sum() / 1000) < 1e-3
    record = json.loads((tmp_path / "out" / "segment.json").read_text())
    assert record["model"]["input_size"] == [32, 32] and record["subjects"]["failed"] == 0


def _oblique(affine, degrees=20.0):
    t = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:3, :3] = [[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]
    return rot @ affine


def test_lps_oblique_and_swapped_inputs_give_masks_on_their_own_grid(tmp_path):
    ras_affine = np.diag([1.0, 1.2, 3.0, 1.0])
    ras_affine[:3, 3] = [-16, -19, -15]
    vol = _blob_volume()
    blob = vol > 0.5
    # The same voxels saved as LPS (x and y reversed), with x/y axes swapped, and with an oblique affine.
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]
    swap = np.eye(4)[[1, 0, 2, 3]]
    variants = {
        "ras": (vol, ras_affine),
        "lps": (vol[::-1, ::-1], ras_affine @ flip),
        "swapped": (vol.transpose(1, 0, 2), ras_affine @ swap),
        "oblique": (vol, _oblique(ras_affine)),
    }
    files = [_write(tmp_path / f"{name}.nii.gz", data, aff, scode=0) for name, (data, aff) in variants.items()]
    assert nib.aff2axcodes(variants["lps"][1]) == ("L", "P", "S")
    result = segment(_bright_segmenter(), files, tmp_path / "out")
    assert result.ok
    for name, (data, aff) in variants.items():
        out = nib.load(str(tmp_path / "out" / f"{name}_wmh_mask.nii.gz"))
        np.testing.assert_allclose(out.affine, aff, atol=1e-6)
        # in the file's own voxel order the mask is exactly the bright blob of that file
        np.testing.assert_array_equal(np.asarray(out.dataobj), data > 0.5)
        # and back in canonical order it agrees voxel for voxel with the RAS result
        np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(out).dataobj), blob)
        lesion = _rows(tmp_path / "out" / f"{name}_lesions.csv")
        ijk = np.argwhere(data > 0.5).mean(axis=0)
        expected_mm = aff[:3, :3] @ ijk + aff[:3, 3]
        assert len(lesion) == 1 and int(lesion[0]["voxels"]) == blob.sum()
        np.testing.assert_allclose([float(lesion[0][k]) for k in ("x_mm", "y_mm", "z_mm")], expected_mm, atol=1e-4)


# === Failures and exit codes ===


def _truncate(src, dst):
    raw = src.read_bytes()
    dst.write_bytes(raw[: len(raw) // 2])
    return dst


def test_corrupt_file_among_three_fails_alone(tmp_path, tiny_model):
    good = [_write(tmp_path / f"s{i}.nii.gz", _blob_volume(i), np.eye(4)) for i in (1, 2)]
    bad = _truncate(_write(tmp_path / "big.nii.gz", np.random.default_rng(0).random((64, 64, 40)), np.eye(4)),
                    tmp_path / "s3.nii.gz")
    with pytest.raises((OSError, EOFError, gzip.BadGzipFile, ValueError)):
        np.asarray(nib.load(str(bad)).dataobj)
    out = tmp_path / "out"
    res = CliRunner().invoke(segment_command, [str(tiny_model), *map(str, [good[0], bad, good[1]]), "--out", str(out)])
    assert res.exit_code == 1, res.output
    assert "failed: s3" in res.output
    for name in ("s1", "s2"):
        assert nib.load(str(out / f"{name}_wmh_mask.nii.gz")).get_fdata().shape == SHAPE
        assert nib.load(str(out / f"{name}_wmh_prob.nii.gz")).get_fdata().shape == SHAPE
        assert (out / f"{name}_lesions.csv").is_file()
    assert not list(out.glob("s3_*")) and not list(out.glob(".tmp-*"))
    rows = {r["subject"]: r for r in _rows(out / "summary.csv")}
    assert [rows[s]["status"] for s in ("s1", "s3", "s2")] == ["ok", "failed", "ok"]
    assert "s3.nii.gz" in rows["s3"]["error"]


def test_bad_model_and_missing_t1_exit_2_and_write_nothing(tmp_path, tiny_model):
    flair = _write(tmp_path / "a.nii.gz", _blob_volume(), np.eye(4))
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(segment_command, [str(tmp_path / "nope.keras"), str(flair), "--out", str(out)])
    assert res.exit_code == 2 and "model not found" in res.output
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    res = runner.invoke(segment_command, [str(tmp_path / "junk.keras"), str(flair), "--out", str(out)])
    assert res.exit_code == 2 and "not a readable .keras" in res.output
    two = _tiny_model(tmp_path / "two.keras", channels=2)
    res = runner.invoke(segment_command, [str(two), str(flair), "--out", str(out)])
    assert res.exit_code == 2 and "no T1 is given for a" in res.output
    assert not out.exists()


def test_run_folder_with_t1(tmp_path):
    from wmhkeras.config import config_from_dict, save_config

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    _tiny_model(run / "checkpoints" / "last.keras", channels=2)
    save_config(config_from_dict({"data": {"modalities": ["flair", "t1"], "normalisation": "zscore"},
                                  "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4}}),
                run / "config.yaml")
    spec = inspect_model(run)
    assert (spec.format, spec.path.name, spec.modalities, spec.normalisation, spec.input_size) == (
        "run", "last.keras", ("flair", "t1"), "zscore", (32, 32))
    flair = _write(tmp_path / "a_FLAIR.nii.gz", _blob_volume(), np.eye(4))
    t1 = _write(tmp_path / "a_T1.nii.gz", _blob_volume(1), np.eye(4))
    res = CliRunner().invoke(segment_command, [str(run), str(flair), "--t1", str(t1), "--out", str(tmp_path / "o"),
                                               "--tta", "--min-lesion-mm3", "5", "--batch-size", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o" / "a_wmh_mask.nii.gz").is_file()
    # a T1 on another grid fails that subject only (exit 1), found before the model runs
    t1_bad = _write(tmp_path / "b_T1.nii.gz", _blob_volume(1), np.diag([2.0, 1, 1, 1]))
    res = CliRunner().invoke(segment_command, [str(run), str(flair), "--t1", str(t1_bad), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and "affine differs" in res.output


def test_brain_mask_volume(tmp_path):
    flair = _write(tmp_path / "a.nii.gz", _blob_volume(), np.diag([1.0, 1.0, 2.0, 1.0]))
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:30, 2:30, 1:9] = 1
    mask = _write(tmp_path / "a_brain.nii.gz", brain, np.diag([1.0, 1.0, 2.0, 1.0]), dtype=np.uint8)
    result = segment(_bright_segmenter(), [flair], tmp_path / "out", brain_mask=[mask])
    row = _rows(tmp_path / "out" / "summary.csv")[0]
    assert float(row["brain_volume_ml"]) == pytest.approx(brain.sum() * 2 / 1000, abs=1e-4)
    assert result.subjects[0].lesion_volume_ml == pytest.approx(np.count_nonzero(_blob_volume() > 0.5) * 2 / 1000)


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
    vol = _blob_volume()
    np.testing.assert_allclose(predict_volume(saved, [vol]), predict_volume(native, [vol]), atol=1e-5)
