#!/usr/bin/busybox sh
# Stage 1 of the sysclone boot environment (PID 1, busybox only).
#
# The kernel unpacks a small archive (this script, the loop, squashfs and
# overlay modules, and the "hot" files every boot needs at once: busybox,
# Python and their libraries, under /s1) plus one file: the rest of the
# boot environment as a compressed squashfs.  That stays compressed in RAM
# and is read on demand, so the kernel unpacks a few MB instead of ~40
# before /init runs, and a 128 MiB machine has room to work.  The root is an
# overlay of /s1 on the squashfs, with this archive's own tmpfs (/rw) as
# the writable layer, so the agent and a rescue shell may write anywhere;
# then stage 2 (/init inside it) takes over.  Each program started costs ~0.1 s under emulation:
# directories are made by the archive, not by mkdir.
bb=/usr/bin/busybox
fail() {
    echo "sysclone stage 1: $*; here is a shell" >/dev/console
    exec $bb sh
}
$bb mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev || fail "cannot mount /dev"
for m in /stage1/*.ko; do
    [ -e "$m" ] || continue
    $bb insmod "$m" || fail "cannot load $m"
done
$bb mount -t squashfs -o loop,ro /sysclone.sqsh /lower || fail "cannot mount the squashfs"
$bb mount -t overlay -o lowerdir=/s1:/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot mount the overlay"
$bb mount --move /dev /newroot/dev || fail "cannot move /dev"
# Not switch_root: it would empty this archive, and /rw (the overlay's
# writable layer) lives in it.
cd /newroot || fail "no /newroot"
$bb mount --move . / || fail "cannot move the new root"
exec $bb chroot . /init
