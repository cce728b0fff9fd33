#!/usr/bin/env bash
# Issue 14, the clumps diagnosis: the default model's worst false picks on the junk benchmark are clumps of
# other proteins about a particle's size (j_ribosome: FOM up to 0.79 on a particle-free micrograph), and
# few-shot heads do not learn to reject them. This run continues the default model
# (generic-junk-distilled-2) with the third distilled stage's recipe (scripts/train_junk_distill_3.sh: 48 new
# datasets, 80 % junk-laden, lr 3e-4, the generic head distilled towards the first generic model with
# weight 6 on the clean 20 %), and every junk dataset also carries 1-4 clumps of other proteins per
# micrograph, 0.7-2 particle diameters across (--junk-clumps). Run on 2026-12-06 (third session; 2 shared
# CPU cores, 1 torch thread, beside benchmarks; resumable: re-run the same line):
#   bash scripts/train_junk_clumps.sh python 14 1.3 runs/junk_clumps
set -euo pipefail
PY=${1:-python}
SEED=${2:-14}
HOURS=${3:-1.3}
OUT=${4:-runs/junk_clumps}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out "$OUT" --init hydrapicker/weights/generic_junk_distilled_2.pt \
    --distill hydrapicker/weights/generic.pt --distill-weight 6.0 --seed "$SEED" --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.8 --junk-clumps --hours "$HOURS" --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 3e-4 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
