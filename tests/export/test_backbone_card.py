"""The content loss's backbone weights in the run's ``versions.json`` and in the model card, with the VGG
credit: the card section from a run folder (TensorFlow-free), and a tiny trained and exported run (slow)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.conftest import REPO
from wmhkeras.config import config_from_dict
from wmhkeras.errors import InputError
from wmhkeras.export.card import VGG_CREDIT, VGG_LICENCE, backbone_section
from wmhkeras.io.model_card import MODEL_CARD_NAME, ModelCard
from wmhkeras.io.run_folder import RunFolder

#: sha256 of the carried VGG19 blocks (wmhkeras.losses.backbones.CARRIED_SHA256; no TensorFlow here).
CARRIED_SHA256 = "cbe2c8c3ee31ec9d6816100262b136608e3d7c2c3b0a9426de22b086702b4bc4"
RECORD = {"name": "vgg19", "layers": ["block1_pool", "block2_pool"], "weights": "imagenet", "source": "carried",
          "file": "wmhkeras/losses/weights/vgg19_imagenet_block1-2.npz", "sha256": CARRIED_SHA256}


def source(tmp_path, loss: dict, versions: dict | None):
    """What :func:`backbone_section` reads of an export source: the run's config and its folder."""
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    if versions is not None:
        run.versions.write_text(json.dumps(versions))
    return SimpleNamespace(config=config_from_dict({"loss": loss}), run=run)


def test_the_card_takes_the_runs_record_and_adds_the_vgg_credit(tmp_path):
    src = source(tmp_path, {"name": "content", "backbone": "vgg19"}, {"tensorflow": "2.21.0", "backbone": RECORD})
    assert backbone_section(src) == {**RECORD, "licence": VGG_LICENCE, "credit": VGG_CREDIT}
    assert "Simonyan" in VGG_CREDIT and "arXiv:1409.1556" in VGG_CREDIT and "CC BY 4.0" in VGG_LICENCE


def test_a_run_that_recorded_no_backbone_gives_the_recipe_without_a_sha256(tmp_path):
    src = source(tmp_path, {"name": "hybrid", "backbone": "vgg16", "layers": ["block1_pool"]}, {"keras": "3"})
    assert backbone_section(src) == {"name": "vgg16", "layers": ["block1_pool"], "weights": "imagenet",
                                     "source": None, "file": None, "sha256": None, "licence": VGG_LICENCE,
                                     "credit": VGG_CREDIT}
    (tmp_path / "b").mkdir()
    assert backbone_section(source(tmp_path / "b", {"name": "content"}, None))["sha256"] is None  # no versions.json


def test_random_weights_have_no_credit_and_overlap_losses_no_backbone(tmp_path):
    random = {**RECORD, "weights": "random", "source": "random", "file": None, "sha256": None}
    src = source(tmp_path, {"name": "content", "weights": "random"}, {"backbone": random})
    assert backbone_section(src) == random
    assert backbone_section(SimpleNamespace(config=config_from_dict({"loss": {"name": "dice"}}), run=None)) is None
    assert backbone_section(SimpleNamespace(config=None, run=None)) is None


def test_the_card_field_round_trips_and_older_cards_have_none():
    base = {"modalities": ["flair"], "normalisation": "max", "input_size": [32, 32], "format_version": 3}
    section = {**RECORD, "licence": VGG_LICENCE, "credit": VGG_CREDIT}
    card = ModelCard.from_dict({**base, "backbone": section})
    assert card.backbone == section and ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard.from_dict(base).backbone is None
    assert ModelCard.from_dict({**base, "format_version": 2, "backbone": section}).extra == {"backbone": section}
    assert ModelCard.read(REPO / "saved_models" / "open_ms_flair" / MODEL_CARD_NAME).backbone is None
    with pytest.raises(InputError, match="backbone 'vgg19' must be a mapping or null"):
        ModelCard.from_dict({**base, "backbone": "vgg19"})


@pytest.mark.slow
def test_a_trained_run_records_the_carried_weights_and_its_export_credits_them(tmp_path):
    from wmhkeras.data.synth import make_cohort
    from wmhkeras.export.runner import export
    from wmhkeras.training.trainer import train

    cohort = make_cohort(tmp_path / "cohort", subjects=4, sites=2, seed=0).manifest
    cfg = config_from_dict({
        "data": {"path": str(cohort), "split": [0.5, 0.25, 0.25]},
        "model": {"arch": "unet", "input_size": [32, 32], "depth": 2, "base_filters": 4},
        "loss": {"name": "content", "backbone": "vgg19", "weights": "imagenet"},
        "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "image_summary_every": 0},
    })
    run = RunFolder(train(cfg, tmp_path / "run", verbose=0).run_dir)
    versions = json.loads(run.versions.read_text())
    assert versions["backbone"] == RECORD and "tensorflow" in versions

    out = tmp_path / "export"
    export(run.path, out, tflite="none", saved_models=("float32",))
    section = {**RECORD, "licence": VGG_LICENCE, "credit": VGG_CREDIT}
    assert json.loads((out / MODEL_CARD_NAME).read_text())["backbone"] == section
    assert ModelCard.read(out / "saved_model" / "assets.extra" / MODEL_CARD_NAME).backbone == section
