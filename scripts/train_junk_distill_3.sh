#!/usr/bin/env bash
# The third distilled junk stage (issue 14), as run on 2026-12-03 (2 shared CPU cores, 1 torch thread, beside
# benchmarks; resumable: re-run the same line; 1.15 h budget, 5,692 steps, about 1.25 h wall with
# simulation): the default model (generic-junk-distilled-2, scripts/train_junk_distill_2.sh) continued on 48
# new simulated datasets (seed 10), 80 % of them junk-laden, at 3e-4, with the generic head kept closer to the
# first generic model's on the clean 20 % (--distill-weight 6 instead of 4). Ships as
# --model generic-junk-distilled-3 (opt-in; no centre refiner for its body yet):
#   python -c "from hydrapicker.train import strip_heads; strip_heads('runs/junk7/model.pt', \
#       'hydrapicker/weights/generic_junk_distilled_3.pt')"
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/junk7 --init hydrapicker/weights/generic_junk_distilled_2.pt \
    --distill hydrapicker/weights/generic.pt --distill-weight 6.0 --seed 10 --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.8 --hours 1.15 --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 3e-4 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
