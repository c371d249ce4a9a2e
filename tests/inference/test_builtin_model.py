"""Built-in models wherever a MODEL is taken: `segment [MODEL] INPUT...`, the default model, the Python API,
`export` (refused: already exported). The model segmenting here is the shipped one (saved_models/)."""

import json
import logging

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

import wmhkeras
import wmhkeras.cli.main  # noqa: F401  (the group first: the command modules import it back)
from tests.inference.helpers import write_nifti
from wmhkeras.cli.segment import segment_command
from wmhkeras.errors import InputError
from wmhkeras.inference.sources import inspect_model, split_model_argument
from wmhkeras.io.builtin_models import default_model


def _head(shape=(48, 48, 12)):
    """A skull-stripped-looking 1 mm volume: a bright ellipse of 'brain' with a brighter blob in it."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    data = np.where(x**2 + y**2 + 0.3 * z**2 < 0.8, 100.0, 0.0).astype(np.float32)
    data += np.random.default_rng(0).normal(0, 3, shape).astype(np.float32) * (data > 0)
    data[20:26, 22:27, 4:8] = 260.0
    return data


def test_split_model_argument(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = default_model().name
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    assert split_model_argument(["a.nii.gz"]) == (None, ["a.nii.gz"])
    assert split_model_argument([name, "a.nii.gz"]) == (name, ["a.nii.gz"])
    assert split_model_argument(["run", "a.nii.gz"]) == ("run", ["a.nii.gz"])
    assert split_model_argument(["nope.keras", "a.nii.gz"]) == ("nope.keras", ["a.nii.gz"])
    assert split_model_argument(["typo_name", "a.nii.gz"]) == ("typo_name", ["a.nii.gz"])  # reported as a missing model
    (tmp_path / "weights.h5").write_bytes(b"")
    assert split_model_argument(["weights.h5", "a.nii.gz"]) == ("weights.h5", ["a.nii.gz"])  # reported as no model
    assert split_model_argument(["a.nii.gz", "b.nii.gz"]) == (None, ["a.nii.gz", "b.nii.gz"])
    (tmp_path / "export" / "wmh" / "2").mkdir(parents=True)  # the serving layout: found by the export's card
    (tmp_path / "export" / "model_card.json").write_text("{}")
    assert split_model_argument(["export", "a.nii.gz"]) == ("export", ["a.nii.gz"])
    with pytest.raises(InputError, match="a model, but no INPUT is named"):
        split_model_argument([name])
    (tmp_path / name).mkdir()  # a data folder that happens to share the built-in model's name: an input
    assert split_model_argument([name, "a.nii.gz"]) == (None, [name, "a.nii.gz"])
    assert split_model_argument([f"builtin:{name}", "a.nii.gz"]) == (f"builtin:{name}", ["a.nii.gz"])


def test_inspect_model_by_name_reads_the_card_without_tensorflow():
    model = default_model()
    spec = inspect_model(model.name)
    assert (spec.format, spec.builtin, spec.path) == ("saved_model", model, model.saved_model)
    assert spec.modalities == tuple(model.card().modalities)
    with pytest.raises(InputError, match=rf"nope: model not found; .* \(built-in: {model.name}"):
        inspect_model("nope")


@pytest.mark.slow
def test_segment_without_a_model_uses_the_default_and_says_so(tmp_path, caplog):
    flair = write_nifti(tmp_path / "sub1_FLAIR.nii.gz", _head(), np.eye(4))
    name = default_model().name
    with caplog.at_level(logging.INFO, logger="wmhkeras.inference.segment"):
        res = CliRunner().invoke(segment_command, [str(flair), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert f"model: the built-in model {name} (the default; no MODEL given)" in res.output
    assert f"segmenting with the built-in model {name} (the default" in caplog.text
    record = json.loads((tmp_path / "out" / "segment.json").read_text())["model"]
    assert (record["builtin"], record["default"], record["format"]) == (name, True, "saved_model")
    mask = nib.load(str(tmp_path / "out" / "sub1_wmh_mask.nii.gz"))
    assert mask.shape == (48, 48, 12)
    # the same model named, through the command and the Python API: the same mask
    res = CliRunner().invoke(segment_command, [name, str(flair), "--out", str(tmp_path / "named")])
    assert res.exit_code == 0, res.output
    named = json.loads((tmp_path / "named" / "segment.json").read_text())["model"]
    assert (named["builtin"], named["default"]) == (name, False)
    _, api_mask = wmhkeras.segment_image(nib.load(str(flair)))
    np.testing.assert_array_equal(np.asanyarray(api_mask.dataobj), np.asanyarray(mask.dataobj))
    assert wmhkeras.load_model(name).modalities == ("flair",)


def test_export_names_the_builtin_model_it_refuses():
    from wmhkeras.export.source import resolve_source

    name = default_model().name
    with pytest.raises(InputError, match=f"the built-in model {name} is an exported model"):
        resolve_source(name)
