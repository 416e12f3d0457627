#!/usr/bin/env bash
# The main job: the whole ATK loop in simulation (expert demos -> bags ->
# ATK training + baselines -> deployment -> robustness table).
# Sets the workspace up if needed. Arguments go to `atk-demo` (see --help),
# e.g. scripts/demo.sh --full   for the paper-sized run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
# colcon's setup scripts read unset variables: no nounset while sourcing
set +u
# shellcheck disable=SC1091
source "$ROOT/env.sh"
set -u
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec atk-demo "$@"
