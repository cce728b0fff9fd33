#!/usr/bin/env bash
# A fourth distilled junk stage, tried on 2026-12-03 and NOT shipped (issue 14): generic-junk-distilled-3
# continued 1.1 h (7,173 steps, 1 thread) on 48 new datasets (seed 11), 80 % junk, lr 2e-4, distill weight 8
# (log docs/training/junk8_not_shipped_log.jsonl). Worse than distilled-3 on 3 of 4 junk targets and on
# t_small80kda (0.481 against 0.520 for the default and 0.519 for distilled-3, 8 micrographs): README, Junk.
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/junk8 --init hydrapicker/weights/generic_junk_distilled_3.pt \
    --distill hydrapicker/weights/generic.pt --distill-weight 8.0 --seed 11 --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.8 --hours 1.1 --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 2e-4 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
