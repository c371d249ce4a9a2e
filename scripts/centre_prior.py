"""Does a patch-trained model find a lesion wherever it sits in the patch? (docs/real_data.md, "The centre prior")

For a training run folder (``data.sampling: patches``), draws lesion patches from the run's own training
subjects exactly as training does (the run's config and ``split.json``, unaugmented), then segments each
patch with the lesion voxel moved off the patch centre by 0, 8, 16 and 24 pixels (rows and columns
together), and the whole slice it comes from (what ``wmhkeras segment`` gives, cropped to the same
window). A model with a centre prior loses its Dice as the offset grows; whole slices have no centre.

    python scripts/centre_prior.py runs/real_protocol/recipe/train-patient07/run [--batches 10] [--json F]

Prints one row per offset: Dice, predicted and true lesion voxels over the patches, and the whole-slice
Dice over the same windows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OFFSETS = (0, 8, 16, 24)


def measure(run: Path, batches: int = 10) -> dict:
    from wmhkeras.config import load_run_config
    from wmhkeras.data.datasets import load_dataset
    from wmhkeras.data.splits import load_split
    from wmhkeras.registration import load_model
    from wmhkeras.training.cache import LESION_BIT, open_cache
    from wmhkeras.training.cohort import check_cohort
    from wmhkeras.training.sampler import Sampler, crop

    cfg = load_run_config(run / "config.yaml")
    if cfg.data.sampling != "patches":
        raise SystemExit(f"{run}: data.sampling is {cfg.data.sampling!r}; this check is for patch-trained runs")
    subjects = load_dataset(cfg.data.path)
    split = load_split(run / "split.json", subjects)
    train = [s for s in subjects if s.subject in split.train]
    cache = open_cache(cfg, train, None)
    records = check_cohort(cfg, train, {"train": list(split.train), "validation": [], "holdout": []}, cache=cache)
    sampler = Sampler(cfg, cache, [records[s] for s in split.train], cfg.train.seed)
    model = load_model(run / "checkpoints" / "best.keras")
    multiple = 2 ** cfg.model.depth
    h, w = cfg.data.patch_size
    sums = {o: np.zeros(5, np.int64) for o in OFFSETS}  # patch TP, patch predicted, true, whole TP, whole predicted
    for b in range(batches):
        category, rec, k, off, _ = sampler.plan(b)
        for i in np.flatnonzero(category == 0):  # lesion samples
            x, labels = cache.read(sampler.subjects[rec[i]], int(k[i]))
            truth = (labels & 1).astype(bool)
            rows, cols = x.shape[:2]
            padded = np.pad(x, ((0, -rows % multiple), (0, -cols % multiple), (0, 0)))
            whole = np.asarray(model(padded[None], training=False))[0, :rows, :cols, 0] > 0.5
            r, c = divmod(int(np.flatnonzero(labels & LESION_BIT)[off[i]]), labels.shape[1])  # the drawn lesion voxel
            for o in OFFSETS:
                r0, c0 = r - h // 2 + o, c - w // 2 + o
                patch = np.asarray(model(crop(x, r0, c0, h, w)[None], training=False))[0, ..., 0] > 0.5
                y = crop(truth, r0, c0, h, w)
                cut = crop(whole, r0, c0, h, w)
                sums[o] += [(patch & y).sum(), patch.sum(), y.sum(), (cut & y).sum(), cut.sum()]
    rows = []
    for o, (tp, pred, true, tp_whole, pred_whole) in sums.items():
        rows.append({"offset_px": o, "patch_dice": round(2 * tp / max(pred + true, 1), 3), "patch_predicted": int(pred),
                     "true": int(true), "whole_slice_dice": round(2 * tp_whole / max(pred_whole + true, 1), 3),
                     "whole_slice_predicted": int(pred_whole)})
    # load_run_config gives a run config without data.lesion_position the centre it ran with
    return {"run": str(run), "lesion_position": cfg.data.lesion_position,
            "patch_size": [h, w], "batches": batches, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a training run folder trained on patches")
    parser.add_argument("--batches", type=int, default=10, help="training batches to draw lesion patches from")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    result = measure(args.run, args.batches)
    print(f"{result['run']} (lesion_position: {result['lesion_position']}, patch {result['patch_size']})")
    print("offset (px) | patch Dice | patch predicted / true | whole-slice Dice | whole-slice predicted")
    for row in result["rows"]:
        print(f"{row['offset_px']:>11} | {row['patch_dice']:>10} | {row['patch_predicted']:>6} / {row['true']:<6}"
              f"        | {row['whole_slice_dice']:>16} | {row['whole_slice_predicted']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
