#!/usr/bin/env bash
# Idempotent set-up of everything HydraPicker's demo and tests need on a fresh Debian machine:
# Debian's RELION 3.1.3 (for the RELION tests and the LoG peer) and a virtualenv in .venv with the
# pinned requirements and the package itself (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v relion_refine >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "[setup] installing Debian's relion package" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq relion >/dev/null
    else
        echo "[setup] relion not found and not root: RELION tests will be skipped" >&2
    fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import hydrapicker, torch, starfile, emtable, cryosparc.dataset, pytest" >/dev/null 2>&1; then
    echo "[setup] installing Python requirements into .venv" >&2
    .venv/bin/pip install -q --disable-pip-version-check -r requirements-ci.txt
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
fi
