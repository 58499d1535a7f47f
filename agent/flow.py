"""The install, as a flat sequence of named phases.

    hardware -> network -> monitor -> instructions -> plan
      -> partition -> format -> mount -> fetch -> overrides
      -> configure -> initrd -> bootloader -> finish

Nothing is written to a disk before `plan` has validated the whole plan
against the server's instructions and this machine's disks.  Each step is a
function below; `install()` reads top to bottom.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import disks as disklib
from agent import hardware, network
from agent.chroot import chroot_target
from agent.configure import bootloader as bootlib
from agent.configure import initrd as initrdlib
from agent.configure import netconfig as netlib
from agent.configure import system
from agent.configure.footprint import best
from agent.configure.fstab import write_fstab
from agent.fetch import Progress, pull, rsync_url
from agent.filesystems import make_filesystems, mount_all
from agent.kmod import Kmod
from agent.params import (
    InstallParams,
    Layer,
    dhcp_layer,
    local_cfg_skipped,
    read_cmdline,
    read_local_cfg,
    resolve,
    server_layer,
)
from agent.partition import partition
from agent.phases import InstallFailed, Steps, break_names, canonical
from agent.plan import InstallPlan, firmware, make_plan
from agent.report import DONE_MARKER, FAILED_MARKER, Reporter
from agent.server import ImageServer
from sysclone.errors import ConfigError, SyscloneError
from sysclone.run import interactive, run

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/sysclone")
TARGET = Path("/sysroot")
LOCAL_CFG = Path("/local.cfg")
DHCP_TIMEOUT = 60.0


@dataclass
class Session:
    """What the phases share: parameters (re-resolved as layers arrive),
    the reporter and the phase runner.  Results pass as return values."""

    layers: list[Layer]
    params: InstallParams
    reporter: Reporter
    steps: Steps
    cmdline: Path = Path("/proc/cmdline")
    written: list[str] = field(default_factory=list)  # files configure wrote

    def add_layer(self, layer: Layer) -> None:
        self.layers.append(layer)
        resolved = resolve(self.layers, break_steps=break_names())
        self.params = resolved.params
        for w in resolved.warnings:
            log.warning("%s", w)


# ---------------------------------------------------------------- phases ---

def detect_hardware(s: Session) -> hardware.HardwareReport:
    with s.steps.phase("hardware"):
        kmod = Kmod()
        try:
            report = hardware.coldplug(
                kmod.lookup, kmod.load,
                settle=lambda: run(["udevadm", "settle", "--timeout=10"], check=False))
            # Filesystems the install may create are loaded up front.
            hardware.load_named(kmod.load, ("ext4", "xfs", "vfat", "nls_cp437",
                                            "nls_iso8859_1", "af_packet"), report)
        finally:
            kmod.close()
        _start_udev()
        mods = report.modules()
        s.reporter.say(f"{len(report.pci)} PCI devices, loaded: {', '.join(mods) or 'none'}")
        return report


def _start_udev() -> None:
    """udev maintains /dev/disk/by-* and device properties (pyudev, blkid)."""
    if Path("/run/udev/control").exists():
        return
    # --daemon forks; the parent returns once udevd listens.
    run(["/usr/lib/systemd/systemd-udevd", "--daemon", "--resolve-names=never"],
        capture=False)
    run(["udevadm", "trigger", "--action=add"], check=False)
    run(["udevadm", "settle", "--timeout=10"], check=False)


def bring_up_network(s: Session) -> network.NetConfig:
    with s.steps.phase("network"):
        p = s.params
        bootif = _bootif(s.cmdline)
        nics = network.list_nics()
        nic = network.choose_nic(nics, p.install_iface, bootif, network.has_carrier)
        network.link_up(nic)
        if p.ether_sleep:
            s.reporter.say(f"waiting {p.ether_sleep}s for the switch (ETHER_SLEEP)")
            time.sleep(p.ether_sleep)
        if p.static_ip:
            cfg = network.static_config(nic, str(p.ip_address), str(p.netmask or 24),
                                        str(p.gateway) if p.gateway else None)
        else:
            cfg = network.dhcp(nic, DHCP_TIMEOUT, hostname=p.hostname)
            s.add_layer(dhcp_layer(cfg.options))
        network.write_resolv_conf(cfg)
        s.reporter.client.update({"mac": nic.mac, "ip": cfg.address})
        s.reporter.say(f"{nic.name} ({nic.mac}): {cfg.address}/{cfg.prefixlen} by "
                       f"{cfg.method}, gateway {cfg.gateway or 'none'}")
        return cfg


def _bootif(cmdline: Path) -> str | None:
    """pxelinux's IPAPPEND 2 adds BOOTIF=01-<mac>: the NIC that PXE booted."""
    for word in cmdline.read_text().split():
        if word.startswith("BOOTIF="):
            return word.split("=", 1)[1]
    return None


