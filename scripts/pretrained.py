"""Retrain and export the shipped real-data model (``make pretrained``): saved_models/open_ms_flair/.

Trains ``configs/real_flair.yaml`` on both open_ms_data patients (read in place from the shared data
folder, never copied) and exports the SavedModel and the fp16 TFLite file with ``wmhkeras export`` (each
verified against Keras). The model card's texts come from a card-info file written here and passed as
``--card-info``: the training data and its licence and citation, the input the model expects, what it is
for and not for, and the two-patient protocol's figures (``--results``: the ``results.json`` of
``scripts/real_data_protocol.py``) as its hold-out metrics. The export computes the rest (training voxel
sizes, relative paths, project version) and writes the card beside and inside the SavedModel.

    python scripts/pretrained.py --out saved_models/open_ms_flair --results docs/real_data_results.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data_protocol import PATIENTS, REPO, data_folder, patient_subject, wmhkeras  # noqa: E402

from wmhkeras.data.datasets import write_manifest  # noqa: E402
from wmhkeras.io.files import json_safe  # noqa: E402

CITATION = ("Lesjak Z., Galimzianova A., Koren A., Lukin M., Pernus F., Likar B., Spiclin Z. A Novel Public MR "
            "Image Dataset of Multiple Sclerosis Patients With Lesion Segmentations Based on Multi-rater "
            "Consensus. Neuroinformatics 16 (2018) 51-63. doi:10.1007/s12021-017-9348-7")
#: The card's texts (``wmhkeras export --card-info``; the keys are wmhkeras.export.card.CARD_INFO_KEYS).
CARD_INFO = {
    "intended_use": (
        "Research: segmenting white matter hyperintensities (MS lesions) in skull-stripped, bias-corrected "
        "3D FLAIR of about 1 mm, to try the toolkit on real scans without training first, or as a starting "
        "point for fine-tuning on your own data."),
    "not_intended_for": (
        "Clinical use or any decision about a patient; scans unlike the training data (2D FLAIR with thick "
        "slices, other contrasts, scans that are not skull-stripped) without checking its output; "
        "claims about accuracy beyond the hold-out figures, which come from two patients."),
    "limitations": (
        "Trained on two MS patients from one centre and scanner. Expect lower accuracy on other scanners, "
        "on small-vessel-disease WMH, and on scans that are not skull-stripped (bright extra-cerebral "
        "tissue can be segmented) or not bias-corrected; inspect the masks (wmhkeras segment --qc) and use "
        "--brain-mask where you have one."),
    "input_requirements": {
        "skull_stripped": True,
        "bias_corrected": True,
        "notes": (
            "FLAIR only. Voxel size about 1 x 1 x 1 mm (trained on 1 mm isotropic, see voxel_size_mm): slices "
            "are resampled to 1 x 1 mm in-plane, so other in-plane sizes are accepted, but thick slices are "
            "not corrected, and wmhkeras segment warns when a scan's voxel size is far outside the training "
            "data's. Any orientation: volumes are handled in the closest canonical RAS orientation and "
            "written back on the input's own grid."),
    },
    "training_data": {
        "dataset": "open_ms_data",
        "description": (f"open_ms_data (University of Ljubljana), patients {' and '.join(PATIENTS)}: 3D FLAIR, "
                        "1 mm isotropic, skull-stripped and bias-corrected, consensus lesion masks"),
        "licence": "CC-BY (Creative Commons Attribution)",
        "citation": CITATION,
    },
}
PROTOCOL = ("train on one open_ms_data patient with this config, segment the other and score it with wmhkeras "
            "evaluate (MICCAI 2017 WMH challenge metrics), both directions (scripts/real_data_protocol.py; "
            "docs/real_data.md); the configs/demo.yaml rows are the baseline")


def card_info(results: Path | None, config: str) -> dict:
    """:data:`CARD_INFO`, with the protocol's rows of this config and of the demo baseline as hold-out metrics."""
    info = dict(CARD_INFO)
    if results is not None:
        rows = [r for r in json.loads(results.read_text()) if r.get("config") in (config, "configs/demo.yaml")]
        source = results.resolve().relative_to(REPO) if results.resolve().is_relative_to(REPO) else results.name
        info["holdout_metrics"] = {"source": str(source), "protocol": PROTOCOL, "results": rows}
    return info


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def train_both(data: Path, work: Path, config: str) -> Path:
    """Train ``config`` on both patients (no validation subject); returns the run folder."""
    work.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest([patient_subject(data / p, p) for p in PATIENTS], work / "manifest.csv")
    run([*wmhkeras(), "train", config, "--data", str(manifest), "--out", str(work / "run"), "--quiet",
         "--set", "data.split=[1.0, 0.0, 0.0]"])
    return work / "run"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="the open_ms_data folder")
    parser.add_argument("--out", type=Path, default=REPO / "saved_models" / "open_ms_flair")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "pretrained")
    parser.add_argument("--config", default="configs/real_flair.yaml")
    parser.add_argument("--results", type=Path, default=None, help="results.json of the two-patient protocol")
    parser.add_argument("--run", type=Path, default=None,
                        help="export this finished run folder (the same config trained on both patients) instead of "
                             "training one")
    args = parser.parse_args()
    data = data_folder(parser, args.data)
    shutil.rmtree(args.work, ignore_errors=True)
    run_dir = args.run or train_both(data, args.work, args.config)
    args.work.mkdir(parents=True, exist_ok=True)
    info = args.work / "card_info.json"
    info.write_text(json.dumps(json_safe(card_info(args.results, args.config)), indent=2) + "\n")  # NaN -> null
    run([*wmhkeras(), "export", str(run_dir), "--out", str(args.out), "--tflite", "fp16", "--saved-model", "float32", "--force",
         "--card-info", str(info)])
    sizes = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {sizes / 2**20:.1f} MB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
