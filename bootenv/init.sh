#!/bin/sh
# /init of the sysclone boot environment (busybox sh, PID 1): stage 2 when
# the environment is a squashfs (bootenv/init1.sh ran first), the only stage
# when it is one plain archive.
#
# Mounts the kernel filesystems, runs the agent, then carries out the
# post-install action the agent chose.  If the agent dies without choosing
# one, the console gets a shell: PID 1 must never exit.
#
# Every program started here costs ~0.1 s under emulation (a fork and exec
# in TCG), so the boot path starts as few as it can: one `mount -a` for the
# kernel filesystems (/etc/fstab), shell builtins for the rest.  busybox's
# mount, already in memory (stage 1 ran it): util-linux's reads libmount,
# libblkid, libselinux and libpcre2 from the squashfs first (0.12 s against
# 0.04 s under TCG, three boots).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=${TERM:-linux}

# devtmpfs is already there when stage 1 moved it in.
[ -c /dev/tty ] || mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
busybox mount -a
[ -d /sys/firmware/efi/efivars ] && \
    mount -t efivarfs -o nosuid,nodev,noexec efivarfs /sys/firmware/efi/efivars 2>/dev/null
# Only warnings and worse from the kernel on the console while we work.
echo 4 > /proc/sys/kernel/printk
# No proactive memory compaction: in a 128 MiB machine that has swapped
# during the fetch, kcompactd spins for minutes (soft lockups) when the
# install ends; an installer gains nothing from huge pages.
[ -w /proc/sys/vm/compaction_proactiveness ] && echo 0 > /proc/sys/vm/compaction_proactiveness

# Read the agent's Python (its bytecode and extension modules) ahead, in
# the background: the squashfs decompresses it on the second CPU while the
# interpreter starts and imports on the first, which then finds it in the
# page cache.  /init to the agent's imports done: 9.4 s -> 6.9 s (mean of
# two, TCG, 2 vCPUs).  Not in a small machine (under 384 MiB), where the
# page cache it fills would only push out what the install needs next.
read -r _ mem_kib _ < /proc/meminfo
[ "${mem_kib:-0}" -ge 393216 ] && find /usr/lib/python3* -type f -exec cat {} + >/dev/null 2>&1 &

exec_agent() {
    /usr/bin/python3 -I -S -c 'from agent.main import exit_now, main; exit_now(main())' "$@"
}
exec_agent run
rc=$?

action=$(cat /run/sysclone/post-action 2>/dev/null)
[ -n "$action" ] || action=shell
sync
case "$action" in
    reboot|directboot|kexec) echo "sysclone: rebooting"; reboot -f ;;
    poweroff|shutdown) echo "sysclone: powering off"; poweroff -f ;;
esac
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
ln -sf /proc/self/fd /dev/fd
echo "sysclone: agent exited with status $rc; here is a shell."
echo "sysclone: the log is /run/sysclone/agent.log; 'reboot -f' or 'poweroff -f' when done."
while :; do
    setsid cttyhack sh -l
done
