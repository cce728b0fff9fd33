#!/usr/bin/env bash
# The shipped generic model's recipe, as it was run (2 CPU cores; resumable: re-run the same line).
#   stage 1 (1.75 h): 32 simulated datasets, +-12% diameter jitter, phase 1 then phase 2 (multi-head)
#   stage 2 (1.45 h): 48 further datasets (seed 1), diameter jitter log-uniform in [1/1.4, 1.4], starting
#                     from stage 1's body and generic head; the shipped file is stage 2's generic head.
#   (the shipped model's stage 2 started from runs/stage1_generic.pt, the shipped stage-1 file =
#   strip_heads(runs/generic/model.pt): --init copies only the body and generic head, so it is the same start)
# Usage: scripts/train_generic.sh [python]      (then: python -c "from hydrapicker.train import strip_heads;
#        strip_heads('runs/generic2/model.pt', 'hydrapicker/weights/generic.pt')")
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/generic --datasets 32 --mics-per-dataset 8 --steps 20000 \
    --phase2-steps 5000 --hours 1.75 --phase1-fraction 0.8 --lr 2e-3 --scale-jitter 0.12 --val-every 1000 \
    --log-every 50 --threads 2 --seed 0
$PY -m hydrapicker train --out runs/generic2 --init runs/generic/model.pt --seed 1 --datasets 48 \
    --mics-per-dataset 8 --hours 1.45 --phase1-fraction 0.85 --steps 100000 --phase2-steps 100000 --lr 1e-3 \
    --scale-jitter 0.4 --workers 2
