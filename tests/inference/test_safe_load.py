"""Model files from strangers: a ``.keras`` file holding Python code (a ``Lambda`` layer) or a class that is
neither Keras's nor registered by wmhkeras is refused before TensorFlow is asked to load it, in one line,
exit 2, nothing written; the one loader keeps ``safe_mode`` even when the process enabled unsafe loading.

Each Lambda layer built here would create a marker file if its code ever ran.
"""

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras.src.saving.serialization_lib import SafeModeScope

from tests.inference.helpers import blob_volume, write_nifti
from wmhkeras.cli.main import main
from wmhkeras.errors import InputError
from wmhkeras.inference.loaders import load_segmenter
from wmhkeras.inference.sources import ModelSpec, inspect_model, keras_info
from wmhkeras.losses.metrics import DiceMetric
from wmhkeras.losses.overlap import DiceLoss
from wmhkeras.registration import load_model


class Doubler(keras.layers.Layer):
    """A layer class this test defines and does not register."""

    def call(self, x):
        return x * 2.0


@keras.saving.register_keras_serializable(package="Stranger")
class Tripler(keras.layers.Layer):
    """A layer registered in this process by another package than wmhkeras."""

    def call(self, x):
        return x * 3.0


def _save(path, head):
    inputs = keras.Input((32, 32, 1))
    keras.Model(inputs, head(keras.layers.Conv2D(1, 1, activation="sigmoid")(inputs))).save(path)
    return path


MARKER = "WMHKERAS_TEST_CODE_RAN"


def lambda_model(path):
    """A 32 x 32 model whose last layer is a Lambda that creates the file ``$WMHKERAS_TEST_CODE_RAN`` when its
    code runs (the path comes from the environment: Keras stores a lambda's code, not its defaults)."""
    code = lambda t: (__import__("pathlib").Path(__import__("os").environ["WMHKERAS_TEST_CODE_RAN"]).touch(), t)[1]  # noqa: E731
    return _save(path, keras.layers.Lambda(code, output_shape=(32, 32, 1)))


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """The file a Lambda layer's code would create."""
    monkeypatch.setenv(MARKER, str(tmp_path / "code_ran"))
    return tmp_path / "code_ran"


@pytest.fixture
def scan(tmp_path):
    return write_nifti(tmp_path / "s1.nii.gz", blob_volume(), np.eye(4))


def _error_lines(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_segment_refuses_a_lambda_layer_before_any_work(tmp_path, scan, marker):
    model = lambda_model(tmp_path / "stranger.keras")
    result = CliRunner().invoke(main, ["segment", str(model), str(scan), "--out", str(tmp_path / "out")])
    assert _error_lines(result) == [
        f"error: {model}: refused: the model holds a Lambda layer (Python code); wmhkeras loads only Keras's own "
        "layers and the objects it registers (safe_mode), never code from a model file"]
    assert not (tmp_path / "out").exists() and not marker.exists()


@pytest.mark.parametrize(("layer", "name"), [(Doubler, "Doubler"), (Tripler, "Tripler")])
def test_export_refuses_a_class_wmhkeras_does_not_register(tmp_path, layer, name):
    model = _save(tmp_path / "stranger.keras", layer())
    result = CliRunner().invoke(main, ["export", str(model), "--out", str(tmp_path / "exp"), "--tflite", "none"])
    (line,) = _error_lines(result)
    assert f"refused: the model holds the class '{name}'" in line and "neither built into Keras nor registered" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stranger.keras"]


def test_the_loader_keeps_safe_mode_when_the_process_enabled_unsafe_loading(tmp_path, marker):
    model = lambda_model(tmp_path / "stranger.keras")
    with SafeModeScope(False):  # as after keras.config.enable_unsafe_deserialization() anywhere in the process
        with pytest.raises(ValueError, match="Lambda"):
            load_model(model)
        assert not marker.exists()
        loaded = keras.saving.load_model(model, safe_mode=True)  # the premise: Keras alone loads the code
        loaded(np.zeros((1, 32, 32, 1), np.float32))  # ... which runs on the first call
    assert marker.exists(), "Keras now keeps safe_mode=True here by itself: drop this premise check"


def test_a_refusal_found_only_while_loading_is_one_line(tmp_path):
    """Past the config check (a spec built by hand), Keras's own refusal becomes one short line too."""
    model = _save(tmp_path / "stranger.keras", Doubler())
    spec = ModelSpec(model, "keras", model, ("flair",), "max", (32, 32))
    with pytest.raises(InputError) as info:
        load_segmenter(spec)
    assert str(info.value) == f"{model}: cannot load the model (TypeError: Could not locate class 'Doubler')"


def test_models_of_keras_and_wmhkeras_objects_pass(tmp_path):
    """A compiled checkpoint with wmhkeras's registered loss and metric, an optimizer with a schedule."""
    model = keras.Sequential([keras.Input((32, 32, 1)), keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")])
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, 10)), loss=DiceLoss(),
                  metrics=[DiceMetric()])
    model.save(tmp_path / "last.keras")
    assert keras_info(tmp_path / "last.keras").shape == (32, 32, 1)
    assert inspect_model(tmp_path / "last.keras").input_size == (32, 32)
    assert load_segmenter(tmp_path / "last.keras").input_size == (32, 32)
