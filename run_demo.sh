#!/usr/bin/env bash
# Set up (first run only), then pick simulated micrographs of held-out proteins with the shipped generic
# model: prints AP against the simulated truth and writes demo/overlay.png and coordinate STARs.
# If the real validation micrographs are beside the repository (../shared/data/real), picks them too.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
hydra demo --out demo "$@"
REAL=../shared/data/real
if [ -d "$REAL" ] && [ $# -eq 0 ]; then
    echo
    echo "[demo] real micrographs with published ground truth ($REAL):"
    hydra demo --out demo/real $(for d in "$REAL"/*/; do [ -f "$d/meta.json" ] && echo --dataset "$d"; done)
fi
