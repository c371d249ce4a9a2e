"""The exported SavedModel in a downstream app that imports only TensorFlow. Fixtures: ``conftest.py``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from tests.export.helpers import mask_dice  # noqa: E402
from wmhkeras.data.datasets import check_subject  # noqa: E402
from wmhkeras.data.preprocessing import preprocess_volume, restore_volume  # noqa: E402
from wmhkeras.errors import InputError  # noqa: E402
from wmhkeras.export.runner import export  # noqa: E402
from wmhkeras.inference.loaders import load_segmenter  # noqa: E402
from wmhkeras.inference.predictor import predict_volume  # noqa: E402


@pytest.mark.slow
def test_saved_model_runs_in_plain_tensorflow(exported, tiny_run, tmp_path):
    """A downstream app: a fresh process importing only TensorFlow segments a volume with segment_volume."""
    out, _ = exported
    run, split, by_id = tiny_run
    flair = check_subject(by_id[split.holdout[0]])[0][0].data  # canonical RAS [X, Y, Z]
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
    assert mask_dice(fp16, prob) >= 0.99
    with pytest.raises(InputError, match="exported model"):
        export(out / "tflite" / "model_fp32.tflite", tmp_path / "again")


def test_each_weight_is_stored_once(exported, tiny_run):
    """The SavedModel's checkpoint holds the model's parameters once (keras-team/keras#23553 stored them twice)."""
    import tensorflow as tf

    from wmhkeras.registration import load_model

    out, _ = exported
    run, _, _ = tiny_run
    stored = sum(int(np.prod(shape)) for name, shape in tf.train.list_variables(
        str(out / "saved_model" / "variables" / "variables")) if shape)
    assert stored == load_model(run.best).count_params()
