"""Baselines the benchmarks compare against, built in the same run.

- a bare busybox initramfs that reaches userspace and powers off (boot);
- boot environments whose /init is a plain shell script instead of the
  agent (install): the same kernel, tools and VM, but what an admin would
  type by hand.  Only the benchmark builds them; the production agent has
  no benchmark mode.  Each script brings the network up by DHCP, says
  BENCH-NETWORK-UP, then times its work from that point and reports
  `SYSCLONE-BENCH-DONE mode=... seconds=...` on the console.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bootenv import cpio
from bootenv.staging import Staging

BASELINE_MARKER = "BASELINE-USERSPACE-READY"
BENCH_DONE = "SYSCLONE-BENCH-DONE"
BENCH_FAILED = "SYSCLONE-BENCH-FAILED"

BUSYBOX_INIT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo {BASELINE_MARKER}
/bin/busybox poweroff -f
"""

# Kernel command line: bench.mode=rsync|rsync-agent-flags|scripted bench.url=rsync://...
# bench.swap=MiB
SCRIPT_INIT = f"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -c /dev/tty ] || mount -t devtmpfs devtmpfs /dev
mount -a
echo 4 > /proc/sys/kernel/printk
fail() {{ echo "{BENCH_FAILED}: $*"; poweroff -f; }}
for w in $(cat /proc/cmdline); do
    case "$w" in bench.*=*) k=${{w%%=*}}; eval "${{k#bench.}}=\\"${{w#*=}}\\"" ;; esac
done
modprobe -a virtio_pci virtio_net virtio_blk ext4 af_packet || fail modprobe
cat > /tmp/dhcp.sh <<'EOF'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${{mask:-24}}" dev "$interface"
[ -n "$router" ] && ip route add default via "${{router%% *}}"
exit 0
EOF
chmod +x /tmp/dhcp.sh
ip link set lo up
ip link set eth0 up
udhcpc -q -f -n -t 20 -i eth0 -s /tmp/dhcp.sh >/dev/null 2>&1 || fail dhcp
echo BENCH-NETWORK-UP
read t0 rest < /proc/uptime
disk=/dev/vda
case "$mode" in
rsync)
    # The raw transfer: one fresh filesystem, one rsync, nothing else.
    mkfs.ext4 -F -q "$disk" || fail mkfs
    mount "$disk" /sysroot || fail mount
    read r0 rest < /proc/uptime
    rsync -aHAX --numeric-ids "$url/" /sysroot/ || fail rsync
    read r1 rest < /proc/uptime
    sync
    ;;
rsync-agent-flags)
    # The same rsync command lines the agent runs (the bulk, then its
    # sparse files apart), bare, one after the other: the bench writes them
    # on the second disk (bench.install.agent_rsyncs), padded with NULs.
    tr -d '\\000' < /dev/vdb > /tmp/rsyncs.sh || fail "no command lines on /dev/vdb"
    mkfs.ext4 -F -q "$disk" || fail mkfs
    mount "$disk" /sysroot || fail mount
    read r0 rest < /proc/uptime
    . /tmp/rsyncs.sh
    read r1 rest < /proc/uptime
    sync
    ;;
scripted)
    # What a careful admin types by hand: the agent's default layout
    # (BIOS boot partition, ext4 root, swap), mkfs, rsync, GRUB.
    sfdisk -q "$disk" <<EOF || fail sfdisk
label: gpt
size=1MiB, type=21686148-6449-6E6F-744E-656564454649
size=-${{swap}}MiB, type=linux
type=swap
EOF
    mkfs.ext4 -F -q "${{disk}}2" || fail mkfs
    mkswap "${{disk}}3" >/dev/null || fail mkswap
    mount "${{disk}}2" /sysroot || fail mount
    read r0 rest < /proc/uptime
    rsync -aHAX --numeric-ids "$url/" /sysroot/ || fail rsync
    read r1 rest < /proc/uptime
    for d in dev proc sys; do mount --bind /$d /sysroot/$d; done
    chroot /sysroot grub-install --target=i386-pc "$disk" >/dev/null 2>&1 || fail grub-install
    chroot /sysroot update-grub >/dev/null 2>&1 || fail update-grub
    for d in dev proc sys; do umount /sysroot/$d; done
    umount /sysroot
    sync
    ;;
*) fail "unknown bench.mode=$mode" ;;
esac
read t1 rest < /proc/uptime
echo "{BENCH_DONE} mode=$mode seconds=$(awk "BEGIN {{print $t1 - $t0}}") \\
rsync=$(awk "BEGIN {{print $r1 - $r0}}")"
poweroff -f
"""


def busybox_initramfs(work: Path, out: Path) -> Path:
    """The smallest useful initramfs: busybox and an /init that announces
    userspace and powers off.  Uncompressed, so the kernel spends no time
    unpacking it: the fastest possible 'reach userspace'."""
    st = Staging(work / "bb")
    if st.top.exists():
        shutil.rmtree(st.top)
    st.top.mkdir(parents=True)
    st.mkdir("usr/bin", "usr/lib", "usr/lib64", "proc", "dev")
    for d in ("bin", "lib", "lib64"):
        st.symlink(d, f"usr/{d}")
    st.install("/usr/bin/busybox")  # with its libraries when not static
    st.symlink("usr/bin/sh", "busybox")
    st.write("init", BUSYBOX_INIT, 0o755)
    entries = [*cpio.scan_tree(st.top), cpio.char_device("dev/console", 5, 1)]
    with out.open("wb") as f:
        cpio.write_archive(f, entries)
    return out
