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
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent import disks as disklib
from agent import hardware, network
from agent.chroot import chroot_target
from agent.configure import bootloader as bootlib
from agent.configure import initrd as initrdlib
from agent.configure import initrdpolicy as policy
from agent.configure import netconfig as netlib
from agent.configure import selinux, system
from agent.configure.footprint import best
from agent.configure.fstab import write_fstab
from agent.fetch import Progress, pull, rsync_url, used_bytes
from agent.filesystems import make_filesystems, mount_all, use_swap
from agent.kmod import Kmod
from agent.logsetup import LogTargets
from agent.params import (
    InstallParams,
    Layer,
    Resolved,
    Source,
    dhcp_layer,
    local_cfg_skipped,
    param,
    read_cmdline,
    read_local_cfg,
    resolve,
    server_layer,
)
from agent.params.static import static_network
from agent.partition import partition
from agent.phases import PARAMS_STEP, InstallFailed, Steps, break_names, canonical
from agent.plan import InstallPlan, firmware, make_plan
from agent.report import DONE_MARKER, FAILED_MARKER, Reporter
from agent.server import ImageServer
from sysclone.errors import ConfigError, SyscloneError
from sysclone.run import interactive, run

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/sysclone")
TARGET = Path("/sysroot")
LOCAL_CFG = Path("/local.cfg")
MEMINFO = Path("/proc/meminfo")
DHCP_TIMEOUT = 60.0


# Install parameters the agent has used by the time the server's
# instructions arrive: a server config that changes them comes too late for
# this install, and says so rather than being silently ignored.
USED_BEFORE_INSTRUCTIONS = (
    "si.install-iface", "si.ip-address", "si.netmask", "si.network-address", "si.broadcast",
    "si.gateway", "si.gateway-iface", "si.dns-servers", "si.ether-sleep", "si.image-server",
    "si.server-port", "si.monitor-server", "si.monitor-port",
)


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
    resolved: Resolved | None = None
    logs: LogTargets = field(default_factory=LogTargets)

    def add_layer(self, layer: Layer) -> None:
        """A new source of parameters (DHCP, the server's instructions):
        re-resolve, refuse what sysclone cannot do, act on what changed and
        say what comes too late to matter."""
        self.layers.append(layer)
        resolved = resolve(self.layers, break_steps=break_names())
        resolved.require_supported()
        before = self.resolved.warnings if self.resolved else ()
        for w in resolved.warnings:
            if w not in before:
                self.reporter.say(f"warning: {w}")
        if layer.source is Source.SERVER:
            for name in USED_BEFORE_INSTRUCTIONS:
                field_ = param(name).field
                if getattr(resolved.params, field_) != getattr(self.params, field_):
                    self.reporter.say(f"warning: {layer.name}: {name} is used before the "
                                      "instructions are fetched: it has no effect on this "
                                      "install")
        old_breaks = set(self.params.breaks)
        self.resolved, self.params = resolved, resolved.params
        for b in self.params.breaks:
            if b not in old_breaks and self.steps.passed(b):
                self.reporter.say(f"warning: {layer.name}: si.break={b} comes too late, "
                                  "that step has passed")
        self.steps.breaks = frozenset(canonical(b) for b in self.params.breaks)
        self.follow_params()

    def follow_params(self) -> None:
        """Logging, syslog and TERM as the parameters now say."""
        p = self.params
        for change in self.logs.apply(debug=p.debug, log_server=p.log_server,
                                      log_server_port=p.log_server_port, term=p.term):
            self.reporter.say(change)


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
        static = static_network(p)  # checked with its origins before any phase
        if static and static.gateway_iface and \
                static.gateway_iface.lower() not in (nic.name.lower(), nic.mac):
            raise network.NetworkError(
                f"si.gateway-iface={static.gateway_iface}: the install interface is "
                f"{nic.name} ({nic.mac}), the only one the agent configures",
                hint=f"set si.gateway-iface={nic.name}, or si.install-iface to pick the NIC")
        network.link_up(nic)
        if p.ether_sleep:
            s.reporter.say(f"waiting {p.ether_sleep}s for the switch (ETHER_SLEEP)")
            time.sleep(p.ether_sleep)
        dns = tuple(str(d) for d in p.dns_servers)
        if static:
            cfg = network.static_config(nic, static.address, str(static.prefixlen),
                                        str(static.gateway) if static.gateway else None, dns,
                                        broadcast=static.broadcast, domain=p.domainname)
        else:
            cfg = network.dhcp(nic, DHCP_TIMEOUT, hostname=p.hostname)
            s.add_layer(dhcp_layer(cfg.options))
            # Given explicitly, they win over the lease's (the command line
            # beats DHCP for every parameter).
            cfg = replace(cfg, dns=dns or cfg.dns, domain=s.params.domainname or cfg.domain)
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
        swaps = use_swap(plan.filesystems, stack)
        if swaps:
            s.reporter.say(f"swap on {', '.join(swaps)} until the install ends")
        return TARGET


