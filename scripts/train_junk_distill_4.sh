#!/usr/bin/env bash
# Siblings of the third distilled junk stage (issue 14), for a model soup: the same recipe as
# scripts/train_junk_distill_3.sh (the default model, generic-junk-distilled-2, continued on 48 new simulated
# datasets, 80 % junk-laden, lr 3e-4, the generic head distilled towards the first generic model with weight 6
# on the clean 20 %), on other draws of datasets. Two or more fine-tunes of one start, averaged weight by
# weight, are often better than either ("model soups", Wortsman et al. 2022); hydrapicker.soup averages them
# with generic-junk-distilled-3 (README, Junk). Run on 2026-12-06 (2 shared CPU cores, 1 torch thread each,
# beside benchmarks; resumable: re-run the same line):
#   bash scripts/train_junk_distill_4.sh python 12 1.1 runs/junk9
#   bash scripts/train_junk_distill_4.sh python 13 0.9 runs/junk10
set -euo pipefail
PY=${1:-python}
SEED=${2:-12}
HOURS=${3:-1.1}
OUT=${4:-runs/junk9}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out "$OUT" --init hydrapicker/weights/generic_junk_distilled_2.pt \
    --distill hydrapicker/weights/generic.pt --distill-weight 6.0 --seed "$SEED" --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.8 --hours "$HOURS" --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 3e-4 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
