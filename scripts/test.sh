#!/usr/bin/env bash
# The whole test suite: sets the workspace up if needed, then runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k tracker -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
# colcon's setup scripts read unset variables: no nounset while sourcing
set +u
# shellcheck disable=SC1091
source "$ROOT/env.sh"
set -u
# Each run gets its own DDS domain (chosen in conftest.py) and localhost-only
# discovery, so concurrent runs never see each other.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
exec python -m pytest "$@"
