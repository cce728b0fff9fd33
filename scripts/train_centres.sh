#!/usr/bin/env bash
# The centre stage (issue 18), as run on 2026-12-02 (2 shared CPU cores, 1 torch thread; resumable: re-run
# the same line): continue the shipped generic model's body and generic head with the wider target
# assignment (--assign-reach 0.7: a particle also teaches the neighbour cells whose centres lie within 0.7
# stride of it, so that whichever cell wins suppression decodes its centre) on the stage-2 data recipe
# (48 simulated clean datasets, seed 1, diameter jitter 0.4).
# Then: python -c "from hydrapicker.train import strip_heads; strip_heads('runs/centres1/model.pt', 'centres.pt')"
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/centres1 --init hydrapicker/weights/generic.pt --seed 1 --datasets 48 \
    --mics-per-dataset 8 --hours 1.15 --phase1-fraction 0.85 --steps 100000 --phase2-steps 100000 \
    --lr 1e-3 --scale-jitter 0.4 --assign-reach 0.7 --workers 1 --threads 1 --val-every 500
