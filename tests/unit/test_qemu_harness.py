"""ci.qemu: the QEMU command line, disk helpers, and the console watcher
(fed by a fake process over a pipe: no QEMU runs)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ci import qemu
from ci.qemu import Vm, VmError, VmSpec, allocated_bytes, blank_disk, qemu_argv


@pytest.fixture(autouse=True)
def _tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYSCLONE_QEMU_ACCEL", raising=False)
    monkeypatch.delenv("SYSCLONE_QEMU_CPU", raising=False)


def opt(argv: list[str], flag: str) -> list[str]:
    """Every value given to `flag`."""
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# ------------------------------------------------------------ qemu_argv ---

def test_argv_defaults(tmp_path):
    argv = qemu_argv(VmSpec("vm1", tmp_path), tmp_path / "vm1.qmp")
    assert argv[0] == "qemu-system-x86_64"
    assert opt(argv, "-name") == ["vm1"]
    assert opt(argv, "-machine") == ["q35"]
    assert opt(argv, "-accel") == ["tcg"]
    assert opt(argv, "-cpu") == ["Nehalem,+rdrand"]
    assert opt(argv, "-m") == ["512"] and opt(argv, "-smp") == ["2"]
    assert opt(argv, "-serial") == ["stdio"]
    assert opt(argv, "-qmp") == [f"unix:{tmp_path}/vm1.qmp,server=on,wait=off"]
    assert "-no-reboot" in argv
    assert opt(argv, "-netdev") == ["user,id=n0"]
    assert opt(argv, "-device")[0] == "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"
    assert opt(argv, "-boot") == ["order=c"]
    # a hung guest that armed the watchdog is powered off
    assert "i6300esb" in opt(argv, "-device")
    assert opt(argv, "-action") == ["watchdog=poweroff"]
    assert "-kernel" not in argv and "-drive" not in argv


@pytest.mark.parametrize(("bus", "device"), [
    ("virtio", "virtio-blk-pci,drive=disk{i}"),
    ("nvme", "nvme,drive=disk{i},serial=sysclone{i}"),
    ("sata", "ide-hd,drive=disk{i}"),
])
def test_argv_disks(tmp_path, bus, device):
    disks = (tmp_path / "a.raw", tmp_path / "b.qcow2")
    argv = qemu_argv(VmSpec("vm", tmp_path, disks=disks, disk_bus=bus), tmp_path / "q")
    assert opt(argv, "-drive") == [
        f"if=none,id=disk0,format=raw,file={disks[0]},cache=unsafe",
        f"if=none,id=disk1,format=qcow2,file={disks[1]},cache=unsafe"]
    devices = opt(argv, "-device")
    assert device.format(i=0) in devices and device.format(i=1) in devices


def test_argv_pxe_boot(tmp_path):
    spec = VmSpec("vm", tmp_path, tftp_root=tmp_path / "tftp", bootfile="pxelinux.0", boot="n",
                  nic_model="e1000", mac="52:54:00:aa:bb:cc")
    argv = qemu_argv(spec, tmp_path / "q")
    assert opt(argv, "-netdev") == [f"user,id=n0,tftp={tmp_path}/tftp,bootfile=pxelinux.0"]
    assert "e1000,netdev=n0,mac=52:54:00:aa:bb:cc" in opt(argv, "-device")
    assert opt(argv, "-boot") == ["order=n"]


def test_argv_direct_kernel_boot_and_cdrom(tmp_path):
    spec = VmSpec("vm", tmp_path, kernel=tmp_path / "kernel", initrd=tmp_path / "initrd.img",
                  append="console=ttyS0 panic=1", cdrom=tmp_path / "x.iso", boot="d",
                  watchdog=False, extra=("-snapshot",))
    argv = qemu_argv(spec, tmp_path / "q")
    assert opt(argv, "-kernel") == [str(tmp_path / "kernel")]
    assert opt(argv, "-initrd") == [str(tmp_path / "initrd.img")]
    assert opt(argv, "-append") == ["console=ttyS0 panic=1"]
    assert f"if=none,id=cd0,media=cdrom,readonly=on,file={tmp_path}/x.iso" in opt(argv, "-drive")
    assert "ide-cd,drive=cd0" in opt(argv, "-device")
    assert "i6300esb" not in argv and "-action" not in argv
    assert argv[-1] == "-snapshot"


def test_argv_initrd_and_append_need_a_kernel(tmp_path):
    argv = qemu_argv(VmSpec("vm", tmp_path, initrd=tmp_path / "i", append="x"), tmp_path / "q")
    assert "-initrd" not in argv and "-append" not in argv


def test_argv_accel_and_cpu(tmp_path, monkeypatch):
    assert opt(qemu_argv(VmSpec("vm", tmp_path, cpu="Skylake-Server"), tmp_path / "q"),
               "-cpu") == ["Skylake-Server"]
    monkeypatch.setenv("SYSCLONE_QEMU_CPU", "qemu64")
    assert opt(qemu_argv(VmSpec("vm", tmp_path), tmp_path / "q"), "-cpu") == ["qemu64"]
    monkeypatch.setenv("SYSCLONE_QEMU_ACCEL", "kvm")
    argv = qemu_argv(VmSpec("vm", tmp_path), tmp_path / "q")
    assert opt(argv, "-accel") == ["kvm"] and opt(argv, "-cpu") == ["host"]


def test_argv_uefi_copies_the_vars_once(tmp_path, monkeypatch):
    code = tmp_path / "ovmf/OVMF_CODE_4M.fd"
    vars_ = tmp_path / "ovmf/OVMF_VARS_4M.fd"
    code.parent.mkdir()
    code.write_bytes(b"code")
    vars_.write_bytes(b"pristine vars")
    monkeypatch.setattr(qemu, "OVMF_CODE", code)
    monkeypatch.setattr(qemu, "OVMF_VARS", vars_)
    work = tmp_path / "work"
    work.mkdir()
    argv = qemu_argv(VmSpec("vm", work, firmware="uefi"), work / "q")
    copy = work / "vm.OVMF_VARS.fd"
    assert opt(argv, "-drive") == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        f"if=pflash,format=raw,unit=1,file={copy}"]
    assert copy.read_bytes() == b"pristine vars"
    # the machine's own boot entries survive the next start
    copy.write_bytes(b"vars with a boot entry")
    qemu_argv(VmSpec("vm", work, firmware="uefi"), work / "q")
    assert copy.read_bytes() == b"vars with a boot entry"


# -------------------------------------------------------------- disks ---

def test_blank_disk_is_sparse(tmp_path):
    d = blank_disk(tmp_path / "vms/disk.raw", 4 << 30)
    assert d == tmp_path / "vms/disk.raw"
    assert d.stat().st_size == 4 << 30
    assert allocated_bytes(d) == 0
    with d.open("r+b") as f:
        f.seek(1 << 30)
        f.write(os.urandom(64 * 1024))
    assert 64 * 1024 <= allocated_bytes(d) < 1 << 20
    assert d.stat().st_size == 4 << 30


# ---------------------------------------------------------- the console ---

class FakeQemu:
    """What Vm sees of a QEMU process: its serial console on a pipe."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        r, self._w = os.pipe()
        self.stdout = os.fdopen(r, "rb", buffering=0)
        self.returncode: int | None = None

    def feed(self, data: bytes) -> None:
        os.write(self._w, data)

    def exit(self, rc: int) -> None:
        self.returncode = rc
        self._close()

    def _close(self) -> None:
        if self._w >= 0:
            os.close(self._w)
            self._w = -1

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.argv, timeout or 0)
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9
        self._close()


