#!/usr/bin/env bash
# Install the peer pickers the benchmarks compare against, idempotently, without touching our venv.
#
#   Topaz 0.3.20 (pip topaz-em) in its OWN venv (default /work/venv-topaz; override with TOPAZ_VENV),
#   on a CPU build of torch 2.13.0 (pinned first, otherwise pip pulls a multi-GB CUDA build).
#   RELION 3.1's relion_autopick (LoG) comes from Debian's relion package (scripts/setup_env.sh); here it
#   is only checked.
#
# Usage: bash benchmarks/setup_peers.sh        (re-running is cheap: finished steps are skipped)
set -euo pipefail

TOPAZ_VENV="${TOPAZ_VENV:-/work/venv-topaz}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"   # the torchvision release built against torch 2.13
TOPAZ_VERSION="0.3.20"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
PIP="$TOPAZ_VENV/bin/pip"
PY="$TOPAZ_VENV/bin/python"

have_pkg() {  # have_pkg NAME VERSION_PREFIX
    "$PY" - "$1" "$2" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version(sys.argv[1]).startswith(sys.argv[2]) else 1)
PYEOF
}

if [ ! -x "$PY" ]; then
    echo "[setup_peers] creating $TOPAZ_VENV"
    "$PYTHON" -m venv "$TOPAZ_VENV"
fi

if ! have_pkg torch "$TORCH_VERSION"; then
    echo "[setup_peers] installing torch==$TORCH_VERSION (CPU build)"
    # The CPU index first; where it cannot be reached, the configured indexes (which may hold a CPU wheel).
    "$PIP" install "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" \
        || "$PIP" install "torch==$TORCH_VERSION"
fi

if ! have_pkg topaz-em "$TOPAZ_VERSION"; then
    echo "[setup_peers] installing topaz-em==$TOPAZ_VERSION (--no-deps, so that torch stays pinned)"
    "$PIP" install --no-deps "topaz-em==$TOPAZ_VERSION"
    # topaz-em's own requirements, except torch (pinned above) and torchvision (below)
    "$PIP" install future h5py numpy pandas pillow psutil scikit-learn scipy tqdm "torch==$TORCH_VERSION"
fi

# torchvision is only needed by `topaz train` (imported by the `topaz` entry point for every command).
# A CPU torchvision matching torch comes only from the PyTorch CPU index; PyPI's Linux wheel is built
# against CUDA torch and fails to load with the CPU build. Without it, benchmarks/topaz_launch.py runs
# `topaz preprocess` and `topaz extract` (the same modules) without importing the training code.
MARKER="$TOPAZ_VENV/.no_cpu_torchvision"
if [ ! -e "$MARKER" ] && ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
    echo "[setup_peers] trying torchvision==$TORCHVISION_VERSION (CPU build)"
    "$PIP" uninstall -y torchvision >/dev/null 2>&1 || true
    "$PIP" install --retries 1 --timeout 20 --no-deps "torchvision==$TORCHVISION_VERSION" \
        --index-url "$CPU_INDEX" || true
    if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
        # what pip found was not a CPU build (or nothing): leave torchvision out and remember it
        "$PIP" uninstall -y torchvision >/dev/null 2>&1 || true
        touch "$MARKER"
        echo "[setup_peers] no usable CPU torchvision; the benchmarks run Topaz via benchmarks/topaz_launch.py"
    fi
fi

echo "[setup_peers] checking that the pretrained resnet16_u64 loads offline"
OMP_NUM_THREADS=1 "$PY" -c "
from topaz.model.factory import load_model
m = load_model('resnet16_u64')
print('[setup_peers] topaz resnet16_u64 OK:', type(m).__name__)
"

if command -v relion_autopick >/dev/null 2>&1; then
    echo "[setup_peers] relion_autopick: $(command -v relion_autopick)"
else
    echo "[setup_peers] WARNING: relion_autopick not on PATH (install Debian's relion: scripts/setup_env.sh)" >&2
fi