def pull_image(s: Session, plan: InstallPlan, root: Path) -> None:
    with s.steps.phase("fetch"):
        # Progress is the space used on the new filesystems, against what
        # the image occupies on the server's.
        total = plan.image.bytes or plan.image.transfer_bytes
        mounts = [root / (f.mountpoint or "/").lstrip("/") for f in plan.mounts]

        def progress(pr: Progress) -> None:
            pct = min(100, pr.bytes * 100 // total) if total else None
            s.reporter.event("progress", phase="fetch", bytes=pr.bytes, rate=pr.rate,
                             percent=pct)

        res = pull(plan.image.url, root, on_progress=progress,
                   measure=lambda: used_bytes(mounts))
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
        s.written += selinux.relabel_on_first_boot(root, s.params.selinux_relabel)
        prepare_initrd(s, plan, root)


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


def prepare_initrd(s: Session, plan: InstallPlan, root: Path) -> None:
    """Point the image's initrd tool at the new disks (its resume device)."""
    tool = best(initrdlib.TOOLS, root)
    if tool is not None:
        swap = next((f.uuid for f in plan.filesystems if f.fs == "swap"), None)
        s.written += tool.configure(root, swap)


def initrd(s: Session, plan: InstallPlan, server: ImageServer, root: Path) -> None:
    with s.steps.phase("initrd"):
        tool = best(initrdlib.TOOLS, root)
        kvers = initrdlib.kernel_versions(root)
        if tool is None or not kvers:
            s.reporter.say("no initrd tool or no kernel in the image: nothing to do")
            return
        needs = _storage_needs(plan)
        facts = [_initrd_facts(tool, root, k) for k in kvers] \
            if s.params.initrd == "auto" else []
        decision = policy.decide(str(s.params.initrd), tool.name, facts, needs)
        where = "server" if decision.regenerate and tool.builds_generic(root) else "client"
        s.reporter.say(f"{tool.name} for {', '.join(kvers)}: {decision.describe()}")
        s.reporter.event("initrd", tool=tool.name, kernels=kvers, needs=needs.to_dict(),
                         where=where if decision.regenerate else None, **decision.to_dict())
        if not decision.regenerate:
            return
        if where == "server":
            try:
                for k in kvers:
                    _initrd_from_server(s, plan, server, tool, root, k)
                return
            except SyscloneError as e:
                s.reporter.say(f"the image server could not build it ({e.message}): "
                               "regenerating here instead")
        tool.regenerate(root, kvers)


def _initrd_from_server(s: Session, plan: InstallPlan, server: ImageServer,
                        tool: initrdlib.InitrdTool, root: Path, kver: str) -> None:
    """A generic initrd does not depend on this machine: the image server
    builds it with the image's own tool at native speed (imageserver.
    initrdbuild), from the image plus the files this install wrote."""
    files = {}
    for rel in sorted(set(s.written)):
        p = root / rel
        if rel.startswith("etc/") and p.is_file() and not p.is_symlink():
            files[rel] = p.read_text(errors="replace")
    t0 = time.monotonic()
    data = server.post("/v1/initrd", {"module": plan.image.module, "kver": kver,
                                      "tool": tool.name, "files": files,
                                      "overrides": list(plan.overrides)})
    written = initrdlib.unpack_result(data, root, kver)
    s.written += written
    s.reporter.say(f"initrd for {kver} built by the image server in "
                   f"{time.monotonic() - t0:.1f}s: {', '.join(written)}")


def _storage_needs(plan: InstallPlan) -> policy.StorageNeeds:
    root_fs = next((f.fs for f in plan.filesystems if f.mountpoint == "/"), "ext4")
    drivers: list[str] = []
    for d in plan.disks:
        drivers += [m for m in hardware.block_driver_modules(d.disk.name) if m not in drivers]
    idents = {f.uuid for f in plan.filesystems} | {f.device for f in plan.filesystems}
    return policy.storage_needs(root_fs, drivers, set(), set(), idents)


def _initrd_facts(tool: initrdlib.InitrdTool, root: Path, kver: str) -> policy.InitrdFacts:
    path = tool.initrd_path(root, kver)
    listing, problem = None, None
    if path is not None:
        try:
            listing = initrdlib.list_initrd(root, path)
        except SyscloneError as e:
            problem = f"{path.name} cannot be read: {e.message}"
    return policy.InitrdFacts(kver, path, listing, policy.builtin_modules(root, kver), problem)


def install_bootloader(s: Session, plan: InstallPlan, root: Path,
                       initrd_ready: Callable[[], object] = lambda: None) -> None:
    with s.steps.phase("bootloader"):
        bl = best(bootlib.BOOTLOADERS, root)
        if bl is None:
            raise SyscloneError("the image has no bootloader sysclone can install",
                                hint="install GRUB 2 (grub-pc / grub-efi) in the golden image")
        esp = next((f.mountpoint for f in plan.filesystems
                    if f.mountpoint in ("/boot/efi", "/efi")), "/boot/efi")
        bl.install(root, bootlib.BootTarget(plan.firmware, plan.boot_disks, esp), initrd_ready)
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
            # Mostly shell scripts that take minutes on a slow machine: run
            # side by side.  Only the bootloader's configuration, which
            # lists the initrds, waits for the initrd phase.
            initrd_done = threading.Event()

            def initrd_phase() -> None:
                try:
                    initrd(s, plan, server, root)
                finally:
                    initrd_done.set()

            s.steps.concurrently({
                "initrd": initrd_phase,
                "bootloader": lambda: install_bootloader(s, plan, root, initrd_done.wait),
            })
        with s.steps.phase("finish"):
            mounts.close()  # unmount everything, innermost first
            run(["sync"])
    return plan


def _shell(phase: str) -> None:
    """si.break: a shell on the console; the install goes on when it exits.
    TERM (si.term) comes through sysclone.run's environment."""
    interactive(["setsid", "cttyhack", "sh", "-l"], env={"PS1": f"(break before {phase}) # "})


def _write_post_action(action: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "post-action").write_text(action + "\n")


def run_install(reporter: Reporter, cmdline: Path, plan_only: bool = False) -> int:
    """Run the whole install; the exit status and post-action say how it went."""
    _write_post_action("shell")
    started = time.monotonic()
    logs = LogTargets()
    try:
        layers, resolved = _read_parameters(reporter, cmdline, logs)
    except SyscloneError as e:
        reporter.say(f"{FAILED_MARKER}: bad install parameters: {e}")
        logs.close()
        return 2
    params = resolved.params
    steps = Steps(reporter, breaks=frozenset(canonical(b) for b in params.breaks),
                  shell=_shell, meminfo=MEMINFO)
    s = Session(layers, params, reporter, steps, cmdline, resolved=resolved, logs=logs)
    if params.hostname:
        reporter.client["hostname"] = params.hostname
    try:
        return _run(s, plan_only, started)
    finally:
        logs.close()


def _read_parameters(reporter: Reporter, cmdline: Path, logs: LogTargets
                     ) -> tuple[list[Layer], Resolved]:
    """The kernel command line, then local.cfg, resolved and checked: every
    parameter is acted on or refused here, before any phase runs.
    si.break=parse-localcfg stops in between, as in SystemImager."""
    layers = [read_cmdline(cmdline)]
    early = resolve(layers, break_steps=break_names())
    if PARAMS_STEP in early.params.breaks:
        logs.apply(debug=early.params.debug, log_server=None, log_server_port=0,
                   term=early.params.term)
        reporter.say(f"breakpoint before {PARAMS_STEP}: exit the shell to continue")
        _shell(PARAMS_STEP)
    if LOCAL_CFG.is_file() and not local_cfg_skipped(layers):
        layers.append(read_local_cfg(LOCAL_CFG))
    resolved = resolve(layers, break_steps=break_names())
    resolved.require_supported()
    static_network(resolved.params, resolved.origin)
    for w in resolved.warnings:
        reporter.say(f"warning: {w}")
    for s in resolved.effective.get("si.break", ()):
        if s.value == PARAMS_STEP and s.source is not Source.CMDLINE:
            reporter.say(f"warning: {s.where}: si.break={PARAMS_STEP} comes too late, "
                         "local.cfg is read already; set it on the kernel command line")
    p = resolved.params
    for change in logs.apply(debug=p.debug, log_server=p.log_server,
                             log_server_port=p.log_server_port, term=p.term):
        reporter.say(change)
    return layers, resolved


def _run(s: Session, plan_only: bool, started: float) -> int:
    reporter, steps = s.reporter, s.steps
    try:
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
    if (plan_only or s.params.dry_run) and s.resolved is not None:
        for line in s.resolved.explain(show_defaults=False).splitlines():
            reporter.say(line)
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
