"""The install flow (agent/flow.py) on a fake machine, without a VM.

The machine is faked at its boundaries only: sysfs (a captured VM with
eth0 on virtio), the kernel's netlink and the DHCP exchange (netfakes), the
disk listing, the image server's HTTP API, the reporter's connection, and
every command by its argv (tests/conftest.py).  The flow's own code, the
parameters' resolution and the phase runner run for real.

Covered: a dry run (the plan is printed, no partition, format or mount
command runs), si.break (the shell runs before the named phase and the
install goes on), a static install network (no DHCP; address, gateway and
DNS reach the interface, resolv.conf and the installed system's network
configuration), DHCP-provided parameters and their precedence, and the
refusals that come before any phase."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent import disks as disklib
from agent import drivers, flow, hardware, inventory, network, session, start
from agent.disks import Disk
from agent.logsetup import LogTargets
from agent.phases import Steps
from agent.planner import make_plan
from agent.report import DONE_MARKER, FAILED_MARKER, READY_MARKER, Reporter
from sysclone.errors import SyscloneError
from tests.conftest import FakeCommands, FakeResult, rsync_listing
from tests.unit.agentfakes import FakeSysfs, sample
from tests.unit.netfakes import FakeDhcp, FakeNetlink, refuse_dhcp

GiB = 1 << 30
MAC = "02:fc:00:00:00:01"  # eth0 of the captured VM

# Commands that would write to a disk: none may run in a dry run.
WRITERS = {"sfdisk", "parted", "partx", "wipefs", "sgdisk", "mkfs", "mkfs.ext4", "mkfs.xfs",
           "mkfs.vfat", "mkswap", "mount", "umount", "rsync", "chroot", "grub-install", "sync",
           "mount(2)", "umount2(2)"}


class Recorder(Reporter):
    """A Reporter that keeps what it said and sent, in order, and never
    connects anywhere."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        super().__init__(console=io.StringIO())
        self.log = log
        self.monitor: str | None = None

    def say(self, text: str) -> None:
        super().say(text)
        self.log.append(("say", text))

    def event(self, kind: str, **data: Any) -> None:
        self.log.append(("event", kind, data))

    def connect(self, url: str) -> None:
        self.monitor = url

    def flush(self, timeout: float = 60.0) -> None:
        pass

    @property
    def lines(self) -> list[str]:
        return [e[1] for e in self.log if e[0] == "say"]

    def phases(self, status: str = "start") -> list[str]:
        return [e[2]["phase"] for e in self.log
                if e[:2] == ("event", "phase") and e[2]["status"] == status]


@dataclass
class FakeImageServer:
    """The image server's HTTP API as the agent sees it (agent.server)."""

    host: str
    port: int
    answers: dict[str, Any]
    asked: list[dict[str, Any]]
    hook: Callable[[], None] | None = None  # runs while the agent waits for the answer

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def instructions(self, **query: Any) -> dict[str, Any]:
        self.asked.append({"server": f"{self.host}:{self.port}", **query})
        if self.hook:
            self.hook()
        return self.answers


