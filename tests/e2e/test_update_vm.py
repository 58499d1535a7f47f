"""A real boot server and updateclient, end to end in QEMU, on one VM.

The lab: a host bridge with a tap device for the VM's NIC (no QEMU user
network), `sysclone bootserver --run` (dnsmasq: DHCP with a static lease,
TFTP of the `media pxe` tree, option 140 naming the image server) and
`sysclone serve` listening on the bridge.  The tree's command line has no
IMAGESERVER=: the agent finds the server through option 140.

The VM is left on network boot (net, then disk).  It installs once from
version BASE of an image with sshd; the install's report switches its
entry to the local disk, so every later start PXE-boots into "boot from
the local disk".  Then, over SSH on the bridge:

  update     the one-file client fetched from the server, run on the VM:
             BASE -> NEXT (a package added, a file changed, one removed,
             the kernel replaced: cloud flavour -> generic); the machine's
             own files (logs, /home, host keys, fstab, a path named in
             /etc/sysclone/updateclient.exclude) stay; reboot: the new
             kernel runs
  rollback   `--rollback` puts BASE back
  health     an update whose health check fails rolls itself back (exit
             3); the next start boots BASE's kernel

Each state is checked file by file, not with the code under test: rsync's
itemized checksum dry run from the stored version's tree to the VM's root
over SSH, minus the machine's own files listed here (KEEP).

CI runs the install and the first start (test_a, about 7 minutes under
TCG, measured); the updates and the reinstall (test_b, test_c) are marked
`e2e_full` (SYSCLONE_E2E=full): all three took 41 minutes (test_b 25, the
generic kernel's initrd built by the image server; test_c 9).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.markers import DONE_MARKER, READY_MARKER
from ci.qemu import INSTALLER_ARGS, Vm, VmSpec, blank_disk
from imageserver.bootstrap import DEFAULT_PACKAGES, BootstrapSpec, bootstrap_image
from imageserver.names import ImageRef
from imageserver.serve import Running, ServeConfig, free_port, serving
from imageserver.store import ImageStore
from kernels.aptsources import find_debian_mirror
from kernels.standard import debian_archive, image_package
from sysclone.demo import INSTALL_FAILED
from sysclone.paths import StateRoot
from tests.e2e.conftest import SSH_IMAGE, SSH_PACKAGES, sysclone
from tests.verify import itemized_differences, sh

SUBNET = "192.168.179"
SERVER_IP, VM_IP = f"{SUBNET}.1", f"{SUBNET}.50"
MAC = "52:54:00:17:90:50"
HOST = "e2e-upd1"
INSTALL_TIMEOUT = 2400
BOOT_TIMEOUT = 600
# The installer starting again, or the firmware finding nothing to boot.
NOT_FROM_DISK = rf"{READY_MARKER}|No bootable device"
UPDATE_TIMEOUT = 1800

# The machine's own files, for the independent comparison with the image:
# runtime and pseudo filesystems, logs and caches a running system writes,
# its identity (host keys, machine-id, name), what the install wrote for
# its disks, network and boot loader (the install's report names those:
# added at run time), the initrds built on it, and this test's own files.
KEEP = (
    "/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/lost+found",
    "/var/log", "/var/cache", "/var/lib/systemd", "/var/lib/dhcp", "/var/lib/private",
    "/var/lib/logrotate", "/var/lib/sysclone", "/etc/sysclone", "/home",
    "/root/.bash_history", "/root/updateclient.py",
    "/etc/machine-id", "/var/lib/dbus/machine-id", "/etc/ssh/ssh_host_*",
    "/etc/hostname", "/etc/hosts", "/etc/fstab", "/etc/resolv.conf",
    "/etc/network/interfaces", "/etc/network/interfaces.d/",
    "/boot/grub/", "/boot/initrd.img-*", "/opt/site/",
)


@dataclass(frozen=True)
class Lab:
    state: StateRoot
    server: Running
    bridge: str
    tap: str
    tree: Path
    base: int  # the version installed
    key: Path

    def vm(self, disk: Path, name: str) -> VmSpec:
        # Left on network boot: the firmware tries the network, then the disk.
        return VmSpec(name=name, workdir=self.state.vms, disks=(disk,), tap=self.tap,
                      mac=MAC, boot="nc")

    def tree_of(self, version: int) -> Path:
        return ImageStore(self.state).tree(ImageRef.parse(f"{SSH_IMAGE}@{version}"))


# ------------------------------------------------------------- the lab ---

@contextmanager
def bridge_with_tap() -> Iterator[tuple[str, str]]:
    """A host bridge holding the server's address, and a tap device on it
    for the VM's NIC: a private L2 segment, removed afterwards."""
    tag = os.getpid() % 100000
    bridge, tap = f"scub{tag}", f"scut{tag}"
    sh("ip", "link", "add", bridge, "type", "bridge")
    try:
        sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        sh("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        sh("ip", "link", "set", tap, "master", bridge)
        sh("ip", "link", "set", tap, "up")
        yield bridge, tap
    finally:
        sh("ip", "link", "del", tap, check=False)
        sh("ip", "link", "del", bridge, check=False)


@contextmanager
def bootserver(state: StateRoot, bridge: str, http_port: int) -> Iterator[None]:
    """`sysclone bootserver --run` on the bridge, as a lab runs it."""
    exe = Path(sys.executable).parent / "sysclone"
    log = state.vms / "bootserver.log"
    state.vms.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(exe), "--root", str(state.root), "--cache", str(state.cache_dir), "bootserver",
             "--interface", bridge, "--host", f"{MAC},{VM_IP},{HOST}",
             "--http-port", str(http_port), "--dnsmasq-user", "root", "--run"],
            stdout=out, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while not (state.run / "dnsmasq.pid").is_file():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "dnsmasq did not start: " + log.read_text()
                time.sleep(0.2)
            yield
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _version_of(output: str) -> int:
    m = re.search(r"version (\d+):", output)
    assert m, output
    return int(m.group(1))


