"""The fine-tuning example of docs/finetune.md: adapt a model to a patient it never saw, with one hemisphere.

A model trained on patient26 alone (configs/real_flair.yaml, the recipe of the shipped model) never saw
patient07. Patient07 is cut at its brain's midline (``real_data_protocol.half_copies``); on one half, three
arms are compared, each scored on the other half with ``wmhkeras segment`` and ``wmhkeras evaluate``:

- ``no fine-tuning``: the patient26 model as it is;
- ``fine-tune``: ``wmhkeras train configs/finetune.yaml --init <patient26 run>`` (its budget: 4 epochs of
  25 steps of 16 patches, at finetune.learning_rate, the encoder frozen in epoch 1);
- ``scratch``: configs/real_flair.yaml from random weights with the same budget (4 epochs of 25 steps).

Fine-tune and scratch run once per seed, in both directions (train on the left half, score the right, and
the other way round). Everything goes through the commands, by ``real_data_protocol``'s helpers; finished
trainings are reused when the script runs again. Results: ``OUT/results.json`` and ``OUT/results.md``.

    python scripts/finetune_example.py --out runs/finetune_example --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data_protocol import REPORTED, data_folder, half_copies, one_direction, score, train_and_score  # noqa: E402

from wmhkeras.data.datasets import read_manifest, write_manifest  # noqa: E402

BASE_PATIENT, PATIENT = "patient26", "patient07"
#: The budget of the fine-tune and scratch arms (configs/finetune.yaml's, given to real_flair.yaml too).
BUDGET = "train.epochs=4,train.steps_per_epoch=25"
ARMS = {"fine-tune": "configs/finetune.yaml", "scratch": f"configs/real_flair.yaml,{BUDGET}"}


def patient_half(manifest: Path, side: str, out: Path) -> Path:
    """The row of :data:`PATIENT` in a ``half_copies`` manifest, as a manifest of its own."""
    subjects = [s for s in read_manifest(manifest) if s.subject == f"{PATIENT}_{side}"]
    return write_manifest(subjects, out / f"{PATIENT}_{side}.csv")


def summary(rows: list[dict]) -> str:
    """A markdown table of every row, then the mean and SD of each arm per direction."""
    lines = ["| arm | seed | train on | test on | Dice | HD95 (mm) | AVD (%) | lesion recall | lesion F1 | train (s) |",
             "|" + " --- |" * 10]
    for r in rows:
        cells = [r["arm"], str(r.get("seed", "-")), r["train_on"], r["test_on"],
                 *(f"{r.get(k, float('nan')):.3f}" for k in REPORTED), f"{r.get('train_s', 0):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| arm | test on | n | Dice mean (SD) | lesion recall mean (SD) | lesion F1 mean (SD) |",
              "|" + " --- |" * 6]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["test_on"]), []).append(r)
    for (arm, test_on), group in groups.items():
        cells = [arm, test_on, str(len(group))]
        for key in ("dice", "lesion_recall", "lesion_f1"):
            values = [r[key] for r in group if key in r]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ({sd:.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="the open_ms_data folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-on", choices=("left", "right"), nargs="+", default=["left", "right"],
                        help="the half of patient07 each arm trains on (the other is scored)")
    args = parser.parse_args()
    data = data_folder(parser, args.data, PATIENT)
    out = args.out.resolve()
    one_direction("base", "configs/real_flair.yaml", BASE_PATIENT, PATIENT, data, out)  # trained once, reused
    base = out / "base" / f"train-{BASE_PATIENT}" / "run"
    halves = half_copies(data, out / "halves")
    rows: list[dict] = []

    def record(new: list[dict], **extra) -> None:
        for row in new:
            row.update(extra)
            print(json.dumps(row), flush=True)
            rows.append(row)
        (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / "results.md").write_text(summary(rows))

    for train_side in args.train_on:
        test_side = "right" if train_side == "left" else "left"
        train_manifest = patient_half(halves[train_side], train_side, out / "halves")
        test_manifest = patient_half(halves[test_side], test_side, out / "halves")
        folder = out / f"train-{train_side}"
        nothing = score(base, test_manifest, folder / "no-finetune")
        record(nothing, arm="no fine-tuning", config="configs/real_flair.yaml", train_on=f"{BASE_PATIENT} (base)")
        for seed in args.seeds:
            for arm, spec in ARMS.items():
                init = ("--init", str(base)) if arm == "fine-tune" else ()
                new = train_and_score(arm, f"{spec},train.seed={seed}", f"{PATIENT} {train_side} half", train_manifest,
                                      test_manifest, folder / f"{arm}-seed{seed}", train_args=init)
                record(new, seed=seed)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
