#!/bin/sh
# One command for the main job: set everything up, then install a blank QEMU
# machine from a freshly bootstrapped image and boot it from its own disk.
set -eu
cd "$(dirname "$0")/.."
./ci/setup.sh
export SYSCLONE_ROOT="${SYSCLONE_ROOT:-$PWD/.state}"
export SYSCLONE_CACHE="${SYSCLONE_CACHE:-/var/cache/sysclone}"
exec .venv/bin/sysclone demo "$@"
