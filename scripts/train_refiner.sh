#!/usr/bin/env bash
# The centre refiner of the first generic model (--model generic; issue 18), as trained on 2026-12-02 (2 shared CPU cores, 1 torch thread;
# resumable: re-run the same line): a centre head (stride 4, 64 channels) on the shipped generic model's
# frozen body, taught on 96 simulated data sets of the training families x 5 micrographs (a quarter forced
# to touching particles, a fifth to very low SNR, a fifth with junk; diameter jitter 0.3), validated each
# epoch on 12 held-out simulated sets by the AP of the detector's picks after refinement
# (log docs/training/refiner_log.jsonl). Planned 1.1 h; stopped at 0.83 h (epoch 68) because validation had
# been flat since epoch ~2 (a second held-out draw of 24 sets: AP +0.040 after epoch 2, +0.038 after 67,
# AP_D/2 -0.003 / -0.002); the last epoch's head is shipped (the per-epoch "best" was epoch 2, noise).
# Then: cp runs/refiner/refiner_final.pt hydrapicker/weights/refiner.pt   (the last epoch, no optimizer state)
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train-refiner --out runs/refiner --detector hydrapicker/weights/generic.pt --hours 1.1 --datasets 96 --mics-per-dataset 5 \
    --width 64 --down 1 --sigma-cells 0.5 --edge-cells 2 --seed 3 --workers 1 --threads 1
