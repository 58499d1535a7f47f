#!/bin/sh
# /init of the sysclone boot environment (busybox sh, PID 1).
#
# Mounts the kernel filesystems, runs the agent, then carries out the
# post-install action the agent chose.  If the agent dies without choosing
# one, the console gets a shell: PID 1 must never exit.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=${TERM:-linux}

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=000 devpts /dev/pts
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
if [ -d /sys/firmware/efi/efivars ]; then
    mount -t efivarfs -o nosuid,nodev,noexec efivarfs /sys/firmware/efi/efivars 2>/dev/null
fi
ln -sf /proc/self/fd /dev/fd
mkdir -p /run/sysclone /tmp
# Only warnings and worse from the kernel on the console while we work.
echo 4 > /proc/sys/kernel/printk

/usr/bin/sysclone-agent run
rc=$?

action=$(cat /run/sysclone/post-action 2>/dev/null)
[ -n "$action" ] || action=shell
sync
case "$action" in
    reboot|directboot|kexec) echo "sysclone: rebooting"; reboot -f ;;
    poweroff|shutdown) echo "sysclone: powering off"; poweroff -f ;;
esac
echo "sysclone: agent exited with status $rc; here is a shell."
echo "sysclone: the log is /run/sysclone/agent.log; 'reboot -f' or 'poweroff -f' when done."
while :; do
    setsid cttyhack sh -l
done
