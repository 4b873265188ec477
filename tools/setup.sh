#!/usr/bin/env bash
# One-step set-up on a fresh machine: torch first (so nothing pulls another build),
# NATTEN (extra natten, optional for users; installed here so the tests cover that backend)
# without build isolation (it builds against the installed torch), then scd_msc with its
# test extras and the game engines (ale-py, vizdoom) that the game-source tests play.
# TORCH_SPEC overrides the torch requirement (default: the CPU build used by CI).
# Prints one "setup: ..." line per step; pip itself stays quiet unless something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore  # no "running pip as root" warning in containers
PIP="python3 -m pip install -q --disable-pip-version-check"
EXTRAS="dev,games,play"
say() { echo "setup: $*"; }
installed() { python3 -c "import $1; print($1.__version__)" 2>/dev/null; }

if version=$(installed torch); then
  say "torch $version already installed, kept"
else
  spec="${TORCH_SPEC:-torch==2.13.0}"
  say "installing $spec$([ -z "${TORCH_SPEC:-}" ] && echo " (CPU build; TORCH_SPEC overrides)") ..."
  $PIP "$spec"
fi
if version=$(installed natten); then
  say "natten $version already installed, kept"
else
  say "installing natten (no build isolation: it builds against the installed torch) ..."
  $PIP --no-build-isolation natten
fi
say "installing scd_msc[$EXTRAS] (editable) ..."
$PIP -e ".[$EXTRAS]"
say "done in $SECONDS s"
