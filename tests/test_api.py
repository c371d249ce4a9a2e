"""The Python API (wmhkeras.api): a cheap import, and in memory exactly what `segment` and `evaluate` write."""

import csv
import json
import math
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras
import wmhkeras.cli.main  # noqa: F401  (the group first: the command modules import it back)
from tests.inference.helpers import SHAPE, blob_volume, bright_segmenter, free_model_file, write_nifti
from wmhkeras.cli.evaluate import evaluate_command
from wmhkeras.cli.segment import segment_command
from wmhkeras.errors import ConfigError, InputError
from wmhkeras.evaluation.metrics import METRIC_KEYS
from wmhkeras.inference.loaders import Segmenter

#: 1 x 1.2 x 3 mm voxels, RAS, origin off the corner.
RAS = np.array([[1.0, 0, 0, -16], [0, 1.2, 0, -19], [0, 0, 3.0, -15], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def free_model(tmp_path_factory):
    """A tiny fully convolutional U-Net whose probabilities spread over (0, 1)."""
    return free_model_file(tmp_path_factory.mktemp("api_model") / "free.keras")


def _image(data, affine=RAS, dtype=np.float32):
    return nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)


def _array(img):
    return np.asarray(img.dataobj)


def test_import_is_cheap_and_the_api_is_lazy():
    code = (
        "import json, sys, nibabel as nib, numpy as np\n"
        "import wmhkeras\n"
        "state = {'tf_on_import': 'tensorflow' in sys.modules, 'api_on_import': 'wmhkeras.api' in sys.modules}\n"
        "from wmhkeras import segment_image, load_model, evaluate_images\n"
        "state['api_after_access'] = 'wmhkeras.api' in sys.modules\n"
        "t = np.zeros((4, 4, 2), np.uint8); t[1:3, 1:3, 0] = 1\n"
        "p = t.copy(); p[1, 1, 0] = 0\n"
        "state['dice'] = evaluate_images(nib.Nifti1Image(t, np.eye(4)), nib.Nifti1Image(p, np.eye(4)))['dice']\n"
        "state['tf_after'] = 'tensorflow' in sys.modules\n"
        "state['dir'] = [n for n in ('segment_image', 'load_model', 'evaluate_images') if n in dir(wmhkeras)]\n"
        "print(json.dumps(state))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    state = json.loads(out.strip().splitlines()[-1])
    assert state == {"tf_on_import": False, "api_on_import": False, "api_after_access": True,
                     "dice": pytest.approx(2 * 3 / (4 + 3)), "tf_after": False,
                     "dir": ["segment_image", "load_model", "evaluate_images"]}
    with pytest.raises(AttributeError, match="no attribute 'segment_imag'"):
        wmhkeras.segment_imag  # noqa: B018


# === segment_image ===


def test_segment_image_equals_the_files_segment_writes(tmp_path, free_model):
    # qform only (sform code 0), as many scanners write; a brain mask that cuts into the volume
    flair = write_nifti(tmp_path / "s1.nii.gz", blob_volume(1), RAS, scode=0)
    brain = np.zeros(SHAPE, np.uint8)
    brain[2:30, 2:24, 1:9] = 1
    brain_file = write_nifti(tmp_path / "s1_brain.nii.gz", brain, RAS, dtype=np.uint8, scode=0)
    out = tmp_path / "out"
    res = CliRunner().invoke(segment_command, [str(free_model), str(flair), "--out", str(out), "--tta",
                                               "--threshold", "0.52", "--min-lesion-voxels", "3",
                                               "--brain-mask", str(brain_file)])
    assert res.exit_code == 0, res.output

    model = wmhkeras.load_model(free_model)
    assert isinstance(model, Segmenter) and model.modalities == ("flair",)
    prob, mask = wmhkeras.segment_image(nib.load(str(flair)), model, tta=True, threshold=0.52, min_lesion_voxels=3,
                                        brain_mask_img=nib.load(str(brain_file)))
    for img, name, dtype in ((prob, "s1_wmh_prob.nii.gz", np.float32), (mask, "s1_wmh_mask.nii.gz", np.uint8)):
        written = nib.load(str(out / name))
        assert img.get_data_dtype() == written.get_data_dtype() == dtype
        np.testing.assert_array_equal(_array(img), _array(written))
        np.testing.assert_array_equal(img.affine, written.affine)
        for key in ("qform_code", "sform_code", "pixdim", "quatern_b", "quatern_c", "quatern_d", "qoffset_x"):
            np.testing.assert_array_equal(img.header[key], written.header[key])
    # every option acted: zero outside the brain, lesions of 1-2 voxels removed from a real mask
    p, m = _array(prob), _array(mask)
    assert not p[brain == 0].any() and not m[brain == 0].any()
    assert 0 < m.sum() < np.count_nonzero(p >= 0.52) < m.size


def test_load_model_decides_the_precision_once_for_every_image(tmp_path, free_model, monkeypatch):
    import wmhkeras.inference.precision as precision

    flair = nib.load(str(write_nifti(tmp_path / "s1.nii.gz", blob_volume(1), RAS)))
    model = wmhkeras.load_model(free_model, precision="bfloat16", flair_img=flair)
    assert model.precision["requested"] == "bfloat16" and model.precision["used"] in ("bfloat16", "float32")
    gates = []
    gate = precision._gate
    monkeypatch.setattr(precision, "_gate", lambda *a, **k: gates.append(1) or gate(*a, **k))
    prob, _ = wmhkeras.segment_image(flair, model)  # as load_model decided: no gate again
    same, _ = wmhkeras.segment_image(flair, model, precision="bfloat16")  # the same request: no gate either
    assert gates == []
    np.testing.assert_array_equal(_array(prob), _array(same))
    fresh, _ = wmhkeras.segment_image(flair, wmhkeras.load_model(free_model), precision="bfloat16")
    assert gates == [1]  # a model loaded without a decision is decided on the image
    np.testing.assert_allclose(_array(fresh), _array(prob), atol=1e-6)
    with pytest.raises(InputError, match="flair_img"):
        wmhkeras.load_model(free_model, precision="auto")


def test_lps_input_gives_outputs_on_its_own_grid(free_model):
    vol = blob_volume()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [SHAPE[0] - 1, SHAPE[1] - 1]
    lps_affine = RAS @ flip  # the same voxels in the other order: x and y reversed
    assert nib.aff2axcodes(lps_affine) == ("L", "P", "S")
    lps = _image(vol[::-1, ::-1], lps_affine)
    # by hand: a model marking bright voxels gives the file's own bright voxels, in its own voxel order
    prob, mask = wmhkeras.segment_image(lps, bright_segmenter())
    assert mask.shape == prob.shape == SHAPE
    np.testing.assert_allclose(mask.affine, lps_affine, atol=1e-6)
    np.testing.assert_array_equal(_array(mask), vol[::-1, ::-1] > 0.5)
    # a real network: the LPS result is the RAS result in the LPS voxel order (a path works as the model)
    ras_prob, ras_mask = wmhkeras.segment_image(_image(vol), str(free_model))
    lps_prob, lps_mask = wmhkeras.segment_image(lps, str(free_model))
    np.testing.assert_array_equal(_array(lps_prob), _array(ras_prob)[::-1, ::-1])
    np.testing.assert_array_equal(_array(lps_mask), _array(ras_mask)[::-1, ::-1])
    np.testing.assert_array_equal(lps_prob.affine, lps.affine)
    assert _array(ras_prob).std() > 0.01  # not a constant map that any flip leaves equal


def test_the_image_affine_wins_over_a_stale_header_as_when_saved(tmp_path):
    img = _image(blob_volume())
    img.header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)  # header out of step with img.affine
    prob, _ = wmhkeras.segment_image(img, bright_segmenter())
    np.testing.assert_array_equal(prob.affine, RAS)
    nib.save(img, str(tmp_path / "a.nii.gz"))
    nib.save(prob, str(tmp_path / "a_prob.nii.gz"))
    np.testing.assert_array_equal(nib.load(str(tmp_path / "a_prob.nii.gz")).affine, nib.load(str(tmp_path / "a.nii.gz")).affine)


def test_flair_and_t1_model_reads_the_t1():
    import tensorflow as tf

    # a "model" that marks where the T1 channel is bright: the mask must be the T1's blob
    t1_model = Segmenter(lambda x: tf.cast(x[..., 1:2] > 0.5, tf.float32), ("flair", "t1"), "max", (32, 32), "t1")
    flair, t1 = blob_volume(0), np.full(SHAPE, 0.1, np.float32)
    t1[20:25, 3:7, 2:8] = 1.0
    _, mask = wmhkeras.segment_image(_image(flair), t1_model, _image(t1))
    np.testing.assert_array_equal(_array(mask), t1 > 0.5)
    with pytest.raises(InputError, match="t1_img: the model uses FLAIR \\+ T1"):
        wmhkeras.segment_image(_image(flair), t1_model)
    with pytest.raises(InputError, match="t1_img: shape \\(32, 32, 9\\) differs"):
        wmhkeras.segment_image(_image(flair), t1_model, _image(t1[:, :, :9]))
    with pytest.raises(InputError, match="t1_img: affine differs"):
        wmhkeras.segment_image(_image(flair), t1_model, _image(t1, RAS @ np.diag([1.0, 1.0, 1.1, 1.0])))


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((np.zeros(SHAPE),), {}, InputError, "flair_img: expected a nibabel image"),
    ((_image(np.ones((8, 8, 4, 2))),), {}, InputError, "flair_img: expected a 3D volume"),
    ((_image(np.zeros(SHAPE)),), {}, InputError, "flair_img: the image is empty"),
    ((_image(np.full(SHAPE, np.nan)),), {}, InputError, "flair_img: .* not finite"),
    ((_image(blob_volume()),), {"threshold": 0.0}, ConfigError, "threshold"),
    ((_image(blob_volume()),), {"min_lesion_mm3": 2.0, "min_lesion_voxels": 2}, ConfigError, "give one"),
    ((_image(blob_volume()),), {"brain_mask_img": _image(np.ones((32, 32, 9)))}, InputError,
     "brain_mask_img: shape"),
])
def test_bad_input_raises_the_project_errors(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        wmhkeras.segment_image(*args, bright_segmenter(), **kwargs)


def test_a_bad_model_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="model not found"):
        wmhkeras.segment_image(_image(blob_volume()), tmp_path / "nope.keras")
    with pytest.raises(InputError, match="model: expected wmhkeras.load_model"):
        wmhkeras.segment_image(_image(blob_volume()), 3)


