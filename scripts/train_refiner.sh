#!/usr/bin/env bash
# The shipped centre refiner (issue 18), as trained on 2026-12-02 (2 shared CPU cores, 1 torch thread,
# 1.3 h; resumable: re-run the same line): a centre head on the shipped generic model's frozen body,
# taught on 96 simulated data sets of the training families x 5 micrographs (a quarter forced to touching
# particles, a fifth to very low SNR, a fifth with junk; diameter jitter 0.3), validated on 12 held-out
# simulated sets by the AP of the detector's picks after refinement.
# Then: cp runs/refiner/refiner.pt hydrapicker/weights/refiner.pt
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train-refiner --out runs/refiner --hours 1.3 --datasets 96 --mics-per-dataset 5 \
    --seed 3 --workers 2 --threads 1