def _kernel(tree: Path) -> str:
    found = sorted(p.name.removeprefix("vmlinuz-") for p in (tree / "boot").glob("vmlinuz-*"))
    assert len(found) == 1, found
    return found[0]


def make_base(state: StateRoot, key: Path) -> int:
    """BASE: the image with sshd, rsync, Python and the test's key for root."""
    if not ImageStore(state).exists(SSH_IMAGE):
        bootstrap_image(state, SSH_IMAGE, BootstrapSpec(
            mirror=find_debian_mirror().uri, packages=(*DEFAULT_PACKAGES, *SSH_PACKAGES)))
    pub = key.with_suffix(".pub").read_text().strip()
    r = sysclone(state, "image", "chroot", SSH_IMAGE, "--", "sh", "-c",
                 "set -e; install -d -m 700 /root/.ssh; "
                 f"echo '{pub}' > /root/.ssh/authorized_keys; "
                 "chmod 600 /root/.ssh/authorized_keys; "
                 "echo 'sysclone e2e: version one' > /etc/motd")
    return _version_of(r.stdout + r.stderr)


def make_next(state: StateRoot, base: int) -> int:
    """NEXT: `image chroot` of BASE adding a package (hello), replacing the
    kernel (Debian's cloud flavour by the generic one, both from the
    package cache), changing /etc/motd and removing /etc/issue.net."""
    archive = debian_archive(state)
    debs = [archive.download(archive.show("hello")),
            archive.download(image_package(archive, "linux-image-amd64"))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in debs:
            tar.add(d, arcname=d.name)
    old = _kernel(ImageStore(state).tree(ImageRef.parse(f"{SSH_IMAGE}@{base}")))
    script = ("set -e; d=$(mktemp -d); tar -x -C $d; dpkg -i $d/*.deb; rm -rf $d; "
              f"dpkg --purge linux-image-cloud-amd64 linux-image-{old}; "
              "echo 'sysclone e2e: version two' > /etc/motd; rm /etc/issue.net")
    exe = Path(sys.executable).parent / "sysclone"
    r = subprocess.run([str(exe), "--root", str(state.root), "--cache", str(state.cache_dir),
                        "image", "chroot", SSH_IMAGE, "--", "sh", "-c", script],
                       input=buf.getvalue(), capture_output=True, timeout=1800)
    out = r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")
    assert r.returncode == 0, out
    return _version_of(out)


@pytest.fixture(scope="module")
def lab(e2e_state: StateRoot, bootenv: Path, ssh_key: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    state = StateRoot.from_options(tmp_path_factory.mktemp("lab-state"),
                                   str(e2e_state.cache_dir))
    base = make_base(state, ssh_key)
    # The boot environment `updateclient --autoinstall` downloads.
    state.bootenvs.mkdir(parents=True, exist_ok=True)
    (state.bootenvs / "standard").symlink_to(bootenv)
    with bridge_with_tap() as (bridge, tap):
        cfg = ServeConfig(address=SERVER_IP, rsync_port=free_port(SERVER_IP),
                          http_port=free_port(SERVER_IP))
        # The installed version, named: NEXT is already the current one.
        append = (f"console=ttyS0,115200 panic=5 {INSTALLER_ARGS} IMAGENAME={SSH_IMAGE}@{base} "
                  f"si.server-port={cfg.http_port} si.rsync-port={cfg.rsync_port} "
                  "si.post-action=poweroff")
        sysclone(state, "media", "pxe", "--bootenv", str(bootenv), "--loaders", "pxelinux,grub",
                 "--append", append, "--client", MAC, f"HOSTNAME={HOST}")
        with serving(state, cfg) as srv, bootserver(state, bridge, cfg.http_port):
            yield Lab(state, srv, bridge, tap, state.pxe, base, ssh_key)


@dataclass(frozen=True)
class Next:
    version: int
    kernels: tuple[str, str]  # (BASE's kernel, NEXT's kernel)


@pytest.fixture(scope="module")
def nxt(lab: Lab) -> Next:
    version = make_next(lab.state, lab.base)
    return Next(version, (_kernel(lab.tree_of(lab.base)), _kernel(lab.tree_of(version))))


# ------------------------------------------------------------- helpers ---

MINUTES: dict[str, float] = {}


@contextmanager
def timed(what: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        MINUTES[what] = round((time.monotonic() - t0) / 60, 2)
        print(f"e2e update: {what}: {MINUTES[what]} min", flush=True)


def ssh_argv(key: Path) -> list[str]:
    return ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=20"]


def on_vm(lab: Lab, command: str, timeout: float = 300,
          check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*ssh_argv(lab.key), f"root@{VM_IP}", command], capture_output=True,
                       text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"on the VM: {command} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def wait_for_ssh(lab: Lab, deadline: float = 300) -> None:
    end = time.monotonic() + deadline
    while on_vm(lab, "true", timeout=30, check=False).returncode != 0:
        assert time.monotonic() < end, "the VM's sshd did not answer on its DHCP address"
        time.sleep(3)


@contextmanager
def booted(lab: Lab, disk: Path, name: str) -> Iterator[Vm]:
    """Start the VM as it is left (network boot first): its entry must send
    it to its disk (the installer starting again fails the wait); powered
    off afterwards."""
    with Vm(lab.vm(disk, name)) as vm:
        vm.wait_for(r"login:", BOOT_TIMEOUT, fail=NOT_FROM_DISK)
        wait_for_ssh(lab)
        try:
            yield vm
        finally:
            vm.powerdown(300)


def _literal(path: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)


def differences(lab: Lab, version: int, written: list[str]) -> dict[str, str]:
    """path -> rsync itemize code for every file of the VM's root that
    differs from the stored version (content by checksum, type, owner,
    mode, ACLs, xattrs, hard links) or exists on one side only; minus KEEP
    and what the install wrote.  A directory's time alone is no difference."""
    ex = [f"--exclude={p}" for p in (*KEEP, *(_literal(w) for w in written))]
    return itemized_differences(lab.tree_of(version), f"root@{VM_IP}:",
                                extra=("-e", shlex.join(ssh_argv(lab.key)), *ex))


# The machine's own files, which no update or rollback may touch.
OWN = ("/etc/fstab", "/etc/hostname", "/etc/machine-id", "/etc/ssh/ssh_host_ed25519_key",
       "/var/log/e2e-local.log", "/home/e2e/notes", "/opt/site/local.conf")


def own_files(lab: Lab) -> str:
    # lost+found is the filesystem's (fsck puts what it finds there).
    return on_vm(lab, "sha256sum " + " ".join(OWN) + "; stat -c '%n %i' /lost+found").stdout


def updateclient(lab: Lab, args: str, timeout: float = UPDATE_TIMEOUT
                 ) -> subprocess.CompletedProcess[str]:
    port = lab.server.config.http_port
    return on_vm(lab, f"python3 /root/updateclient.py --server {SERVER_IP} --port {port} "
                      f"{args}", timeout=timeout, check=False)


# --------------------------------------------------------------- tests ---

EVENTS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def installed(lab: Lab) -> Path:
    """One install over the lab's DHCP and TFTP, the VM left on network boot."""
    lab.server.monitor.subscribe(EVENTS.append)
    disk = blank_disk(lab.state.vms / f"{HOST}.img", 4 << 30)
    with timed("install over dnsmasq"), Vm(lab.vm(disk, f"{HOST}-install")) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0
        cmdline = next((ln for ln in vm.console_text().splitlines()
                        if "Command line:" in ln and "IMAGENAME=" in ln), "")
    assert cmdline and "IMAGESERVER" not in cmdline, cmdline
    return disk


def _done(lab: Lab) -> dict[str, Any]:
    done = [e for e in EVENTS if e.get("kind") == "done" and e.get("hostname") == HOST]
    assert len(done) == 1, done
    return done[0]


def test_a_dhcp_install_then_the_disk_at_the_next_start(lab: Lab, installed: Path) -> None:
    """The install went over the lab's DHCP and TFTP with no IMAGESERVER=
    (option 140); its report switched the VM's entry, so the VM, still on
    network boot, starts from its disk: the installer does not run again."""
    ev = _done(lab)
    assert ev["image"] == SSH_IMAGE and ev["image_version"] == lab.base, ev
    assert str(ev.get("mac")).lower() == MAC, ev
    default = (lab.tree / "pxelinux.cfg/default").read_text()
    assert "IMAGESERVER" not in default and f"IMAGENAME={SSH_IMAGE}@{lab.base}" in default
    entry = lab.tree / "pxelinux.cfg" / ("01-" + MAC.replace(":", "-"))
    assert "LOCALBOOT" in entry.read_text().upper(), entry.read_text()
    with timed("boot (PXE -> local disk), compare BASE"), \
            booted(lab, installed, f"{HOST}-first") as vm:
        assert f"{HOST} login:" in vm.console_text() + vm.partial
        assert not any(READY_MARKER in ln for ln in vm.console_text().splitlines())
        # It got its static lease from dnsmasq (SSH reached it there).
        assert on_vm(lab, "hostname").stdout.strip() == HOST
        assert differences(lab, lab.base, _written()) == {}
    # dnsmasq's own log: both starts went through DHCP and TFTP to
    # pxelinux and the VM's entry; only the first loaded the installer.
    sent = [Path(p).relative_to(lab.tree).as_posix() for p in re.findall(
        rf"dnsmasq-tftp\[\d+\]: sent (\S+) to {re.escape(VM_IP)}\n",
        (lab.state.vms / "bootserver.log").read_text())]
    assert sent.count("pxelinux.0") == 2 and sent.count(entry.relative_to(lab.tree).as_posix()) \
        == 2, sent
    assert sent.count("kernel") == sent.count("initrd.img") == 1, sent


def _written() -> list[str]:
    done = [e for e in EVENTS if e.get("kind") == "done" and e.get("hostname") == HOST]
    return [str(w) for w in done[-1].get("written") or ()]


@pytest.mark.e2e_full
def test_b_update_rollback_and_failed_health_check(lab: Lab, nxt: Next, installed: Path
                                                   ) -> None:
    written = _written()
    base_kernel, next_kernel = nxt.kernels
    port = lab.server.config.http_port
    with timed("boot A, update to NEXT"), booted(lab, installed, f"{HOST}-a"):
        assert on_vm(lab, "uname -r").stdout.strip() == base_kernel
        # The machine's own state, and a path its exclude file protects.
        on_vm(lab, "set -e; mkdir -p /opt/site /home/e2e /etc/sysclone; "
                   "echo site > /opt/site/local.conf; echo notes > /home/e2e/notes; "
                   "echo local > /var/log/e2e-local.log; "
                   "echo /opt/site > /etc/sysclone/updateclient.exclude")
        own = own_files(lab)
        before = differences(lab, nxt.version, written)
        # The comparison sees the update's changes (it can fail).
        for p in ("usr/bin/hello", "etc/motd", "etc/issue.net", f"boot/vmlinuz-{next_kernel}",
                  f"boot/vmlinuz-{base_kernel}"):
            assert p in before, (p, before)
        # The one-file client, as a machine without sysclone gets it.
        on_vm(lab, "python3 -c 'import urllib.request,sys; sys.stdout.buffer.write(urllib."
                   f"request.urlopen(\"http://{SERVER_IP}:{port}/v1/client/updateclient.py\")"
                   ".read())' > /root/updateclient.py")
        with timed("update BASE -> NEXT"):
            r = updateclient(lab, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        result = json.loads(r.stdout.strip().splitlines()[-1])
        assert result["image"] == f"{SSH_IMAGE}@{nxt.version}" and result["kernel_changed"], \
            result
        assert result["created"] and result["changed"] and result["deleted"], result
        # The generic kernel's initrd came from the image server (natively),
        # not from minutes of update-initramfs under emulation.
        assert f"initrd for {next_kernel} built by the image server" in r.stdout, r.stdout
        with timed("compare NEXT"):
            assert differences(lab, nxt.version, written) == {}
        assert own_files(lab) == own
    with timed("boot B, rollback, failing health check"), booted(lab, installed, f"{HOST}-b"):
        assert on_vm(lab, "uname -r").stdout.strip() == next_kernel
        assert on_vm(lab, "hello").stdout.strip() == "Hello, world!"
        r = updateclient(lab, "--rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert differences(lab, lab.base, written) == {}
        assert own_files(lab) == own
        again = updateclient(lab, "--rollback")
        assert again.returncode == 1 and "rolled back already" in again.stderr, again
        # An update whose health check fails puts BASE back by itself.
        r = updateclient(lab, f"--image {SSH_IMAGE}@{nxt.version} --health-check false")
        assert r.returncode == 3 and "health check failed" in r.stderr, r.stdout + r.stderr
        assert differences(lab, lab.base, written) == {}
        assert own_files(lab) == own
    with timed("boot C"), booted(lab, installed, f"{HOST}-c"):
        assert on_vm(lab, "uname -r").stdout.strip() == base_kernel
        assert on_vm(lab, "cat /etc/motd").stdout.strip() == "sysclone e2e: version one"
    print("e2e update minutes:", json.dumps(MINUTES), flush=True)


@pytest.mark.e2e_full
def test_c_autoinstall_reinstalls_with_another_image(lab: Lab, nxt: Next, installed: Path
                                                     ) -> None:
    """`--autoinstall`: the running VM fetches the boot environment into
    /boot/sysclone, adds a one-shot GRUB entry and reboots into a
    reinstall with another image; no media, its network boot untouched
    (its entry still says "local disk")."""
    other = "e2e-other"
    sysclone(lab.state, "image", "copy", f"{SSH_IMAGE}@{nxt.version}", other)
    with timed("boot D, autoinstall"), Vm(lab.vm(installed, f"{HOST}-d")) as vm:
        vm.wait_for(r"login:", BOOT_TIMEOUT, fail=NOT_FROM_DISK)
        wait_for_ssh(lab)
        r = updateclient(lab, f"--autoinstall --image {other}", timeout=600)
        # The machine reboots itself (QEMU stops at a reset: -no-reboot).
        assert r.returncode in (0, 255), r.stdout + r.stderr
        assert "next boot: the sysclone installer" in r.stdout, r.stdout + r.stderr
        assert vm.wait_exit(300) == 0
    done_before = len([e for e in EVENTS if e.get("kind") == "done" and e.get("hostname") == HOST])
    with timed("reinstall (GRUB one-shot entry)"), Vm(lab.vm(installed, f"{HOST}-e")) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(300) == 0
    done = [e for e in EVENTS if e.get("kind") == "done" and e.get("hostname") == HOST]
    assert len(done) == done_before + 1 and done[-1]["image"] == other, done
    with timed("boot F"), booted(lab, installed, f"{HOST}-f"):
        assert on_vm(lab, "uname -r").stdout.strip() == nxt.kernels[1]
        assert on_vm(lab, "cat /etc/motd").stdout.strip() == "sysclone e2e: version two"
        assert differences(lab, nxt.version, _written()) == {}
    print("e2e update minutes:", json.dumps(MINUTES), flush=True)
