#!/bin/sh
# One command for the main job: set everything up, then install a blank QEMU
# machine from a freshly bootstrapped image and boot it from its own disk.
# Prints how long it all took, setup included, at the end.
set -eu
cd "$(dirname "$0")/.."
start=$(date +%s)
./ci/setup.sh
export SYSCLONE_ROOT="${SYSCLONE_ROOT:-$PWD/.state}"
export SYSCLONE_CACHE="${SYSCLONE_CACHE:-/var/cache/sysclone}"
rc=0
.venv/bin/sysclone demo "$@" || rc=$?
end=$(date +%s)
echo "ci/demo.sh: exit status $rc after $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s (setup included)"
exit $rc
