#!/usr/bin/env bash
# One-step set-up on a fresh machine: torch first (so nothing pulls another build),
# NATTEN without build isolation (it builds against the installed torch), then scd_msc
# with its test extras and the game engines (ale-py, vizdoom) that the game-source tests play.
# TORCH_SPEC overrides the torch requirement (default: the CPU build used by CI).
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="python3 -m pip install -q --disable-pip-version-check"
if ! python3 -c "import torch" 2>/dev/null; then
  $PIP "${TORCH_SPEC:-torch==2.13.0}"
fi
python3 -c "import natten" 2>/dev/null || $PIP --no-build-isolation natten
$PIP -e ".[dev,games]"
