"""The real-data protocol: train on one open_ms_data patient, segment and score the other, both ways.

Every arm is a config (plus ``--set`` overrides) run through the public commands, exactly as a user
would: ``wmhkeras train`` on one patient (no validation subject: the other patient is the test),
``wmhkeras segment`` of the left-out patient's FLAIR with the run folder, and ``wmhkeras evaluate``
against its consensus mask. Wall times are measured around each command. Results go to
``OUT/results.json`` and ``OUT/results.md`` (copied by hand into ``docs/real_data.md``).

    python scripts/real_data_protocol.py --out runs/real_protocol \\
        --arm demo=configs/demo.yaml --arm recipe=configs/real_flair.yaml

An arm's value is ``CONFIG[,KEY=VALUE...]``. The data folder comes from ``--data``, else
``$WMH_SHARED_DATA/open_ms_data``, else ``../shared/data/open_ms_data`` beside the repository; the
scans are read in place, never copied. Run again with the same ``--out``, finished trainings are reused,
unless the arm's config changed: then the script stops and names the keys (:func:`train_and_score`).

``--split hemispheres`` asks a different question: how does a model trained on *both* patients (as the
shipped model is) do on lesions it has not seen? Each patient's scans are cut at the brain's midline
into a left and a right copy (the other half set to 0, image and mask alike; written under
``OUT/halves/``, outside the project). Train on the two left halves, score the two right halves, and
the other way round: one row per scored half.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from wmhkeras.data.datasets import Subject, write_manifest
from wmhkeras.data.shared import open_ms_data

REPO = Path(__file__).resolve().parents[1]
PATIENTS = ("patient07", "patient26")
REPORTED = ("dice", "hd95", "avd", "lesion_recall", "lesion_f1", "precision", "recall", "truth_volume_ml",
            "pred_volume_ml")


def data_folder(parser: argparse.ArgumentParser, given: Path | None, patient: str = PATIENTS[0]) -> Path:
    """``--data``, else the shared ``open_ms_data`` folder (:func:`wmhkeras.data.shared.open_ms_data`); a
    usage error where ``patient``'s FLAIR is not in it."""
    data = given or open_ms_data()
    if not (data / patient / "FLAIR.nii.gz").is_file():
        parser.error(f"{data}: open_ms_data not found (use --data or set WMH_SHARED_DATA)")
    return data


def wmhkeras() -> list[str]:
    exe = Path(sys.executable).with_name("wmhkeras")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "wmhkeras.cli.main"]


def patient_subject(folder: Path, subject: str) -> Subject:
    """The subject of a patient's folder (``FLAIR.nii.gz``, ``T1.nii.gz``, ``GOLD_STANDARD.nii.gz``), site open_ms."""
    folder = folder.resolve()
    return Subject(subject, "open_ms", folder / "FLAIR.nii.gz", folder / "T1.nii.gz", folder / "GOLD_STANDARD.nii.gz")