@dataclass
class Machine:
    tmp: Path
    commands: FakeCommands
    net: FakeNetlink
    log: list[tuple[Any, ...]] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=lambda: {
        "image": {"name": "deb12", "bytes": GiB, "files": 30_000, "usage": {"/": GiB}},
        "hostname": "node-from-server"})
    asked: list[dict[str, Any]] = field(default_factory=list)
    during_instructions: Callable[[], None] | None = None

    @property
    def cmdline(self) -> Path:
        return self.tmp / "cmdline"

    @property
    def local_cfg(self) -> Path:
        return self.tmp / "local.cfg"

    @property
    def resolv_conf(self) -> Path:
        return self.tmp / "resolv.conf"

    def install(self, cmdline: str) -> tuple[int, Recorder]:
        self.cmdline.write_text(f"BOOT_IMAGE=kernel initrd=initrd.img {cmdline} "
                                f"BOOTIF=01-{MAC.replace(':', '-')}\n")
        reporter = Recorder(self.log)
        return start.run_install(reporter, self.cmdline), reporter

    def post_action(self) -> str:
        return (self.tmp / "run/post-action").read_text().strip()

    def ran(self) -> list[list[str]]:
        return self.commands.calls

    def shell(self, argv: list[str]) -> FakeResult:
        """si.break's shell: recorded where it happens among the events."""
        self.log.append(("shell",))
        return FakeResult()


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            fake_commands: FakeCommands) -> Iterator[Machine]:
    m = Machine(tmp_path, fake_commands, FakeNetlink().install(monkeypatch))
    sysfs = tmp_path / "sys"
    FakeSysfs.captured(sysfs)
    # Where the agent keeps state and finds its inputs.
    monkeypatch.setattr(session, "RUN_DIR", tmp_path / "run")
    monkeypatch.setattr(session, "LOCAL_CFG", m.local_cfg)
    monkeypatch.setattr(flow, "TARGET", tmp_path / "sysroot")
    monkeypatch.setattr(drivers, "UDEV_CONTROL", tmp_path / "run/udev/control")
    monkeypatch.setattr(network, "SYSFS", sysfs)
    monkeypatch.setattr(network, "RESOLV_CONF", m.resolv_conf)
    # Hardware: the fake sysfs, and no module to load.
    monkeypatch.setattr(hardware, "coldplug", functools.partial(hardware.coldplug,
                                                                sysfs=sysfs))
    monkeypatch.setattr(flow, "Kmod", FakeKmod)
    monkeypatch.setattr(drivers, "Kmod", FakeKmod)
    # Inventory: udev's records of a real VM (there is no udev here).
    monkeypatch.setattr(inventory, "snapshot", lambda context=None: inventory.records_from_json(
        sample("udev-records-vm.json")))
    # Disks, firmware, memory, the host's mkfs tools: this machine's.
    monkeypatch.setattr(disklib, "list_disks", lambda: [Disk("vda", 20 * GiB)])
    monkeypatch.setattr(flow, "firmware", lambda: "bios")
    monkeypatch.setattr(flow, "_ram_bytes", lambda: 2 * GiB)
    monkeypatch.setattr(flow, "make_plan", functools.partial(make_plan,
                                                             have_tool=lambda tool: True))
    # The image server.
    monkeypatch.setattr(flow, "ImageServer",
                        lambda host, port: FakeImageServer(host, port, m.answers, m.asked,
                                                           m.during_instructions))
    monkeypatch.setenv("TERM", "linux")
    # Commands, by argv.
    fake_commands.add(["udevadm"], "")
    fake_commands.add(["/usr/lib/systemd/systemd-udevd"], "")
    fake_commands.add(["rsync", "--list-only"], rsync_listing())
    fake_commands.add(["setsid", "cttyhack", "sh"], m.shell)
    yield m


