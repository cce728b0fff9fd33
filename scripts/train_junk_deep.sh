#!/usr/bin/env bash
# A deeper body against junk (issue 14), as run on 2026-12-07 (2 shared CPU cores, 1 torch thread, beside
# benchmarks; resumable: re-run the same line). The default model (generic-junk-distilled-2) grown into the
# `lite_deep` preset (a third residual block that starts as the identity, so the run starts from the default's
# answers; 1.3x lite's CPU time per 4096² micrograph, benchmarks/preset_cost.py), then continued with the
# recipe of scripts/train_junk_distill_3.sh (48 new simulated datasets, seed 10, 80 % junk-laden, 3e-4,
# distilled on the clean 20 % towards the first generic model) for 1.0 h: the same data as
# generic-junk-distilled-3, so the two differ by the extra block (and by fewer steps in the hour).
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/junk_deep --preset lite_deep --init hydrapicker/weights/generic_junk_distilled_2.pt \
    --distill hydrapicker/weights/generic.pt --distill-weight 6.0 --seed 10 --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.8 --hours 1.0 --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 3e-4 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
