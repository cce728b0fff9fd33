#!/usr/bin/env bash
# A sibling of the third distilled junk stage (issue 14), for a model soup: the same recipe as
# scripts/train_junk_distill_3.sh (the default model, generic-junk-distilled-2, continued on 48 new simulated
# datasets, 80 % junk-laden, lr 3e-4, the generic head distilled towards the first generic model with weight 6
# on the clean 20 %), on another draw of datasets (seed 12). Two fine-tunes of one start, averaged weight by
# weight, are often better than either ("model soups", Wortsman et al. 2022); the average of this run and
# generic-junk-distilled-3 is measured against both (README, Junk). Run on 2026-12-06 (2 shared CPU cores,
# 1 torch thread, beside benchmarks; resumable: re-run the same line).
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/junk9 --init hydrapicker/weights/generic_junk_distilled_2.pt \
    --distill hydrapicker/weights/generic.pt --distill-weight 6.0 --seed 12 --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.8 --hours 1.1 --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 3e-4 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