def patient_manifest(data: Path, patient: str, path: Path) -> Path:
    """A manifest of one patient of ``data`` (:func:`wmhkeras.data.datasets.write_manifest`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_manifest([patient_subject(data / patient, patient)], path)


def midline(volume, axis: int) -> int:
    """The index along ``axis`` at the centre of mass of the brain (voxels above a tenth of the maximum)."""
    import numpy as np

    brain = volume > 0.1 * volume.max()
    profile = brain.sum(axis=tuple(a for a in range(volume.ndim) if a != axis))
    return int(round(float((profile * np.arange(profile.size)).sum() / profile.sum())))


def half_copies(data: Path, out: Path) -> dict[str, Path]:
    """Left and right copies of each patient (the other side zeroed at the brain's midline), and a
    manifest per side: ``{"left": ..., "right": ...}``. Copies already written are reused."""
    import nibabel as nib
    import numpy as np

    manifests = {side: out / f"{side}_manifest.csv" for side in ("left", "right")}
    if all(m.is_file() for m in manifests.values()):
        return manifests
    rows = {"left": [], "right": []}
    for patient in PATIENTS:
        flair = nib.load(str(data / patient / "FLAIR.nii.gz"))
        codes = nib.aff2axcodes(flair.affine)
        axis = next(i for i, c in enumerate(codes) if c in ("L", "R"))
        cut = midline(np.asarray(flair.dataobj, dtype=np.float32), axis)
        for side in ("left", "right"):
            folder = out / f"{patient}_{side}"
            folder.mkdir(parents=True, exist_ok=True)
            # voxels beyond the cut towards `side` are kept; the other half is zeroed
            keep_high = (codes[axis] == "L") == (side == "left")
            for name in ("FLAIR", "T1", "GOLD_STANDARD"):
                image = nib.load(str(data / patient / f"{name}.nii.gz"))
                if image.shape != flair.shape or not np.allclose(image.affine, flair.affine, atol=1e-4):
                    raise SystemExit(f"{patient}/{name}: not on the FLAIR's grid; the halves need one grid")
                array = np.asarray(image.dataobj).copy()
                index = [slice(None)] * array.ndim
                index[axis] = slice(0, cut) if keep_high else slice(cut, None)
                array[tuple(index)] = 0
                nib.save(nib.Nifti1Image(array, image.affine, image.header), str(folder / f"{name}.nii.gz"))
            rows[side].append(patient_subject(folder, f"{patient}_{side}"))
    for side, path in manifests.items():
        write_manifest(rows[side], path)
    return manifests


def run(cmd: list[str], log: Path) -> float:
    """Run a command with its output in ``log``; returns the wall time; raises on failure."""
    start = time.monotonic()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}; see {log}")
    return time.monotonic() - start


def one_direction(name: str, spec: str, train_on: str, test_on: str, data: Path, out: Path) -> list[dict]:
    """Train on patient ``train_on``, score patient ``test_on``: a list of its one row."""
    folder = out / name / f"train-{train_on}"
    train_manifest = patient_manifest(data, train_on, folder / "train_manifest.csv")
    test_manifest = patient_manifest(data, test_on, folder / "test_manifest.csv")
    return train_and_score(name, spec, train_on, train_manifest, test_manifest, folder)


def split_spec(spec: str) -> tuple[str, list[str]]:
    """An arm's ``CONFIG[,KEY=VALUE...]`` -> the config file and the ``--set`` overrides of ``wmhkeras train``
    (``data.split=[1.0, 0.0, 0.0]`` first: no validation subject). Overrides are split before each ``,KEY=``,
    so list values such as ``data.patch_size=[96, 96]`` stay whole."""
    config, *overrides = re.split(r",\s*(?=[A-Za-z_][\w.]*=)", spec)
    return config, ["data.split=[1.0, 0.0, 0.0]", *overrides]


def config_changes(run_dir: Path, config: str, overrides: list[str], train_manifest: Path) -> list[str]:
    """How the config saved in ``run_dir`` differs from the one ``wmhkeras train`` would resolve for the arm
    now (its config file as it is today, the overrides, ``--data train_manifest``): ``KEY: SAVED -> NOW``."""
    from wmhkeras.config import load_config, load_run_config

    saved = load_run_config(run_dir / "config.yaml").to_dict()
    # train runs in REPO (run()): relative paths are read from there
    wanted = load_config([REPO / config], overrides).to_dict()
    wanted["data"]["path"] = str((REPO / train_manifest).resolve())

    def changes(a, b, key: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [c for k in dict.fromkeys([*a, *b]) for c in changes(a.get(k), b.get(k), f"{key}.{k}".lstrip("."))]
        return [] if a == b else [f"{key}: {a!r} -> {b!r}"]

    return changes(saved, wanted, "")


def train_and_score(name: str, spec: str, train_on: str, train_manifest: Path, test_manifest: Path,
                    folder: Path, train_args: tuple[str, ...] = ()) -> list[dict]:
    """``wmhkeras train`` on ``train_manifest`` (with ``train_args``, e.g. ``--init MODEL``), ``segment`` and
    ``evaluate`` of ``test_manifest``: a row per scored subject.

    A finished training (``run/summary.json`` and its measured time) is reused, so a protocol interrupted
    after training resumes at segmentation; but only when the arm resolves to the config the run was
    trained with. Otherwise (the config file or an override changed) the protocol stops with the keys that
    differ: it neither scores the old model under the new arm nor deletes a finished run.
    """
    config, overrides = split_spec(spec)
    folder.mkdir(parents=True, exist_ok=True)
    sets = [a for o in overrides for a in ("--set", o)]
    timing = folder / "train_seconds.txt"
    if (folder / "run" / "summary.json").is_file() and timing.is_file():
        changed = config_changes(folder / "run", config, overrides, train_manifest)
        if changed:
            raise SystemExit(f"{folder / 'run'}: trained with another config than arm {name!r} ({spec}) gives now: "
                             f"{'; '.join(changed)}. Remove {folder} to train it again, or run the arm under "
                             f"another name or --out")
        train_s = float(timing.read_text())
    else:
        train_s = run([*wmhkeras(), "train", config, "--data", str(train_manifest), "--out", str(folder / "run"),
                       "--quiet", *sets, *train_args], folder / "train.log")
        timing.write_text(f"{train_s:.1f}\n")
    summary = json.loads((folder / "run" / "summary.json").read_text())
    return [{"arm": name, "config": spec, "train_on": train_on, "test_on": row.pop("test_on"),
             "train_s": round(train_s, 1), "segment_s": row.pop("segment_s"), "epochs": summary.get("epochs"), **row}
            for row in score(folder / "run", test_manifest, folder)]


def score(model: Path | str, test_manifest: Path, folder: Path) -> list[dict]:
    """``wmhkeras segment`` of ``test_manifest`` with ``model`` into ``folder/segment``, and ``evaluate``:
    a row per scored subject (``test_on``, ``segment_s`` and the metrics of :data:`REPORTED`)."""
    folder.mkdir(parents=True, exist_ok=True)
    segment_s = run([*wmhkeras(), "segment", str(model), str(test_manifest), "--out", str(folder / "segment")],
                    folder / "segment.log")
    run([*wmhkeras(), "evaluate", "--pred", str(folder / "segment"), "--truth", str(test_manifest),
         "--out", str(folder / "evaluate"), "--no-qc"], folder / "evaluate.log")
    with open(folder / "evaluate" / "metrics.csv") as f:
        scored = list(csv.DictReader(f))
    return [{"test_on": row["subject"], "segment_s": round(segment_s, 1),
             **{k: float(row[k]) for k in REPORTED if row.get(k) not in (None, "")}} for row in scored]


#: The columns of the markdown table: the challenge's five, voxel precision, and the marked volume as a
#: share of the true one (over 100 %: over-marking, which AVD, an absolute difference, does not show).
TABLE = ("dice", "hd95", "avd", "lesion_recall", "lesion_f1", "precision")


def markdown(rows: list[dict]) -> str:
    head = ("| arm | train on | test on | Dice | HD95 (mm) | AVD (%) | lesion recall | lesion F1 | precision "
            "| marked / true volume (%) | train (s) | segment (s) |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        share = 100 * r["pred_volume_ml"] / r["truth_volume_ml"] if r.get("truth_volume_ml") else float("nan")
        cells = [r["arm"], r["train_on"], r["test_on"], *(f"{r.get(k, float('nan')):.3f}" for k in TABLE),
                 f"{share:.0f}", f"{r['train_s']:.0f}", f"{r['segment_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", action="append", required=True, metavar="NAME=CONFIG[,KEY=VALUE...]")
    parser.add_argument("--data", type=Path, default=None, help="the open_ms_data folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=("patients", "hemispheres"), default="patients",
                        help="patients: train on one, score the other; hemispheres: train on both patients' "
                             "left halves, score the right halves, and the other way round")
    args = parser.parse_args()
    data = data_folder(parser, args.data)
    halves = half_copies(data, args.out / "halves") if args.split == "hemispheres" else None
    rows = []
    for arm in args.arm:
        name, spec = arm.split("=", 1)
        for train_on, test_on in ((PATIENTS, PATIENTS[::-1]) if halves is None else (("left", "right"),
                                                                                       ("right", "left"))):
            if halves is None:
                new = one_direction(name, spec, train_on, test_on, data, args.out)
            else:
                new = train_and_score(name, spec, f"{train_on} halves", halves[train_on], halves[test_on],
                                      args.out / name / f"train-{train_on}")
            for row in new:
                print(json.dumps(row), flush=True)
            rows.extend(new)
            (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
            (args.out / "results.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