def find_server(s: Session, net: network.NetConfig) -> ImageServer:
    p = s.params
    host = p.image_server.host if p.image_server else (net.next_server or net.server_id)
    if not host:
        raise ConfigError("no image server: pass IMAGESERVER= (si.image-server=) or have DHCP "
                          "name one (option 140 or next-server)")
    return ImageServer(host, p.api_port)


def connect_monitor(s: Session, hw: hardware.HardwareReport,
                    net: network.NetConfig) -> ImageServer:
    with s.steps.phase("monitor"):
        server = find_server(s, net)
        host = s.params.monitor_server
        url = f"http://{host}:{s.params.monitor_port}" if host else server.url
        if s.params.hostname:
            s.reporter.client["hostname"] = s.params.hostname
        s.reporter.connect(url)
        s.reporter.event("hello", message=f"booted, install network {net.address}",
                         hardware=hw.to_dict(), network=net.to_dict())
        return server


def fetch_instructions(s: Session, server: ImageServer, net: network.NetConfig
                       ) -> dict[str, Any]:
    with s.steps.phase("instructions"):
        p = s.params
        instr = server.instructions(hostname=p.hostname, mac=net.nic.mac, image=p.image_name,
                                    layout=p.disks_layout)
        if instr.get("params"):
            s.add_layer(server_layer(instr["params"]))
        s.reporter.say(f"image {instr['image']['name']}, layout "
                       f"{(instr.get('layout') or {}).get('name', 'built-in default')}")
        return instr


def validate_plan(s: Session, instr: dict[str, Any], server: ImageServer,
                  net: network.NetConfig) -> InstallPlan:
    with s.steps.phase("plan"):
        hostname = s.params.hostname or instr.get("hostname") or \
            "sysclone-" + net.nic.mac.replace(":", "")[-6:]
        s.reporter.client["hostname"] = hostname
        all_disks = disklib.list_disks()
        targets = disklib.install_targets(all_disks, s.params.disks)
        plan = make_plan(instructions=instr, server=server.host, hostname=hostname,
                         targets=targets, fw=firmware(), ram_bytes=_ram_bytes())
        if s.params.rsync_port != 873:
            # Asked for explicitly on the command line: it wins over the server's word.
            plan = replace(plan, image=replace(plan.image, rsync_port=s.params.rsync_port))
        _check_module(plan)
        for line in plan.describe().splitlines():
            s.reporter.say(line)
        s.reporter.event("plan", plan=plan.to_dict())
        return plan


def _check_module(plan: InstallPlan) -> None:
    """The image must exist on the rsync daemon too, before any disk is touched."""
    res = run(["rsync", "--list-only", "--no-motd", plan.image.url.rstrip("/") + "/etc/hostname"],
              check=False, timeout=60)
    if res.returncode != 0:
        why = (res.stderr or res.stdout).strip().splitlines()
        raise ConfigError(f"image {plan.image.name} cannot be read from {plan.image.url}: "
                          + (why[-1] if why else f"rsync exit code {res.returncode}"))


def _ram_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def partition_disks(s: Session, plan: InstallPlan) -> None:
    with s.steps.phase("partition"):
        partition(plan.disks, plan.filesystems)


