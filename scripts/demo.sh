#!/usr/bin/env bash
# The main job end to end on built-in synthetic data (run by `make demo`): make a cohort, train with
# the Siamese content loss, segment, evaluate with the challenge metrics, export (SavedModel + TFLite,
# verified against Keras), and segment again through the exported SavedModel and a TFLite file.
# Full-integer int8 and dynamic-range TFLite are left out of the demo's export: on this small model int8
# misses its 0.95 mask-Dice tolerance, and dynamic-range sits on the edge of its 0.99 (0.992 on the
# machine where the demo was first measured, 0.9895 on the current CI machine: the same seeded training
# gives slightly different weights on different CPUs). `wmhkeras export RUN --tflite int8,dynamic`
# reports both and exits 1 when one is outside its tolerance (docs/export.md).
set -euo pipefail
OUT=${1:-demo_output}
EXPORT=${EXPORT:-saved_models/demo}
WMH=${WMH:-.venv/bin/wmhkeras}
PY=${PY:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
step() { printf '\n== %s\n' "$*"; }
start=$(date +%s)

rm -rf "$OUT"
step "1/6 synthetic 3-site cohort -> $OUT/cohort"
$WMH synth "$OUT/cohort" --subjects 12 --sites 3 --seed 0 --lesion-fraction 0.002 0.01
$WMH check "$OUT/cohort" --labels | tail -n 1

step "2/6 train the demo model with the content loss (configs/demo.yaml) -> $OUT/run"
$WMH train configs/demo.yaml --data "$OUT/cohort" --out "$OUT/run" --quiet

step "3/6 segment every subject with the trained model -> $OUT/segment"
$WMH segment "$OUT/run" "$OUT/cohort/manifest.csv" --out "$OUT/segment"

step "4/6 challenge metrics on the run's hold-out subjects -> $OUT/evaluate"
$WMH evaluate --pred "$OUT/segment" --truth "$OUT/run" --out "$OUT/evaluate"

step "5/6 export SavedModel + TFLite, each verified against Keras -> $EXPORT"
$WMH export "$OUT/run" --out "$EXPORT" --tflite fp32,fp16 --force

first=$(sed -n 2p "$OUT/cohort/manifest.csv" | cut -d, -f3)
step "6/6 segment $first through the exported SavedModel and the fp16 TFLite model"
$WMH segment "$EXPORT/saved_model" "$OUT/cohort/$first" --out "$OUT/segment_savedmodel"
$WMH segment "$EXPORT/tflite/model_fp16.tflite" "$OUT/cohort/$first" --out "$OUT/segment_tflite"
$PY scripts/compare_masks.py "$OUT/segment" "$OUT/segment_savedmodel" "$OUT/segment_tflite"

printf '\nDemo finished in %ss. Outputs under %s/ and %s/\n' "$(( $(date +%s) - start ))" "$OUT" "$EXPORT"
