"""The network configuration sysclone writes gets a DHCP lease, without a
VM: the golden-image variant's own network daemon runs chrooted into its
tree, in a network namespace whose veth peer has the install NIC's MAC,
against dnsmasq in another namespace.  /sys is read-only there, as in a
container, so networkd does not wait for a udev that is not running."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.configure import netconfig
from agent.configure.footprint import best
from agent.configure.netconfig import STYLES, Addressing, NicIdentity
from tests.integration.goldentrees import Trees, overlay, trees  # noqa: F401
from tests.verify import sh

MAC = "52:54:00:5c:10:07"
NIC = NicIdentity("sc-lease0", MAC)  # no udev names: ifupdown keeps the kernel's name
RANGE = ("192.168.78.50", "192.168.78.60")


@pytest.fixture
def lan(tmp_path: Path) -> Iterator[str]:
    """Two namespaces joined by a veth pair; dnsmasq serves the other end.
    Yields the client's namespace."""
    tag = str(os.getpid())
    srv, cli = f"sc-lsrv-{tag}", f"sc-lcli-{tag}"
    sh("ip", "netns", "add", srv)
    sh("ip", "netns", "add", cli)
    dnsmasq = None
    try:
        sh("ip", "link", "add", "sc-ls0", "netns", srv, "type", "veth", "peer", "name",
           NIC.kernel_name, "netns", cli)
        sh("ip", "-n", cli, "link", "set", NIC.kernel_name, "address", MAC)
        sh("ip", "-n", cli, "link", "set", "lo", "up")
        sh("ip", "-n", srv, "addr", "add", "192.168.78.1/24", "dev", "sc-ls0")
        sh("ip", "-n", srv, "link", "set", "sc-ls0", "up")
        dnsmasq = subprocess.Popen(
            ["ip", "netns", "exec", srv, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
             "--port=0", "--interface=sc-ls0", "--bind-interfaces",
             f"--dhcp-range={RANGE[0]},{RANGE[1]},1h",
             "--dhcp-option=option:router,192.168.78.1",
             f"--dhcp-leasefile={tmp_path / 'leases'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        yield cli
    finally:
        if dnsmasq is not None:
            dnsmasq.terminate()
            dnsmasq.wait(5)
        # Daemons that forked away (dhclient) die with their namespace's pids.
        for pid in sh("ip", "netns", "pids", cli, check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        sh("ip", "netns", "del", cli, check=False)
        sh("ip", "netns", "del", srv, check=False)


def run_in(ns: str, root: Path, script: str) -> subprocess.Popen[str]:
    """`script` in the namespace, with the tree's /proc, a read-only /sys,
    a fresh /run and the host's /dev, in a private mount namespace."""
    setup = (f"set -e; cd {root}; mount -t proc proc proc; mount -t sysfs -o ro sysfs sys; "
             "mount -t tmpfs -o mode=0755 tmpfs run; mount --bind /dev dev; "
             "mkdir -p run/network run/dbus run/systemd; ")
    return subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount",
                             "--propagation", "private", "sh", "-c", setup + script],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def lease(ns: str, proc: subprocess.Popen[str], timeout: float = 90) -> str:
    """The address the NIC got, once it has one in the server's range."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = sh("ip", "-n", ns, "-4", "-o", "addr", "show", NIC.kernel_name, check=False)
        for word in out.split():
            if word.startswith("192.168.78.") and "/" in word:
                return word
        if proc.poll() is not None:
            break
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    raise AssertionError(f"no DHCP lease on {NIC.kernel_name}; the daemon said:\n{out}")


def stop(proc: subprocess.Popen[str]) -> str:
    """Stop the daemon; what it said."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=10)
    return out or ""


def in_range(address: str) -> bool:
    last = int(address.split("/")[0].rsplit(".", 1)[1])
    return address.endswith("/24") and 50 <= last <= 60


def configure(root: Path, expected_style: str) -> None:
    style = best(STYLES, root)
    assert style is not None and style.name == expected_style
    netconfig.configure(root, style, NIC, Addressing("dhcp"))


def test_systemd_networkd_variant_gets_a_lease(trees: Trees, lan: str,  # noqa: F811
                                               tmp_path: Path) -> None:
    with overlay(trees.get("dracut-networkd"), tmp_path) as root:
        configure(root, "systemd-networkd")
        # First boot makes the machine-id networkd's DHCP client ID derives from.
        proc = run_in(lan, root, f"chroot {root} systemd-machine-id-setup >/dev/null; "
                                 f"exec chroot {root} /lib/systemd/systemd-networkd")
        try:
            assert in_range(lease(lan, proc))
        finally:
            said = stop(proc)
        # The lease came from sysclone's file, matched by MAC.
        assert (f"{NIC.kernel_name}: Configuring with /etc/systemd/network/50-sysclone-"
                f"{MAC.replace(':', '')}.network") in said


def test_netplan_variant_gets_a_lease(trees: Trees, lan: str,  # noqa: F811
                                      tmp_path: Path) -> None:
    with overlay(trees.get("netplan"), tmp_path) as root:
        configure(root, "netplan")
        # What happens at boot: netplan's generator, then networkd.  netplan
        # matches a MAC as the NIC's permanent address, which a veth lacks
        # (a real NIC, virtio's too, has one): matched as the current one here.
        proc = run_in(lan, root, f"chroot {root} systemd-machine-id-setup >/dev/null; "
                                 f"chroot {root} netplan generate; "
                                 "grep -q PermanentMACAddress=" + MAC +
                                 " run/systemd/network/10-netplan-install.network; "
                                 "sed -i s/^PermanentMACAddress=/MACAddress=/ "
                                 "run/systemd/network/10-netplan-install.network; "
                                 f"exec chroot {root} /lib/systemd/systemd-networkd")
        try:
            assert in_range(lease(lan, proc))
        finally:
            stop(proc)


def test_ifupdown_default_image_gets_a_lease(trees: Trees, lan: str,  # noqa: F811
                                             tmp_path: Path) -> None:
    with overlay(trees.get("initramfs-tools"), tmp_path) as root:
        configure(root, "ifupdown")
        proc = run_in(lan, root, f"chroot {root} ifup {NIC.kernel_name}; sleep 600")
        try:
            assert in_range(lease(lan, proc))
        finally:
            stop(proc)


def test_networkmanager_variant_gets_a_lease(trees: Trees, lan: str,  # noqa: F811
                                             tmp_path: Path) -> None:
    with overlay(trees.get("network-manager"), tmp_path) as root:
        configure(root, "NetworkManager")
        # NetworkManager needs the system bus, and the bus a machine-id.
        proc = run_in(lan, root, f"chroot {root} systemd-machine-id-setup >/dev/null; "
                                 f"chroot {root} dbus-daemon --system --fork; "
                                 f"exec chroot {root} NetworkManager --no-daemon "
                                 "--debug")
        try:
            assert in_range(lease(lan, proc))
        finally:
            said = stop(proc)
        # sysclone's connection, not one NetworkManager made up for the NIC.
        assert re.search(rf"device \({NIC.kernel_name}\): Activation: starting connection "
                         r"'sysclone-install'", said), said[-3000:]
