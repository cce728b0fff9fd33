#!/usr/bin/env bash
# The junk stage (issue 14), as it was run on 2026-12-02 (2 shared CPU cores, 1 torch thread; resumable:
# re-run the same line): continue the shipped generic model's body and generic head on 48 new simulated
# datasets (seed 5), 70 % of them junk-laden (hydrapicker.simulate.datasets.junk_fields: vesicles, ice
# crystals, gold, rimmed contamination, thin carbon, clumps of other proteins, border bands, gain stripes,
# hot pixels, 10-35 % junk-only micrographs). 1.65 h budget (85 % phase 1), 2,423 steps.
# Then: python -c "from hydrapicker.train import strip_heads; strip_heads('runs/junk1/model.pt', 'junk_generic.pt')"
set -euo pipefail
PY=${1:-python}
export PYTHONUNBUFFERED=1
$PY -m hydrapicker train --out runs/junk1 --init hydrapicker/weights/generic.pt --seed 5 --datasets 48 \
    --mics-per-dataset 8 --junk-fraction 0.7 --hours 1.65 --phase1-fraction 0.85 --steps 100000 \
    --phase2-steps 100000 --lr 1e-3 --scale-jitter 0.4 --workers 1 --threads 1 --val-every 500
