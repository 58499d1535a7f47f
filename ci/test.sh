#!/bin/sh
# One command for the tests: set everything up, then run every tier (unit,
# lint, integration on loop devices and namespaces, end-to-end in QEMU).
# Extra arguments go to pytest (e.g. ci/test.sh tests/unit -x).
# Prints how long it all took, setup included, at the end.
set -eu
cd "$(dirname "$0")/.."
start=$(date +%s)
./ci/setup.sh
export SYSCLONE_CACHE="${SYSCLONE_CACHE:-/var/cache/sysclone}"
[ $# -gt 0 ] || set -- tests
rc=0
.venv/bin/pytest "$@" || rc=$?
end=$(date +%s)
echo "ci/test.sh: exit status $rc after $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s (setup included)"
exit $rc
