"""The built-in models: the index, names against paths, what `wmhkeras models` lists (all from the cards).
No TensorFlow."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from wmhkeras.cli.main import main
from wmhkeras.errors import InputError
from wmhkeras.io import builtin_models as bm
from wmhkeras.io.model_card import ModelCard
from wmhkeras.io.run_folder import InitRecord


def _card(**changes) -> dict:
    card = ModelCard(("flair",), "zscore", None, {"mode": "spacing", "spacing": [1.0, 1.0], "multiple": 16},
                     training_data={"dataset": "d", "description": "two scans of site A", "licence": "CC0"},
                     holdout_metrics={"source": "s", "protocol": "p",
                                      "results": [{"arm": "x", "dice": 0.2, "lesion_recall": 0.5},
                                                  {"arm": "x", "dice": 0.4, "lesion_recall": 0.7}]}).to_dict()
    return {**card, **changes}


@pytest.fixture
def models(tmp_path, monkeypatch):
    """A models folder of two exports (``alpha``, the default, and ``beta``) in place of the package's."""
    folder = tmp_path / "models"
    for name, card in (("alpha", _card()), ("beta", _card(holdout_metrics=None))):
        (folder / name / "saved_model").mkdir(parents=True)
        (folder / name / "model_card.json").write_text(json.dumps(card))
    (folder / bm.INDEX_NAME).write_text(json.dumps({"default": "alpha", "models": ["alpha", "beta"]}))
    monkeypatch.setattr(bm, "models_folder", lambda: folder)
    return folder


def test_the_package_carries_its_index_and_every_model_card():
    found = bm.builtin_models()
    assert found and sum(m.default for m in found) == 1 and bm.default_model() in found
    for model in found:  # the shipped cards name what the listing shows
        summary = bm.summarize_model(model)
        assert summary.trained_on and summary.licence and "FLAIR" in summary.expects
        assert (model.saved_model / "saved_model.pb").is_file()


def test_listing_and_card_come_from_the_cards(models):
    alpha, beta = bm.builtin_models()
    assert (alpha.name, alpha.default, beta.default) == ("alpha", True, False)
    summary = bm.summarize_model(alpha)
    assert summary.trained_on == "two scans of site A" and summary.licence == "CC0"
    assert summary.holdout == "x: Dice 0.30, lesion recall 0.60 (mean of 2 scored subjects)"
    assert bm.summarize_model(beta).holdout == "none recorded"
    assert bm.holdout_summary(ModelCard.from_dict(_card(holdout_metrics={
        "source": "e", "n_subjects": 4, "overall": {"dice": {"mean": 0.61}, "lesion_recall": {"mean": 0.5}}}))) == \
        "Dice 0.61, lesion recall 0.50 over 4 subjects"
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    assert "alpha (default)" in result.output and "licence: CC0" in result.output and "beta\n" in result.output
    shown = CliRunner().invoke(main, ["models", "show", "alpha"])
    assert shown.exit_code == 0 and "two scans of site A" in shown.output and "arm x" in shown.output
    assert json.loads(CliRunner().invoke(main, ["models", "show", "beta", "--json"]).output)["normalisation"] == "zscore"
    unknown = CliRunner().invoke(main, ["models", "show", "gamma"])
    assert unknown.exit_code == 2 and "built-in models: alpha, beta" in unknown.output


def test_a_fine_tuned_card_shows_its_parents_data_and_licence(models):
    record = InitRecord("alpha", "saved_model", "/x", "ab" * 32, builtin="alpha",
                        training_data={"dataset": "d", "description": "two scans of site A", "licence": "CC0"})
    card = _card(training_data={"dataset": "mine.csv", "subjects": {"train": 4}}, parent=record.parent_model())
    (models / "beta" / "model_card.json").write_text(json.dumps(ModelCard.from_dict(card).to_dict()))
    text = "\n".join(bm.card_lines(bm.builtin_model("beta")))
    assert "fine-tuned from: alpha (sha256 abababababab...)" in text
    assert "dataset: mine.csv" in text and "licence: CC0" in text


def test_a_path_wins_over_a_name_and_builtin_prefix_names_the_model(models, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert bm.resolve_model("alpha") == (models / "alpha" / "saved_model", bm.builtin_model("alpha"))
    assert bm.resolve_model("gamma") == (Path("gamma"), None)  # for the caller to report as missing
    (tmp_path / "alpha").mkdir()
    with caplog.at_level(logging.WARNING):
        path, model = bm.resolve_model("alpha")
    assert (str(path), model) == ("alpha", None)
    assert "a path of this name exists here and is used, not the built-in model alpha" in caplog.text
    assert bm.resolve_model("builtin:alpha")[1].name == "alpha"
    with pytest.raises(InputError, match="gamma: no built-in model of that name; built-in models: alpha, beta"):
        bm.resolve_model("builtin:gamma")


def test_no_models_folder_means_no_builtin_model(monkeypatch):
    monkeypatch.setattr(bm, "models_folder", lambda: None)
    assert bm.builtin_models() == []
    with pytest.raises(InputError, match="no default built-in model .none: this installation carries no built-in model"):
        bm.default_model()
    assert CliRunner().invoke(main, ["models"]).output == "no built-in models in this installation\n"


def test_a_bad_index_is_refused(models):
    (models / bm.INDEX_NAME).write_text(json.dumps({"default": "zeta", "models": ["alpha"]}))
    with pytest.raises(InputError, match="the default 'zeta' is not among the models"):
        bm.builtin_models()


def test_the_listing_imports_no_tensorflow():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom wmhkeras.cli.main import main\n"
            "res = CliRunner().invoke(main, ['models'])\nassert res.exit_code == 0, res.output\n"
            "res = CliRunner().invoke(main, ['models', 'show', 'open_ms_flair'])\nassert res.exit_code == 0, res.output\n"
            "assert not [m for m in ('tensorflow', 'keras') if m in sys.modules]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
