#!/usr/bin/env bash
# The main job end to end on built-in synthetic data (run by `make demo`).
set -euo pipefail
OUT=${1:-demo_output}
WMH=${WMH:-.venv/bin/wmhkeras}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
step() { printf '\n== %s\n' "$*"; }

rm -rf "$OUT"
step "1. synthetic multi-site cohort -> $OUT/cohort"
$WMH synth "$OUT/cohort" --subjects 12 --sites 3 --seed 0
$WMH check "$OUT/cohort" --labels | tail -n 1

printf '\nDemo finished. Outputs under %s/\n' "$OUT"
