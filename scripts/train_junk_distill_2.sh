#!/usr/bin/env bash
# The second distilled junk stage (issue 14), as run on 2026-12-03 (2 shared CPU cores, 1 torch thread;
# resumable: re-run the same line; 1.35 h budget, 5,969 steps, about 1.4 h wall with simulation): the first
# distilled junk model (scripts/train_junk_distill.sh) continued on 48 new simulated datasets (seed 9), 80 %
# of them junk-laden, at half its learning rate, with the generic head kept close to the shipped generic
# model's on the clean 20 % (--distill). Ships as --model generic-junk-distilled-2:
#   python -c "from hydrapicker.train import strip_heads; strip_heads('runs/junk6/model.pt', \
#       'hydrapicker/weights/generic_junk_distilled_2.pt')"
# Run beside it, not shipped: the same with --junk-fraction 0.6 --seed 8 (runs/junk5; README, Junk).
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/junk6 --init hydrapicker/weights/generic_junk_distilled.pt \
    --distill hydrapicker/weights/generic.pt --distill-weight 4.0 --seed 9 --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.8 --hours 1.35 --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 5e-4 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