def format_filesystems(s: Session, plan: InstallPlan) -> None:
    with s.steps.phase("format"):
        make_filesystems(plan.filesystems)


def mount_target(s: Session, plan: InstallPlan, stack: ExitStack) -> Path:
    with s.steps.phase("mount"):
        TARGET.mkdir(exist_ok=True)
        mount_all(plan.mounts, TARGET, stack)
        return TARGET


def pull_image(s: Session, plan: InstallPlan, root: Path) -> None:
    with s.steps.phase("fetch"):
        total = plan.image.transfer_bytes or plan.image.bytes

        def progress(pr: Progress) -> None:
            pct = min(100, pr.bytes * 100 // total) if total else pr.percent
            s.reporter.event("progress", phase="fetch", bytes=pr.bytes, rate=pr.rate,
                             percent=pct)

        res = pull(plan.image.url, root, on_progress=progress)
        s.reporter.say(f"{res.bytes / 2**20:,.0f} MiB in {res.seconds:.1f}s")


def apply_overrides(s: Session, plan: InstallPlan, root: Path) -> None:
    with s.steps.phase("overrides"):
        if not plan.overrides:
            s.reporter.say("no overrides for this client")
            return
        # Applied least important first, so the most important one wins.
        for name in reversed(plan.overrides):
            pull(rsync_url(plan.image.server, plan.image.rsync_port, name), root)


def configure_system(s: Session, plan: InstallPlan, net: network.NetConfig,
                     root: Path) -> None:
    with s.steps.phase("configure"):
        s.written += write_fstab(plan.filesystems, root)
        s.written += system.set_hostname(root, plan.hostname, s.params.domainname or net.domain)
        s.written += system.reset_machine_id(root)
        s.written += _write_network(s, net, root)
        s.written += system.regenerate_ssh_host_keys(root)


def _write_network(s: Session, net: network.NetConfig, root: Path) -> list[str]:
    style = best(netlib.STYLES, root)
    if style is None:
        s.reporter.say("warning: no known network configuration style in the image; "
                       "network left unconfigured")
        return []
    nic = netlib.NicIdentity(net.nic.name, net.nic.mac, _udev_net_names(net.nic.name))
    if net.method == "static":
        addr = netlib.Addressing("static", f"{net.address}/{net.prefixlen}", net.gateway,
                                 net.dns, net.domain)
    else:
        addr = netlib.Addressing("dhcp")
    written = style.write(root, nic, addr)
    s.reporter.say(f"network: {style.name}, {addr.method} on {nic.mac}: {', '.join(written)}")
    return written


def _udev_net_names(ifname: str) -> dict[str, str]:
    """The names udev gives this NIC (ID_NET_NAME_*), from udev's database;
    asked of udev's net_id builtin directly when the database lacks them."""
    import pyudev

    try:
        dev = pyudev.Devices.from_name(pyudev.Context(), "net", ifname)
        names = {k: v for k, v in dev.properties.items() if k.startswith("ID_NET_NAME_")}
    except (pyudev.DeviceNotFoundError, OSError, ImportError) as e:
        log.info("udev has no record of %s: %s", ifname, e)
        names = {}
    if names:
        return names
    res = run(["udevadm", "test-builtin", "net_id", f"/sys/class/net/{ifname}"], check=False)
    return netlib.parse_net_id(res.stdout)


def regenerate_initrd(s: Session, root: Path) -> None:
    with s.steps.phase("initrd"):
        tool = best(initrdlib.TOOLS, root)
        kvers = initrdlib.kernel_versions(root)
        if tool is None or not kvers:
            s.steps.reporter.say("no initrd tool or no kernel in the image: nothing to do")
            return
        s.reporter.say(f"{tool.name} for {', '.join(kvers)}")
        tool.regenerate(root, kvers)


def install_bootloader(s: Session, plan: InstallPlan, root: Path) -> None:
    with s.steps.phase("bootloader"):
        bl = best(bootlib.BOOTLOADERS, root)
        if bl is None:
            raise SyscloneError("the image has no bootloader sysclone can install",
                                hint="install GRUB 2 (grub-pc / grub-efi) in the golden image")
        esp = next((f.mountpoint for f in plan.filesystems
                    if f.mountpoint in ("/boot/efi", "/efi")), "/boot/efi")
        bl.install(root, bootlib.BootTarget(plan.firmware, plan.boot_disks, esp))
        s.reporter.say(f"{bl.name} for {plan.firmware} on {', '.join(plan.boot_disks)}")


# ------------------------------------------------------------- the flow ---

def install(s: Session, plan_only: bool) -> InstallPlan | None:
    hw = detect_hardware(s)
    net = bring_up_network(s)
    server = connect_monitor(s, hw, net)
    instr = fetch_instructions(s, server, net)
    plan = validate_plan(s, instr, server, net)
    if plan_only or s.params.dry_run:
        s.reporter.say("dry run: nothing was written")
        return plan
    partition_disks(s, plan)
    format_filesystems(s, plan)
    with ExitStack() as mounts:
        root = mount_target(s, plan, mounts)
        pull_image(s, plan, root)
        apply_overrides(s, plan, root)
        configure_system(s, plan, net, root)
        with chroot_target(root, efi=plan.firmware == "uefi"):
            # Independent of each other, and both mostly shell scripts that
            # take minutes on a slow machine: run them side by side.
            s.steps.concurrently({
                "initrd": lambda: regenerate_initrd(s, root),
                "bootloader": lambda: install_bootloader(s, plan, root),
            })
        with s.steps.phase("finish"):
            mounts.close()  # unmount everything, innermost first
            run(["sync"])
    return plan


def _shell(phase: str) -> None:
    """si.break: a shell on the console; the install goes on when it exits."""
    interactive(["setsid", "cttyhack", "sh", "-l"], env={"PS1": f"(break before {phase}) # "})


def _write_post_action(action: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "post-action").write_text(action + "\n")


def run_install(reporter: Reporter, cmdline: Path, plan_only: bool = False) -> int:
    """Run the whole install; the exit status and post-action say how it went."""
    _write_post_action("shell")
    started = time.monotonic()
    try:
        layers = [read_cmdline(cmdline)]
        if LOCAL_CFG.is_file() and not local_cfg_skipped(layers):
            layers.append(read_local_cfg(LOCAL_CFG))
        resolved = resolve(layers, break_steps=break_names())
        resolved.require_supported_protocol()
    except SyscloneError as e:
        reporter.say(f"{FAILED_MARKER}: bad install parameters: {e}")
        return 2
    for w in resolved.warnings:
        reporter.say(f"warning: {w}")
    params = resolved.params
    steps = Steps(reporter, breaks=frozenset(canonical(b) for b in params.breaks),
                  shell=_shell)
    s = Session(layers, params, reporter, steps, cmdline)
    if params.hostname:
        reporter.client["hostname"] = params.hostname
    try:
        from agent import benchmode

        if benchmode.wanted(cmdline):
            _write_post_action("poweroff")
            return benchmode.rsync_baseline(s, reporter)
        install(s, plan_only)
    except InstallFailed as e:
        phase = e.fields.get("phase", "?")
        reporter.say(f"{FAILED_MARKER}: [{phase}] {e}")
        reporter.flush()
        return 1
    except SyscloneError as e:  # outside any phase
        reporter.event("failed", phase=None, message=e.message, detail=e.to_dict())
        reporter.say(f"{FAILED_MARKER}: {e}")
        reporter.flush()
        return 1
    # Wall clock: initrd and bootloader overlap, their times do not add up.
    total = time.monotonic() - started
    reporter.event("done", message=f"installed in {total:.0f}s", seconds=round(total, 2),
                   timings={n: round(t, 2) for n, t in steps.timings},
                   written=s.written)
    reporter.flush()
    reporter.say(f"{DONE_MARKER} in {total:.1f}s: "
                 + ", ".join(f"{n} {t:.1f}s" for n, t in steps.timings))
    _write_post_action(str(s.params.post_action))
    return 0
