#!/usr/bin/env bash
# The centre refiner of the default model (generic-junk-distilled-2; issue 18), as trained on 2026-12-03 (2
# shared CPU cores, 1 torch thread, beside benchmarks; resumable: re-run the same line): the recipe of
# scripts/train_refiner.sh (the same 96 simulated data sets x 5 micrographs, seed 3) on the default model's
# frozen body, with a 0.6 h budget: the first refiner's validation was flat from epoch ~2 of 68
# (log docs/training/refiner_junk_distilled_2_log.jsonl).
# Then: cp runs/refiner_j2/refiner_final.pt hydrapicker/weights/refiner_junk_distilled_2.pt   (the last epoch)
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train-refiner --out runs/refiner_j2 \
    --detector hydrapicker/weights/generic_junk_distilled_2.pt --hours 0.6 --datasets 96 \
    --mics-per-dataset 5 --width 64 --down 1 --sigma-cells 0.5 --edge-cells 2 --seed 3 --workers 1 --threads 1