# === evaluate_images ===


def test_evaluate_images_equals_wmhkeras_evaluate(tmp_path):
    # truth: a 2x2 block (4 voxels) + a lone voxel + one label-2 voxel; prediction: the block widened to 2x3
    # and the label-2 voxel (ignored). By hand: Dice 2*4/(5+6) = 8/11, AVD 20 %, lesion recall 1/2, F1 2/3.
    truth = np.zeros((20, 20, 6), np.uint8)
    truth[5:7, 5:7, 2] = 1
    truth[15, 15, 4] = 1
    truth[10, 10, 1] = 2
    pred = np.zeros_like(truth)
    pred[5:7, 5:8, 2] = 1
    pred[10, 10, 1] = 1
    affine = RAS @ np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: metrics run on the truth's own voxel order
    truth_file = write_nifti(tmp_path / "s1_wmh.nii.gz", truth, affine, dtype=np.uint8)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    pred_file = write_nifti(pred_dir / "s1_wmh_mask.nii.gz", pred, affine, dtype=np.uint8)
    res = CliRunner().invoke(evaluate_command, ["--pred", str(pred_file), "--truth", str(truth_file),
                                                "--out", str(tmp_path / "ev"), "--no-qc"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "ev" / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))

    metrics = wmhkeras.evaluate_images(nib.load(str(truth_file)), nib.load(str(pred_file)))
    assert list(metrics) == list(METRIC_KEYS)
    for key in METRIC_KEYS:
        expected = float(row[key])
        assert metrics[key] == expected or (math.isnan(expected) and math.isnan(metrics[key])), key
    assert metrics["dice"] == pytest.approx(8 / 11) and metrics["avd"] == pytest.approx(20.0)
    assert metrics["lesion_recall"] == 0.5 and metrics["lesion_f1"] == pytest.approx(2 / 3)
    # in memory, as floats: >= 0.5 is lesion, as for a probability map
    assert wmhkeras.evaluate_images(_image(truth, affine, np.uint8), _image(pred * 0.6, affine))["dice"] == metrics["dice"]


def test_evaluate_images_refuses_bad_pairs():
    truth = np.zeros((8, 8, 4), np.uint8)
    truth[2:4, 2:4, 1] = 1
    with pytest.raises(InputError, match="pred_img: affine differs"):
        wmhkeras.evaluate_images(_image(truth, np.eye(4), np.uint8), _image(truth, np.diag([1.0, 1.0, 2.0, 1.0])))
    with pytest.raises(InputError, match="truth_img: label values must be 0, 1 or 2"):
        wmhkeras.evaluate_images(_image(truth * 3, np.eye(4), np.uint8), _image(truth, np.eye(4)))
    with pytest.raises(InputError, match="truth_img: expected a nibabel image"):
        wmhkeras.evaluate_images(truth, _image(truth, np.eye(4)))