class FakeKmod:
    """The boot environment's libkmod: no driver for the captured VM's
    modaliases (nothing is loaded), and the storage modules the standard
    boot environment carries, asked for by name."""

    MODULES = frozenset({"md_mod", "raid0", "raid1", "raid10", "raid456", "dm_mod",
                         "dm_crypt", "ext4", "xfs", "btrfs", "vfat"})

    def lookup(self, alias: str) -> list[str]:
        return [alias] if alias in self.MODULES else []

    def load(self, name: str, options: str | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeKmod:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def commands_run(m: Machine) -> set[str]:
    return {argv[0] for argv in m.ran()}


@pytest.fixture
def dhcp(monkeypatch: pytest.MonkeyPatch) -> FakeDhcp:
    return FakeDhcp().install(monkeypatch)


# -- dry run ---------------------------------------------------------------------------------

def test_dry_run_prints_the_plan_and_touches_nothing(machine: Machine, dhcp: FakeDhcp) -> None:
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 HOSTNAME=node1 si.dry-run")
    assert rc == 0, rep.lines
    assert rep.phases("start") == ["hardware", "network", "monitor", "instructions", "plan"]
    assert rep.phases("done") == rep.phases("start")
    text = "\n".join(rep.lines)
    assert "image deb12, layout built-in default" in text
    assert "/dev/vda" in text and "ext4" in text  # the plan, as describe() prints it
    assert "dry run: nothing was written" in rep.lines
    # The effective parameters, with their origins.
    assert any(line.startswith("Install parameters (precedence") for line in rep.lines)
    assert any("si.dry-run" in line and "kernel command line" in line for line in rep.lines)
    assert rep.lines[-1].startswith(f"{DONE_MARKER} in ")
    # Only reading commands ran: no partitioning, formatting or mounting.
    assert commands_run(machine) & WRITERS == {"rsync"}
    assert [a for a in machine.ran() if a[0] == "rsync"] == [
        ["rsync", "--list-only", "--no-motd", "--relative", "--no-implied-dirs",
         "rsync://10.0.2.2:873/deb12/./etc/hostname"]]
    assert machine.asked == [{"server": "10.0.2.2:8181", "hostname": "node1", "mac": MAC,
                              "image": None, "layout": None, "network_config": None,
                              "script": None}]
    assert rep.monitor == "http://10.0.2.2:8181"
    plan = next(e[2]["plan"] for e in machine.log if e[:2] == ("event", "plan"))
    assert plan["hostname"] == "node1"
    assert machine.post_action() == "reboot"


@pytest.mark.parametrize("udev_runs", [False, True])
def test_udev_is_started_once_and_settled_only_while_it_runs(machine: Machine, dhcp: FakeDhcp,
                                                             udev_runs: bool) -> None:
    """In the boot environment udevd starts beside the drivers' loading and
    settles once, after it (a fork each, nothing to wait for before).  A system that runs
    udev already (reinstalling itself) settles between coldplug passes."""
    if udev_runs:
        drivers.UDEV_CONTROL.parent.mkdir(parents=True)
        drivers.UDEV_CONTROL.touch()
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run")
    assert rc == 0, rep.lines
    udev = [a[:2] for a in machine.ran() if a[0] in ("udevadm", "/usr/lib/systemd/systemd-udevd")]
    assert udev == ([["udevadm", "settle"]] if udev_runs else
                    [["/usr/lib/systemd/systemd-udevd", "--daemon"], ["udevadm", "trigger"],
                     ["udevadm", "settle"]])
    if not udev_runs:  # what the install uses udev for, not every device
        trigger = next(a for a in machine.ran() if a[:2] == ["udevadm", "trigger"])
        assert trigger[2:] == ["--action=add"] + [
            f"--subsystem-match={m}"
            for m in ("block", "net", "pci", "scsi", "nvme", "usb", "virtio")]


def test_udev_starts_beside_the_module_loading(machine: Machine, dhcp: FakeDhcp,
                                              fake_commands: FakeCommands,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """udevd and its trigger run while the coldplug is still loading
    drivers (a coldplug that waits for them would time out here if udev
    started only after it), and the settle comes after both."""
    seen_during: list[list[str]] = []
    coldplug = hardware.coldplug

    def slow_coldplug(*a: Any, **k: Any) -> hardware.HardwareReport:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and \
                not any(c[:2] == ["udevadm", "trigger"] for c in fake_commands.calls):
            time.sleep(0.01)
        seen_during.extend(c[:2] for c in fake_commands.calls)
        return coldplug(*a, **k)

    monkeypatch.setattr(hardware, "coldplug", slow_coldplug)
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run")
    assert rc == 0, rep.lines
    assert seen_during == [["/usr/lib/systemd/systemd-udevd", "--daemon"],
                           ["udevadm", "trigger"]]


def test_udevd_that_does_not_start_fails_the_hardware_phase(
        machine: Machine, fake_commands: FakeCommands) -> None:
    """A failure in udev's thread is the phase's failure, not lost in it."""
    fake_commands.add(["/usr/lib/systemd/systemd-udevd"],
                      FakeResult(stderr="Failed to create manager", returncode=1))
    rc, rep = machine.install("IMAGESERVER=10.0.2.2")
    assert rc == 1
    assert rep.lines[-1].startswith(f"{FAILED_MARKER}: [hardware]")
    assert "systemd-udevd" in rep.lines[-1]
    assert rep.phases() == ["hardware"]


def test_plan_only_is_a_dry_run_too(machine: Machine, dhcp: FakeDhcp) -> None:
    machine.cmdline.write_text("IMAGESERVER=10.0.2.2\n")
    rep = Recorder(machine.log)
    assert start.run_install(rep, machine.cmdline, plan_only=True) == 0
    assert rep.phases("done")[-1] == "plan"
    assert not commands_run(machine) & (WRITERS - {"rsync"})


# -- si.break --------------------------------------------------------------------------------

def order(m: Machine) -> list[str]:
    """Phase starts and shells, in the order they happened."""
    out = []
    for e in m.log:
        if e[0] == "shell":
            out.append("shell")
        elif e[:2] == ("event", "phase") and e[2]["status"] == "start":
            out.append(e[2]["phase"])
    return out


@pytest.mark.parametrize(("step", "before"), [
    ("plan", "plan"), ("deploy", "plan"),  # SystemImager's name for it
    ("network-infos", "network"), ("monitor", "monitor"), ("download-scripts", "instructions"),
])
def test_break_runs_the_shell_before_the_phase_and_goes_on(machine: Machine, dhcp: FakeDhcp,
                                                           step: str, before: str) -> None:
    rc, rep = machine.install(f"IMAGESERVER=10.0.2.2 si.dry-run si.break={step}")
    assert rc == 0, rep.lines
    phases = ["hardware", "network", "monitor", "instructions", "plan"]
    at = phases.index(before)
    assert order(machine) == [*phases[:at], "shell", *phases[at:]]
    assert f"breakpoint before {before}: exit the shell to continue" in rep.lines
    (shell,) = [a for a in machine.ran() if a[0] == "setsid"]
    assert shell == ["setsid", "cttyhack", "sh", "-l"]


ALL_PHASES = ["hardware", "network", "monitor", "instructions", "plan", "pre-install",
              "partition", "assemble", "format", "mount", "fetch", "overrides", "fetch-rest",
              "configure", "initrd", "host-keys", "bootloader", "post-install", "finish"]


# Run side by side (Steps.concurrently): their starts come in any order,
# unless a break is set on one of them.  initrd always follows configure.
SIDE_BY_SIDE = {"fetch-rest", "configure", "initrd", "host-keys", "bootloader"}


def settled(seq: list[str]) -> list[str]:
    """`seq` with the side-by-side phases in a fixed order."""
    side = [x for x in seq if x in SIDE_BY_SIDE]
    assert side.index("initrd") > side.index("configure"), seq
    at = seq.index(side[0])
    return [*seq[:at], *sorted(side), *seq[at + len(side):]]


@pytest.fixture
def writes(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The install past its plan with what writes disks faked at its lowest
    level (partitioning, mkfs, mounts, rsync, chroot), and the chrooted
    steps each entering its phase: the flow's own order and breaks run."""
    done: list[str] = []

    def record(name: str, result: Any = None) -> Callable[..., Any]:
        return lambda *a, **k: done.append(name) or result

    for name in ("partition", "assemble", "make_filesystems", "mount_all"):
        monkeypatch.setattr(flow, name, record(name))
    monkeypatch.setattr(flow, "use_swap", lambda fss, stack: flow.SwapOn([]))
    monkeypatch.setattr(flow, "used_bytes", lambda mounts: 0)
    for name in ("pull_except", "pull_only", "pull_sparse"):
        monkeypatch.setattr(flow, name, record(name, flow.FetchResult(0, 0.0)))
    monkeypatch.setattr(flow, "chroot_target", lambda root, efi: contextlib.nullcontext())

    def in_phase(phase: str) -> Callable[..., None]:
        def step(s: session.Session, *a: Any, **k: Any) -> None:
            with s.steps.phase(phase):
                done.append(phase)
        return step

    monkeypatch.setattr(flow, "configure_system", in_phase("configure"))
    monkeypatch.setattr(flow, "initrd", in_phase("initrd"))
    monkeypatch.setattr(flow, "host_keys", in_phase("host-keys"))
    monkeypatch.setattr(flow, "install_bootloader", in_phase("bootloader"))
    machine.commands.add(["wipefs"], "")
    machine.commands.add(["sync"], "")
    return done


def test_an_install_runs_every_phase_in_order(machine: Machine, dhcp: FakeDhcp,
                                              writes: list[str]) -> None:
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.post-action=poweroff")
    assert rc == 0, rep.lines
    assert settled(order(machine)) == settled(ALL_PHASES)
    assert sorted(rep.phases("done")) == sorted(ALL_PHASES)  # each one ended, none failed
    # The disks are written only after the plan, in the plan's order (the
    # default layout has no RAID, LUKS or LVM to assemble).
    assert writes[:4] == ["partition", "make_filesystems", "mount_all", "pull_except"]
    assert rep.lines[-1].startswith(f"{DONE_MARKER} in ")
    assert machine.post_action() == "poweroff"


def test_overrides_go_on_top_least_important_first(machine: Machine, dhcp: FakeDhcp,
                                                    writes: list[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The server lists overrides most important first (cluster.xml: the
    host's, its groups', the global ones); each is its rsync module
    override.NAME, applied last-listed first so that the first one wins."""
    pulled: list[str] = []
    monkeypatch.setattr(flow, "pull", lambda url, root, **k: pulled.append(url))
    machine.answers["overrides"] = ["node07", "compute", "all"]
    rc, rep = machine.install("IMAGESERVER=10.0.2.2")
    assert rc == 0, rep.lines
    assert pulled == [f"rsync://10.0.2.2:873/override.{o}/" for o in ("all", "compute", "node07")]
    assert order(machine).index("overrides") > order(machine).index("fetch")


@pytest.mark.parametrize("bad", [["../images/x"], ["a/b"], ["-rf"], "all", [7]])
def test_override_names_from_the_server_are_checked(machine: Machine, dhcp: FakeDhcp,
                                                    writes: list[str], bad: Any) -> None:
    machine.answers["overrides"] = bad
    rc, rep = machine.install("IMAGESERVER=10.0.2.2")
    assert rc != 0
    assert "partition" not in writes  # refused with the plan, before any disk is written
    assert any("the server's instructions: override" in line for line in rep.lines), rep.lines


@pytest.mark.parametrize(("steps", "before"), [
    ("partition", ["partition"]), ("prepare-disks,download-image", ["partition", "fetch"]),
    ("se-linux", ["configure"]), ("boot-loader", ["bootloader"]),
    ("terminate-transfer", ["finish"]), ("post-install,finished", ["post-install", "finish"]),
])
def test_breaks_after_the_plan_stop_before_their_phase(machine: Machine, dhcp: FakeDhcp,
                                                       writes: list[str], steps: str,
                                                       before: list[str]) -> None:
    rc, rep = machine.install(f"IMAGESERVER=10.0.2.2 si.break={steps}")
    assert rc == 0, rep.lines
    expected = [x for p in ALL_PHASES for x in (["shell", p] if p in before else [p])]
    if SIDE_BY_SIDE & set(before):  # one phase at a time, in the flow's order
        assert order(machine) == expected
    else:
        assert settled(order(machine)) == settled(expected)
    for p in before:
        assert f"breakpoint before {p}: exit the shell to continue" in rep.lines


def test_several_breaks(machine: Machine, dhcp: FakeDhcp) -> None:
    rc, _ = machine.install("IMAGESERVER=10.0.2.2 si.dry-run si.break=hardware,plan")
    assert rc == 0
    assert order(machine) == ["shell", "hardware", "network", "monitor", "instructions", "shell",
                              "plan"]


def test_break_before_local_cfg_is_read(machine: Machine, dhcp: FakeDhcp) -> None:
    """si.break=parse-localcfg: the shell comes before local.cfg is read,
    so what is fixed in it there counts."""
    machine.local_cfg.write_text("IMAGENAME=broken/name\n")

    def fix_local_cfg(argv: list[str]) -> FakeResult:
        machine.log.append(("shell",))
        machine.local_cfg.write_text("IMAGENAME=web\n")
        return FakeResult()

    machine.commands.add(["setsid", "cttyhack", "sh"], fix_local_cfg)
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run si.break=parse-localcfg")
    assert rc == 0, rep.lines
    assert order(machine)[:2] == ["shell", "hardware"]
    assert rep.lines[0] == "breakpoint before parse-localcfg: exit the shell to continue"
    assert machine.asked[0]["image"] == "web"


def test_break_before_local_cfg_asked_by_local_cfg_is_too_late(machine: Machine,
                                                               dhcp: FakeDhcp) -> None:
    machine.local_cfg.write_text("si.break=parse-localcfg\n")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run")
    assert rc == 0
    assert "shell" not in order(machine)
    assert (f"warning: local.cfg at {machine.local_cfg}, line 1: si.break=parse-localcfg "
            "comes too late, local.cfg is read already; set it on the kernel command line"
            ) in rep.lines


def test_break_asked_by_the_server_config(machine: Machine, dhcp: FakeDhcp) -> None:
    """The server's parameters arrive with the instructions: a break on a
    later phase works, one on a phase already run says so."""
    machine.answers["params"] = {"si.break": ["plan", "network"]}
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run")
    assert rc == 0, rep.lines
    assert order(machine) == ["hardware", "network", "monitor", "instructions", "shell", "plan"]
    assert ("warning: server config: si.break=network comes too late, that step has passed"
            in rep.lines)


# -- a static install network ----------------------------------------------------------------

STATIC = ("IMAGESERVER=10.0.2.2 IPADDR=10.0.2.50 NETMASK=255.255.255.0 BROADCAST=10.0.2.255 "
          "GATEWAY=10.0.2.1 GATEWAYDEV=eth0 si.dns-servers=10.0.2.3,9.9.9.9 "
          "DOMAINNAME=lab.example si.dry-run")


def test_static_network(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_dhcp(monkeypatch)
    rc, rep = machine.install(STATIC)
    assert rc == 0, rep.lines
    assert machine.net.up == {"eth0", "lo"}
    assert machine.net.addresses == {"eth0": {"address": "10.0.2.50", "prefixlen": 24,
                                              "broadcast": "10.0.2.255"}}
    assert machine.net.routes == [{"dst": "0.0.0.0/0", "gateway": "10.0.2.1", "oif": "eth0"}]
    assert machine.resolv_conf.read_text() == (
        "search lab.example\nnameserver 10.0.2.3\nnameserver 9.9.9.9\n")
    hello = next(e[2] for e in machine.log if e[:2] == ("event", "hello"))
    assert hello["network"] == {"iface": "eth0", "mac": MAC, "method": "static",
                                "address": "10.0.2.50/24", "gateway": "10.0.2.1",
                                "dns": ["10.0.2.3", "9.9.9.9"], "domain": "lab.example"}
    # The machine's inventory follows in an event of its own, collected
    # beside the next phases, before the install reports done; it names the
    # install NIC.
    assert "inventory" not in hello
    kinds = [e[1] for e in machine.log if e[0] == "event"]
    assert kinds.index("inventory") < kinds.index("done")
    sent = next(e[2] for e in machine.log if e[:2] == ("event", "inventory"))
    assert sent["mac"] == MAC  # who sent it, as the hello said
    inv = sent["inventory"]
    assert inv["install_nic"] == MAC
    assert inv["collector"] == "sysclone-agent"
    assert any(p["kind"] == "network" for p in inv["pci"])
    assert f"eth0 ({MAC}): 10.0.2.50/24 by static, gateway 10.0.2.1" in rep.lines


def test_static_network_reaches_the_installed_systems_config(
        machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the network phase returns is what configure writes (Debian's
    ifupdown here): the same address, router and name servers."""
    refuse_dhcp(monkeypatch)
    monkeypatch.setattr(flow, "_udev_net_names", lambda ifname: {})
    machine.cmdline.write_text(STATIC)
    rep = Recorder(machine.log)
    layers, resolved = session.read_parameters(rep, machine.cmdline, LogTargets())
    s = flow.Session(layers, resolved.params, rep, Steps(rep), machine.cmdline,
                     resolved=resolved)
    net = flow.bring_up_network(s)
    root = machine.tmp / "sysroot"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/ifup").touch()
    (root / "etc/network").mkdir(parents=True)
    (root / "etc/network/interfaces").write_text("source /etc/network/interfaces.d/*\n")
    # No resolvconf in this image: the name servers go to resolv.conf too.
    assert flow._write_network(s, net, root) == ["/etc/network/interfaces.d/eth0",
                                                 "/etc/resolv.conf"]
    assert (root / "etc/network/interfaces.d/eth0").read_text().splitlines() == [
        f"# {MAC}: written by sysclone", "allow-hotplug eth0", "iface eth0 inet static",
        "    address 10.0.2.50/24", "    gateway 10.0.2.1",
        "    dns-nameservers 10.0.2.3 9.9.9.9", "    dns-search lab.example"]
    assert "nameserver 10.0.2.3\nnameserver 9.9.9.9\n" in \
        (root / "etc/resolv.conf").read_text()


def test_static_settings_that_do_not_fit_stop_before_any_phase(machine: Machine) -> None:
    rc, rep = machine.install("IPADDR=10.0.2.50 NETMASK=24 GATEWAY=10.0.3.1 si.dry-run")
    assert rc == 2
    assert rep.lines[-1] == (
        f"{FAILED_MARKER}: bad install parameters: si.gateway: '10.0.3.1' is outside "
        "10.0.2.0/24: the default router must be reachable from si.ip-address 10.0.2.50/24 "
        "(kernel command line (as GATEWAY))")
    assert rep.phases() == [] and machine.ran() == []


def test_gateway_iface_must_be_the_nic_chosen(machine: Machine,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    refuse_dhcp(monkeypatch)
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 IPADDR=10.0.2.50 NETMASK=24 "
                              "GATEWAY=10.0.2.1 GATEWAYDEV=eth1 si.dry-run")
    assert rc == 1
    assert rep.lines[-1] == (
        f"{FAILED_MARKER}: [network] si.gateway-iface=eth1: the install interface is eth0 "
        f"({MAC}), the only one the agent configures (set si.gateway-iface=eth0, or "
        "si.install-iface to pick the NIC)")
    assert machine.net.addresses == {}


# -- parameters from DHCP --------------------------------------------------------------------

@pytest.fixture
def syslog() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        yield s


def test_dhcp_options_become_parameters(machine: Machine, dhcp: FakeDhcp,
                                        syslog: socket.socket) -> None:
    port = syslog.getsockname()[1]
    dhcp.options = {140: "10.0.2.9", 12: "cn042", 15: "hpc.lab.example", 7: "127.0.0.1",
                    141: str(port)}
    dhcp.dns = ("10.0.2.3",)
    machine.during_instructions = lambda: logging.getLogger("agent.server").warning(
        "slow answer from %s", "10.0.2.9")
    rc, rep = machine.install("si.dry-run")
    assert rc == 0, rep.lines
    # Option 140 names the image server; 12 the host name, sent in the request too.
    assert machine.asked == [{"server": "10.0.2.9:8181", "hostname": "cn042", "mac": MAC,
                              "image": None, "layout": None, "network_config": None,
                              "script": None}]
    assert dhcp.asked == [("eth0", None)]
    assert machine.resolv_conf.read_text() == "search hpc.lab.example\nnameserver 10.0.2.3\n"
    # Options 7 and 141: the agent's log goes to that syslog server.
    assert f"log sent to syslog at 127.0.0.1:{port} (UDP)" in rep.lines
    data, _ = syslog.recvfrom(4096)
    assert data.decode() == ("<132>sysclone-agent: WARNING agent.server: slow answer from "
                             "10.0.2.9\x00")


def test_the_command_line_beats_dhcp(machine: Machine, dhcp: FakeDhcp) -> None:
    dhcp.options = {140: "10.0.2.9", 12: "cn042"}
    rc, _ = machine.install("IMAGESERVER=10.0.2.2 HOSTNAME=www1 si.dns-servers=1.1.1.1 "
                            "si.dry-run")
    assert rc == 0
    assert machine.asked[0]["server"] == "10.0.2.2:8181"
    assert machine.asked[0]["hostname"] == "www1"
    assert dhcp.asked == [("eth0", "www1")]
    assert machine.resolv_conf.read_text() == "nameserver 1.1.1.1\n"


def test_local_cfg_beats_dhcp_and_the_server_beats_all(machine: Machine,
                                                       dhcp: FakeDhcp) -> None:
    dhcp.options = {140: "10.0.2.9", 12: "cn042"}
    machine.local_cfg.write_text("HOSTNAME=from-local-cfg\nIMAGENAME=web\n")
    machine.answers["params"] = {"si.post-action": "poweroff", "HOSTNAME": "from-server",
                                 "si.image-server": "10.0.2.77"}
    rc, rep = machine.install("HOSTNAME=www1 si.post-action=shell si.dry-run")
    assert rc == 0, rep.lines
    assert machine.asked[0]["hostname"] == "from-local-cfg"
    assert machine.asked[0]["image"] == "web"
    plan = next(e[2]["plan"] for e in machine.log if e[:2] == ("event", "plan"))
    assert plan["hostname"] == "from-server"
    assert machine.post_action() == "poweroff"
    # Too late to change the server the install already talks to: said, not ignored.
    assert ("warning: server config: si.image-server is used before the instructions are "
            "fetched: it has no effect on this install") in rep.lines


def test_a_dhcp_option_asking_for_what_sysclone_lacks_stops_the_install(
        machine: Machine, dhcp: FakeDhcp) -> None:
    dhcp.options = {140: "10.0.2.9", 144: "y"}  # TMPFS_STAGING
    rc, rep = machine.install("si.dry-run")
    assert rc == 1
    assert rep.lines[-1].startswith(f"{FAILED_MARKER}: [network] si.tmpfs-staging: 'yes' is "
                                    "not supported by sysclone yet")
    assert "monitor" not in rep.phases()


# -- refused before any phase ----------------------------------------------------------------

@pytest.mark.parametrize(("cmdline", "message"), [
    ("si.ssh-user=root", "si.ssh-user: 'root' is not supported by sysclone yet"),
    ("sysclone.bench=rsync", "sysclone.bench: unknown parameter (kernel command line)"),
    ("si.hostnme=www1", "si.hostnme: unknown install parameter (kernel command line)"),
    ("si.dl-protocol=torrent", "si.dl-protocol: 'torrent' is not implemented by sysclone yet"),
    ("si.ip-address=fe80::1", "si.ip-address: 'fe80::1' is an IPv6 address; the install "
                              "network is IPv4 only"),
    ("si.monitor-port=9000", "si.monitor-port: 9000 is set without si.monitor-server (kernel "
                             "command line): the agent reports to the image server"),
])
def test_refused_before_any_phase(machine: Machine, cmdline: str, message: str) -> None:
    rc, rep = machine.install(f"IMAGESERVER=10.0.2.2 {cmdline}")
    assert rc == 2
    assert rep.lines[-1].startswith(f"{FAILED_MARKER}: bad install parameters: {message}")
    assert rep.phases() == [] and machine.ran() == []
    assert machine.post_action() == "shell"
    assert READY_MARKER not in rep.lines  # never ready with parameters it refuses


def test_ready_once_imported_with_its_parameters_before_the_first_phase(
        machine: Machine, dhcp: FakeDhcp) -> None:
    """The ready marker (what the boot benchmark times) means the agent can
    work: imported, parameters read; the install's clock started earlier."""
    machine.cmdline.write_text("IMAGESERVER=10.0.2.2 si.dry-run\n")
    rep = Recorder(machine.log)
    assert start.run_install(rep, machine.cmdline, started=time.monotonic() - 100) == 0
    said = [e[1] for e in machine.log if e[0] == "say"]
    assert said[:2] == [READY_MARKER, "[hardware] load drivers for the devices found"]
    done = next(e[2] for e in machine.log if e[:2] == ("event", "done"))
    assert done["seconds"] >= 100  # counted from the agent's start, imports included


def test_refused_in_local_cfg(machine: Machine) -> None:
    machine.local_cfg.write_text("MONITOR_CONSOLE=yes\n")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2")
    assert rc == 2
    assert rep.lines[-1].startswith(
        f"{FAILED_MARKER}: bad install parameters: MONITOR_CONSOLE (si.monitor-console): "
        "'yes' is not supported by sysclone yet")
    assert rep.phases() == []


def test_debug_and_term_are_followed(machine: Machine, dhcp: FakeDhcp) -> None:
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.term=vt220 si.dry-run si.break=plan")
    assert rc == 0
    assert "TERM=vt220" in rep.lines
    # The break shell gets it through sysclone.run's environment.
    assert os.environ["TERM"] == "vt220"


@pytest.mark.parametrize("words, port", [("", 8873), ("si.rsync-port=873", 873),
                                         ("si.rsync-port=10873", 10873)])
def test_an_rsync_port_given_wins_over_the_servers_even_873(machine: Machine, dhcp: FakeDhcp,
                                                            words: str, port: int) -> None:
    machine.answers["image"]["rsync_port"] = 8873
    rc, rep = machine.install(f"IMAGESERVER=10.0.2.2 si.dry-run {words}")
    assert rc == 0, rep.lines
    assert f"install image deb12 from rsync://10.0.2.2:{port}/deb12/ as node-from-server" \
        in rep.lines


def test_a_dry_run_says_which_breaks_it_never_reaches(machine: Machine,
                                                      dhcp: FakeDhcp) -> None:
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run si.break=plan,fetch,boot-loader")
    assert rc == 0, rep.lines
    assert ("warning: si.break=fetch,boot-loader: a dry run ends after the plan and never "
            "reaches it") in rep.lines
    assert [e for e in machine.log if e == ("shell",)] == [("shell",)]  # plan's, before it


def test_a_luks_key_without_luks_is_said_unused(machine: Machine, dhcp: FakeDhcp) -> None:
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run si.luks-key=s3cret-words")
    assert rc == 0, rep.lines
    assert ("warning: si.luks-key is set, but layout built-in default (bios, gpt) has no LUKS "
            "volume: the key is not used") in rep.lines


def test_the_files_configure_wrote_are_reported_as_absolute_paths() -> None:
    # The initrd tool's configuration comes back relative to the root; an
    # update keeps only absolute paths out of its way.
    assert flow.written_paths(["/etc/fstab", "etc/dracut.conf.d/50-sysclone.conf",
                               "/etc/fstab"]) == \
        ["/etc/dracut.conf.d/50-sysclone.conf", "/etc/fstab"]


def test_a_hardware_failure_is_reported_by_the_flow(machine: Machine,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The hardware phase runs before agent.flow is imported
    (agent.session); its failure still ends the install the flow's way."""
    def broken() -> None:
        raise SyscloneError("libkmod: cannot read modules.dep")

    monkeypatch.setattr(drivers, "load_drivers", broken)
    rc, rep = machine.install("IMAGESERVER=10.0.2.2")
    assert rc == 1
    assert rep.lines[-1] == f"{FAILED_MARKER}: [hardware] libkmod: cannot read modules.dep"
    assert rep.phases() == ["hardware"]
    assert machine.post_action() == "shell"
