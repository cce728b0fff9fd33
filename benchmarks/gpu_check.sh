#!/usr/bin/env bash
# The GPU checks, as one script for a session that is lent a GPU machine (the library's `device` tool).
#
#   here, once:      bash benchmarks/gpu_check.sh --fetch-wheels      # mrcfile/starfile/emtable wheels -> .whl/
#   on the device:   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# On the device machine (python3 there has a CUDA torch, not our three I/O packages) it runs, logging under
# $OUT (or /tmp/gpu_check): the GPU tests (picks on the GPU == picks on the CPU; preparation on the device),
# a short `hydra train --device cuda` run, and the speed benchmark on 4096² micrographs at 100 and 400
# micrographs per process (its table prints micrographs/s and the marginal ms per micrograph, the figure
# the <= 20 ms target is about). About 6-8 minutes, most of it simulating the 4096² micrographs.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fetch-wheels" ]; then
    PY=${PY:-.venv/bin/python}
    mkdir -p .whl
    for pkg in mrcfile starfile emtable; do
        v=$($PY -m pip show "$pkg" | awk '/^Version/{print $2}')
        $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_17_x86_64 -d .whl "$pkg==$v"
    done
    ls .whl
    exit 0
fi
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_pick.py tests/test_preprocess.py tests/test_tta.py \
    2>&1 | tee "$OUT/tests.txt" || true
python3 -m hydrapicker train --out /tmp/gpu_train --device cuda --datasets 4 --mics-per-dataset 4 --val-mics 1 \
    --steps 300 --phase2-steps 100 --val-every 0 --log-every 100 --workers 8 2>&1 | tail -6 | tee "$OUT/train.txt" || true
python3 benchmarks/speed.py --sizes 4096 --counts 100 400 --unique 4 --pickers hydra --device cuda --threads 16 \
    --work /tmp/speed --sim-cache /tmp/speed_sim --json "$OUT/speed_cuda.json" 2>&1 | tee "$OUT/speed.txt"
