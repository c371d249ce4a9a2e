"""The exported TFLite files, run with LiteRT alone. Fixtures: ``conftest.py``."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from tests.export.helpers import mask_dice  # noqa: E402
from wmhkeras.data.datasets import check_subject  # noqa: E402
from wmhkeras.data.preprocessing import preprocess_volume  # noqa: E402
from wmhkeras.export.options import DEFAULT_TOLERANCES, TFLITE_VARIANTS  # noqa: E402


@pytest.mark.slow
def test_tflite_files_rerun_independently(exported, tiny_run):
    """Each .tflite file, run with LiteRT on a held-out subject, matches the Keras model within tolerance."""
    from ai_edge_litert.interpreter import Interpreter

    out, _ = exported
    run, split, by_id = tiny_run
    model = keras.saving.load_model(run.best)
    slices = preprocess_volume([check_subject(by_id[split.holdout[0]])[0][0].data], (32, 32)).numpy()
    ref = model(slices, training=False).numpy()
    for v in TFLITE_VARIANTS:
        runner = Interpreter(model_path=str(out / "tflite" / f"model_{v}.tflite")).get_signature_runner()
        got = np.concatenate([runner(slices=s[None])["probabilities"] for s in slices])
        limits = DEFAULT_TOLERANCES[v]
        assert np.abs(got - ref).max() <= limits.get("max_abs_diff", np.inf), v
        assert mask_dice(got, ref) >= limits.get("mask_dice", 0.0), v
