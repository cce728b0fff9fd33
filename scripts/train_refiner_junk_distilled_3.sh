#!/usr/bin/env bash
# The centre refiner of --model generic-junk-distilled-3 (issue 18), as trained on 2026-12-03 (2 shared CPU
# cores, 1 torch thread; resumable: re-run the same line): scripts/train_refiner_junk_distilled_2.sh's
# recipe on that model's frozen body, 0.4 h (log docs/training/refiner_junk_distilled_3_log.jsonl).
# Then: cp runs/refiner_j3/refiner_final.pt hydrapicker/weights/refiner_junk_distilled_3.pt   (the last epoch)
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train-refiner --out runs/refiner_j3 \
    --detector hydrapicker/weights/generic_junk_distilled_3.pt --hours 0.4 --datasets 96 \
    --mics-per-dataset 5 --width 64 --down 1 --sigma-cells 0.5 --edge-cells 2 --seed 3 --workers 1 --threads 1
