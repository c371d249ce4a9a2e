"""scripts/finetune_example.py (docs/finetune.md): the halves of one patient as manifests, the arms' equal
budget, the summary table, and the --init arguments reaching `wmhkeras train` (commands recorded, not run)."""

import csv
import json
import re
from pathlib import Path

import pytest

from tests.scripts.helpers import load_script
from wmhkeras.config import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def example():
    return load_script("finetune_example")


def test_one_patients_half_becomes_its_own_manifest(example, tmp_path):
    halves = tmp_path / "left_manifest.csv"
    halves.write_text("subject,site,flair,t1,label\npatient07_left,open_ms,/a,/b,/c\npatient26_left,open_ms,/d,/e,/f\n")
    path = example.patient_half(halves, "left", tmp_path)
    assert [r["subject"] for r in csv.DictReader(open(path))] == ["patient07_left"]


def test_fine_tune_and_scratch_get_the_same_budget(example):
    finetune = load_config(REPO / "configs" / "finetune.yaml")
    budget = dict(item.split("=") for item in example.BUDGET.split(","))
    assert (int(budget["train.epochs"]), int(budget["train.steps_per_epoch"])) == (
        finetune.train.epochs, finetune.train.steps_per_epoch)
    scratch = load_config(REPO / "configs" / "real_flair.yaml")
    assert scratch.train.batch_size == finetune.train.batch_size


def test_summary_gives_each_arm_its_mean_and_sd(example):
    rows = [{"arm": "a", "seed": s, "train_on": "x", "test_on": "t", "dice": d, "lesion_recall": 0.5,
             "lesion_f1": 0.4, "train_s": 1.0} for s, d in enumerate([0.2, 0.4])]
    table = example.summary(rows)
    assert "| a | t | 2 | 0.300 (0.141) | 0.500 (0.000) | 0.400 (0.000) |" in table


def test_init_arguments_reach_the_train_command(example, monkeypatch, tmp_path):
    protocol = example.sys.modules["real_data_protocol"]
    commands = []

    def fake_run(cmd, log):
        commands.append(cmd)
        if "train" in cmd:
            run = Path(cmd[cmd.index("--out") + 1])
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps({"epochs": 4}))
        if "evaluate" in cmd:
            out = Path(cmd[cmd.index("--out") + 1])
            out.mkdir(parents=True)
            (out / "metrics.csv").write_text("subject,dice,hd95,avd,lesion_recall,lesion_f1\nt,0.5,1,2,0.5,0.4\n")
        return 1.0

    monkeypatch.setattr(protocol, "run", fake_run)
    rows = example.train_and_score("fine-tune", "configs/finetune.yaml,train.seed=1", "x", tmp_path / "train.csv",
                                   tmp_path / "test.csv", tmp_path / "arm", train_args=("--init", "BASE"))
    train = next(c for c in commands if "train" in c)
    assert train[-2:] == ["--init", "BASE"] and "train.seed=1" in train
    assert rows == [{"arm": "fine-tune", "config": "configs/finetune.yaml,train.seed=1", "train_on": "x",
                     "test_on": "t", "train_s": 1.0, "segment_s": 1.0, "epochs": 4, "dice": 0.5, "hd95": 1.0,
                     "avd": 2.0, "lesion_recall": 0.5, "lesion_f1": 0.4}]
    assert re.search(r"segment", " ".join(commands[1]))
