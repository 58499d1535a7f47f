#!/bin/sh
# One command for the tests: set everything up, then run every tier (unit,
# lint, integration on loop devices and namespaces, end-to-end in QEMU).
# Extra arguments go to pytest (e.g. ci/test.sh tests/unit -x).
set -eu
cd "$(dirname "$0")/.."
./ci/setup.sh
export SYSCLONE_CACHE="${SYSCLONE_CACHE:-/var/cache/sysclone}"
[ $# -gt 0 ] || set -- tests
exec .venv/bin/pytest "$@"
