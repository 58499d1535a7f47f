"""Booting QEMU machines that stand in for bare metal, and watching them.

A machine's serial console is read line by line as it comes: the harness
waits for markers (the agent's "ready", "done", a login prompt), records
when each appeared, keeps the whole console in a log file, and never waits
longer than a hard timeout.  TCG is the default accelerator (KVM guests hang
on the CI machines); SYSCLONE_QEMU_ACCEL=kvm opts in.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sysclone.errors import SyscloneError
from sysclone.run import daemon

log = logging.getLogger(__name__)

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# Secure Boot: the SMM-enforcing build, with variables that hold Microsoft's
# keys (which signed Debian's shim) and have Secure Boot switched on.
OVMF_CODE_SECURE = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
OVMF_VARS_SECURE = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
# Names boot_order may give (net, cdrom, diskN, usbN).
_BOOT_DEVICE = re.compile(r"(net|cdrom|disk\d+|usb\d+)\Z")


class VmError(SyscloneError):
    pass


# The guest CPU under TCG (VmSpec.cpu_model says why).
DEFAULT_CPU = "Nehalem,+rdrand"

# Kernel arguments for sysclone's installer booted in these machines, and
# for every baseline it is measured against (the same kernel, the same
# arguments) -- never for the systems it installs.  The installer runs only
# the agent and the image's own tools, and both make emulation cheaper:
# mitigations=off: every system call costs several times more with the
# mitigations on (a fork+exec 83 -> 69 ms under TCG).
# norandmaps: QEMU 7.2's TCG finds the code it has translated by virtual
# address, so a program whose libraries load at new random addresses at
# each start has them all translated anew.  Measured in one VM (TCG, 2
# vCPUs), the same commands with and without address randomization: 50 runs
# of /bin/true 0.77 -> 0.16 s, 50 of ls 1.15 -> 0.24 s, update-grub 6.7-7.8
# -> 2.2-2.3 s; the agent's bootloader phase 7.5 -> 3.9 s.
INSTALLER_ARGS = "mitigations=off norandmaps"


@dataclass(frozen=True)
class VmSpec:
    name: str
    workdir: Path  # serial log, QMP socket, UEFI vars
    memory_mib: int = 512
    # Two vCPUs (one host thread each with multi-threaded TCG): no server
    # has a single core, and the kernel's parallel work (unpacking the
    # initramfs while drivers probe) needs a second CPU to overlap.
    cpus: int = 2
    firmware: str = "bios"  # bios | uefi
    secure_boot: bool = False  # uefi only: OVMF with Microsoft's keys, enforcing
    disks: tuple[Path, ...] = ()
    disk_bus: str = "virtio"  # virtio | nvme | sata
    nic_model: str = "virtio-net-pci"
    # QEMU's option ROM on the NIC (iPXE).  False: the firmware's own PXE
    # (OVMF's, for virtio-net only), as a UEFI machine has: QEMU's iPXE
    # (Debian 12: 1.0.0+git-20190125) reports the buffer size, not the file
    # size, of a TFTP download through its PXE base code, so shim refuses
    # the GRUB it fetched ("Malformed binary after Attribute Certificate
    # Table", rhboot/shim#760).
    nic_rom: bool = True
    mac: str = "52:54:00:12:34:56"
    tftp_root: Path | None = None
    bootfile: str | None = None
    boot: str = "c"  # n = network, c = first disk, d = cdrom
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    cdrom: Path | None = None
    # Disk images on a USB controller (qemu-xhci), as sticks, removable.
    usb_disks: tuple[Path, ...] = ()
    # A host tap device for the NIC instead of QEMU's user network: the
    # machine is then on a real L2 segment (a DHCP server there answers it).
    tap: str | None = None
    # Boot devices in order, as firmware boot indexes ("net", "disk0",
    # "cdrom", "usb0"): OVMF follows these, not -boot order.
    boot_order: tuple[str, ...] = ()
    # (host port, guest port): TCP on the host's loopback forwarded into the
    # guest (QEMU user networking), e.g. to reach its sshd.
    forwards: tuple[tuple[int, int], ...] = ()
    watchdog: bool = True
    cpu: str | None = None
    extra: tuple[str, ...] = ()

    def accel(self) -> str:
        return os.environ.get("SYSCLONE_QEMU_ACCEL", "tcg")

    def cpu_model(self) -> str:
        if self.cpu:
            return self.cpu
        if self.accel() == "kvm":
            return "host"
        # Nehalem (x86-64-v2, no AVX): glibc then avoids AVX code paths,
        # which TCG emulates slowly.  Measured: a loop of small dynamically
        # linked programs ran 1.45x faster than with "max"; update-initramfs
        # itself took about as long with either.  With RDRAND, as every x86
        # CPU since 2012 and every `-cpu host` guest has: without it the
        # kernel has no entropy at boot, and the first program to ask for
        # random bytes (Python's start, for its hash seed) waits while the
        # kernel makes some from timer jitter -- 1.0-1.2 s under TCG
        # (measured: the first `python3 -c pass` after boot 1.22 s, the
        # second 0.08 s; with RDRAND 0.25 s and 0.08 s).
        return os.environ.get("SYSCLONE_QEMU_CPU", DEFAULT_CPU)


def qemu_argv(spec: VmSpec, qmp: Path) -> list[str]:
    for dev in spec.boot_order:
        if not _BOOT_DEVICE.match(dev):
            raise VmError(f"{spec.name}: boot device {dev!r} is not net, cdrom, diskN or usbN")
    if spec.secure_boot and spec.firmware != "uefi":
        raise VmError(f"{spec.name}: Secure Boot needs firmware='uefi'")
    if spec.tap and (spec.tftp_root or spec.bootfile or spec.forwards):
        raise VmError(f"{spec.name}: tftp, bootfile and forwards are QEMU user-network "
                      "features; a tap NIC has none")

    def bootindex(dev: str) -> str:
        return f",bootindex={spec.boot_order.index(dev)}" if dev in spec.boot_order else ""

    # SMM: the secure OVMF build refuses to start without it.
    machine = "q35,smm=on" if spec.secure_boot else "q35"
    argv = ["qemu-system-x86_64", "-name", spec.name, "-machine", machine,
            "-accel", spec.accel(), "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
            "-display", "none", "-vga", "none", "-serial", "stdio", "-monitor", "none",
            "-qmp", f"unix:{qmp},server=on,wait=off", "-no-reboot"]
    argv += ["-cpu", spec.cpu_model()]
    if spec.firmware == "uefi":
        code, template = (OVMF_CODE_SECURE, OVMF_VARS_SECURE) if spec.secure_boot \
            else (OVMF_CODE, OVMF_VARS)
        # Separate files: a machine's variables never change enforcement.
        vars_copy = spec.workdir / (f"{spec.name}.OVMF_VARS.ms.fd" if spec.secure_boot
                                    else f"{spec.name}.OVMF_VARS.fd")
        if not vars_copy.exists():
            shutil.copyfile(template, vars_copy)
        if spec.secure_boot:
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    for i, d in enumerate(spec.disks):
        fmt = "qcow2" if d.suffix == ".qcow2" else "raw"
        argv += ["-drive", f"if=none,id=disk{i},format={fmt},file={d},cache=unsafe"]
        if spec.disk_bus == "nvme":
            argv += ["-device", f"nvme,drive=disk{i},serial=sysclone{i}{bootindex(f'disk{i}')}"]
        elif spec.disk_bus == "sata":
            argv += ["-device", f"ide-hd,drive=disk{i}{bootindex(f'disk{i}')}"]
        else:
            argv += ["-device", f"virtio-blk-pci,drive=disk{i}{bootindex(f'disk{i}')}"]
    if spec.usb_disks:
        argv += ["-device", "qemu-xhci,id=xhci"]
    for i, d in enumerate(spec.usb_disks):
        argv += ["-drive", f"if=none,id=usb{i},format=raw,file={d},cache=unsafe",
                 "-device", f"usb-storage,bus=xhci.0,drive=usb{i},removable=on"
                            f"{bootindex(f'usb{i}')}"]
    if spec.tap:
        net = f"tap,id=n0,ifname={spec.tap},script=no,downscript=no"
    else:
        net = "user,id=n0"
        if spec.tftp_root:
            net += f",tftp={spec.tftp_root}"
        if spec.bootfile:
            net += f",bootfile={spec.bootfile}"
        for host_port, guest_port in spec.forwards:
            net += f",hostfwd=tcp:127.0.0.1:{host_port}-:{guest_port}"
    argv += ["-netdev", net,
             "-device", f"{spec.nic_model},netdev=n0,mac={spec.mac}{bootindex('net')}"
                        + ("" if spec.nic_rom else ",romfile=")]
    if spec.cdrom:
        argv += ["-drive", f"if=none,id=cd0,media=cdrom,readonly=on,file={spec.cdrom}",
                 "-device", f"ide-cd,drive=cd0{bootindex('cdrom')}"]
    argv += ["-boot", f"order={spec.boot}"]
    if spec.kernel:
        argv += ["-kernel", str(spec.kernel)]
        if spec.initrd:
            argv += ["-initrd", str(spec.initrd)]
        if spec.append:
            argv += ["-append", spec.append]
    if spec.watchdog:
        # A guest that arms the watchdog and then hangs is powered off.
        argv += ["-device", "i6300esb", "-action", "watchdog=poweroff"]
    return [*argv, *spec.extra]


@dataclass
class Vm:
    """A running machine.  Use as a context manager: it is always killed."""

    spec: VmSpec
    proc: subprocess.Popen[str] | None = None
    started: float = 0.0
    lines: list[tuple[float, str]] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None
    on_line: object = None
    partial: str = ""  # the console's current, unfinished line

    @property
    def serial_log(self) -> Path:
        return self.spec.workdir / f"{self.spec.name}.serial.log"

    @property
    def qmp_path(self) -> Path:
        return self.spec.workdir / f"{self.spec.name}.qmp"

    def start(self) -> Vm:
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        self.qmp_path.unlink(missing_ok=True)
        argv = qemu_argv(self.spec, self.qmp_path)
        (self.spec.workdir / f"{self.spec.name}.cmdline").write_text(" ".join(argv) + "\n")
        self.started = time.monotonic()
        self.proc = daemon(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, name=f"serial-{self.spec.name}",
                                        daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        """Collect console output.  Read in chunks, not lines: a login prompt
        has no newline after it and must still be seen."""
        assert self.proc and self.proc.stdout
        fd = self.proc.stdout.fileno()
        buf = b""
        with self.serial_log.open("wb") as logf:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                logf.write(chunk)
                logf.flush()
                buf += chunk
                *done, buf = buf.split(b"\n")
                t = time.monotonic() - self.started
                with self._cond:
                    for raw in done:
                        line = raw.decode(errors="replace").rstrip("\r")
                        self.lines.append((t, line))
                        if callable(self.on_line):
                            self.on_line(line)
                    self.partial = buf.decode(errors="replace")
                    self._cond.notify_all()
        with self._cond:
            if buf:
                self.lines.append((time.monotonic() - self.started,
                                   buf.decode(errors="replace")))
            self.partial = ""
            self._cond.notify_all()

    def __enter__(self) -> Vm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_for(self, pattern: str, timeout: float, *, fail: str | None = None,
                 start_index: int = 0, partial: bool = True) -> tuple[float, str]:
        """Wait for a console line matching `pattern` (regex); raise on timeout,
        on a line matching `fail`, or if the machine stops first.  With
        `partial`, the unfinished last line counts too (a login prompt has no
        newline); without, only whole lines do (to read a whole message)."""
        rx, frx = re.compile(pattern), re.compile(fail) if fail else None
        deadline = time.monotonic() + timeout
        i = start_index
        with self._cond:
            while True:
                while i < len(self.lines):
                    t, line = self.lines[i]
                    i += 1
                    if frx and frx.search(line):
                        raise VmError(f"{self.spec.name}: console shows failure: {line.strip()}",
                                      hint=f"console log: {self.serial_log}")
                    if rx.search(line):
                        return t, line
                if partial and rx.search(self.partial):
                    return time.monotonic() - self.started, self.partial
                if not self.running and (self._reader is None or not self._reader.is_alive()):
                    raise VmError(f"{self.spec.name} stopped before {pattern!r} appeared",
                                  hint=f"console log: {self.serial_log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VmError(f"{self.spec.name}: {pattern!r} did not appear within "
                                  f"{timeout:.0f}s", hint=f"console log: {self.serial_log}")
                self._cond.wait(min(left, 1.0))

    def wait_exit(self, timeout: float) -> int:
        assert self.proc
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise VmError(f"{self.spec.name} did not power off within {timeout:.0f}s",
                          hint=f"console log: {self.serial_log}") from None
        if self._reader:
            self._reader.join(5)
        return rc

    def qmp(self, command: str, **arguments: object) -> object:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.qmp_path))
            f = s.makefile("rw")
            f.readline()  # greeting
            for msg in ({"execute": "qmp_capabilities"},
                        {"execute": command, "arguments": arguments}):
                f.write(json.dumps(msg) + "\n")
                f.flush()
                while True:
                    reply = json.loads(f.readline())
                    if "return" in reply or "error" in reply:
                        break
            if "error" in reply:
                raise VmError(f"QMP {command}: {reply['error']}")
            return reply["return"]

    def powerdown(self, timeout: float = 60.0) -> int:
        """ACPI power button, as a person would press it; kill if ignored."""
        try:
            self.qmp("system_powerdown")
        except (OSError, VmError) as e:
            log.warning("powerdown of %s failed: %s", self.spec.name, e)
            self.kill()
            return -9
        return self.wait_exit(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self._reader:
            self._reader.join(5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()

    def console_text(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)


def blank_disk(path: Path, size_bytes: int) -> Path:
    """A sparse raw disk: nothing is allocated, so 'untouched' is checkable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size_bytes)
    return path


def allocated_bytes(path: Path) -> int:
    return path.stat().st_blocks * 512
