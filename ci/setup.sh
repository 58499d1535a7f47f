#!/bin/sh
# Install what sysclone needs on a Debian 12 machine: the host tools, then a
# venv (.venv) with the project and its pinned dependencies.
# Idempotent: a second run only checks.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="
    python3 python3-venv python3-dev gcc pkg-config libparted-dev
    qemu-system-x86 qemu-utils ipxe-qemu ovmf
    debootstrap debian-archive-keyring gpgv dpkg-dev
    rsync busybox cpio zstd xz-utils lz4 squashfs-tools kmod udev util-linux fdisk parted
    e2fsprogs xfsprogs dosfstools btrfs-progs mdadm lvm2 cryptsetup
    pxelinux syslinux-common isolinux xorriso grub-pc-bin grub-efi-amd64-bin grub-common
    dnsmasq iproute2 file binutils acl curl
    openssh-server openssh-client attr
    syslinux mtools ipxe shim-signed shim-helpers-amd64-signed grub-efi-amd64-signed
    isc-dhcp-server
"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "ci/setup.sh: run as root to install:$missing" >&2
        exit 1
    fi
    echo "==> apt-get install$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # busybox (dynamic) replaces busybox-static: it is half the size in the initrd.
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# .installed is written last: a setup interrupted half-way is redone (dash's
# -nt is false when the second file is missing, hence the -f test).
if [ ! -x .venv/bin/python ] || [ ! -f .venv/.installed ] \
        || [ pyproject.toml -nt .venv/.installed ]; then
    echo "==> python venv in .venv"
    /usr/bin/python3 -m venv --clear .venv  # nothing half-installed survives
    .venv/bin/pip install -q --disable-pip-version-check wheel setuptools==69.5.1
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
    touch .venv/.installed
fi