@pytest.fixture
def vm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Vm, FakeQemu]]:
    procs: list[FakeQemu] = []

    def daemon(argv: list[str], **kw: Any) -> FakeQemu:
        assert argv[0] == "qemu-system-x86_64"
        assert kw == {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
        procs.append(FakeQemu(argv))
        return procs[-1]

    monkeypatch.setattr(qemu, "daemon", daemon)
    machine = Vm(VmSpec("node1", tmp_path / "work"))
    with machine:
        yield machine, procs[0]
    assert procs[0].returncode is not None  # always killed


def test_start_records_the_command_line(vm, tmp_path):
    machine, proc = vm
    cmdline = (tmp_path / "work/node1.cmdline").read_text()
    assert cmdline == " ".join(proc.argv) + "\n"
    assert machine.running
    assert machine.qmp_path == tmp_path / "work/node1.qmp"


def test_wait_for_lines(vm):
    machine, proc = vm
    seen: list[str] = []
    machine.on_line = seen.append
    proc.feed(b"SeaBIOS (version 1.16.2)\r\n")
    proc.feed(b"Linux version 6.1.0-50-cloud-amd64\r\nsysclone-agent: rea")
    proc.feed(b"dy in 1.2s\r\n")
    t, line = machine.wait_for(r"sysclone-agent: ready", timeout=10)
    assert line == "sysclone-agent: ready in 1.2s"
    assert t >= 0
    assert seen == ["SeaBIOS (version 1.16.2)", "Linux version 6.1.0-50-cloud-amd64",
                    "sysclone-agent: ready in 1.2s"]
    assert machine.console_text() == "\n".join(seen)


def test_wait_for_sees_a_prompt_without_newline(vm):
    machine, proc = vm
    proc.feed(b"Debian GNU/Linux 12 node1 ttyS0\r\n\r\nnode1 login: ")
    _, line = machine.wait_for(r"login: $", timeout=10)
    assert line == "node1 login: "


def test_wait_for_start_index_skips_old_lines(vm):
    machine, proc = vm
    proc.feed(b"phase fetch\n")
    machine.wait_for("phase fetch", timeout=10)
    n = len(machine.lines)
    proc.feed(b"phase configure\nphase fetch again\n")
    _, line = machine.wait_for("phase fetch", timeout=10, start_index=n)
    assert line == "phase fetch again"


def test_wait_for_failure_marker(vm):
    machine, proc = vm
    proc.feed(b"booting\nKernel panic - not syncing: VFS: Unable to mount root fs\n")
    with pytest.raises(VmError, match="node1: console shows failure: Kernel panic") as e:
        machine.wait_for("sysclone-agent: done", timeout=10, fail=r"Kernel panic|FAILED")
    assert e.value.hint == f"console log: {machine.serial_log}"


def test_wait_for_timeout(vm):
    machine, proc = vm
    proc.feed(b"still booting\n")
    with pytest.raises(VmError, match=r"node1: 'never' did not appear within 0s"):
        machine.wait_for("never", timeout=0.2)


def test_wait_for_machine_stopped(vm):
    machine, proc = vm
    proc.feed(b"reboot: Power down\n")
    proc.exit(0)
    with pytest.raises(VmError, match="node1 stopped before 'login:' appeared"):
        machine.wait_for("login:", timeout=10)
    assert not machine.running


def test_last_unfinished_line_is_kept_at_exit(vm):
    machine, proc = vm
    proc.feed(b"one\ntwo without newline")
    proc.exit(0)
    assert machine.wait_exit(10) == 0
    assert [line for _, line in machine.lines] == ["one", "two without newline"]
    assert machine.partial == ""


def test_serial_log_is_the_raw_console(vm):
    machine, proc = vm
    raw = b"\x1b[2J\rSeaBIOS\r\nbad byte \xff here\r\nend\n"
    proc.feed(raw)
    proc.exit(0)
    machine.wait_exit(10)
    assert machine.serial_log.read_bytes() == raw
    assert [line for _, line in machine.lines] == ["\x1b[2J\rSeaBIOS", "bad byte \ufffd here",
                                                   "end"]


def test_wait_exit_timeout_kills(vm):
    machine, proc = vm
    with pytest.raises(VmError, match="node1 did not power off within 0s"):
        machine.wait_exit(0.01)
    assert proc.returncode == -9


def test_powerdown_without_qmp_kills(vm, caplog):
    machine, proc = vm
    assert machine.powerdown(timeout=1) == -9
    assert proc.returncode == -9
    assert "powerdown of node1 failed" in caplog.text


# ----------------------------------------------------------------- QMP ---

def fake_qmp_server(path: Path, replies: dict[str, Any]) -> tuple[threading.Thread, list]:
    """A one-connection QMP server on a unix socket."""
    received: list[dict[str, Any]] = []
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, conn.makefile("rw") as f:
            f.write(json.dumps({"QMP": {"version": {}, "capabilities": []}}) + "\n")
            f.flush()
            for line in f:
                msg = json.loads(line)
                received.append(msg)
                cmd = msg["execute"]
                if cmd == "qmp_capabilities":
                    f.write('{"return": {}}\n')
                else:
                    f.write(json.dumps({"event": "POWERDOWN"}) + "\n")  # events come first
                    f.write(json.dumps(replies[cmd]) + "\n")
                f.flush()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t, received


def test_qmp_command(tmp_path):
    machine = Vm(VmSpec("vm", tmp_path))
    t, received = fake_qmp_server(machine.qmp_path, {"query-status": {
        "return": {"status": "running", "running": True}}})
    assert machine.qmp("query-status") == {"status": "running", "running": True}
    t.join(5)
    assert received == [{"execute": "qmp_capabilities"},
                        {"execute": "query-status", "arguments": {}}]


def test_qmp_error(tmp_path):
    machine = Vm(VmSpec("vm", tmp_path))
    t, received = fake_qmp_server(machine.qmp_path, {"device_del": {
        "error": {"class": "DeviceNotFound", "desc": "Device 'x' not found"}}})
    with pytest.raises(VmError, match=r"QMP device_del: .*DeviceNotFound"):
        machine.qmp("device_del", id="x")
    t.join(5)
    assert received[1] == {"execute": "device_del", "arguments": {"id": "x"}}


def test_installer_args_reach_the_kernel_and_the_agent_takes_them() -> None:
    """The demo's and the benchmarks' installer kernel line carries
    INSTALLER_ARGS (no ASLR, no mitigations: emulation costs) and the
    agent's parameter parser passes them by without a word."""
    from agent.params.layers import parse_cmdline
    from sysclone.demo import install_append

    line = install_append("node1", "demo", 8080, 8873, "poweroff")
    words = line.split()
    assert {"norandmaps", "mitigations=off"} <= set(words)
    assert set(qemu.INSTALLER_ARGS.split()) <= set(words)
    assert not parse_cmdline(line, name="test").warnings
