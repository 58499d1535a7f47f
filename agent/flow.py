"""The install, as a flat sequence of named phases.

    hardware -> network -> monitor -> instructions -> plan -> pre-install
      -> partition -> assemble -> format -> mount -> fetch -> overrides
      -> (configure -> initrd) | host-keys | bootloader -> post-install
      -> finish
    fetch-rest: beside fetch from its start (agent.restpull), else
      beside configure, host-keys and bootloader (before the overrides
      when there are some)

Nothing is written to a disk before `plan` has validated the whole plan
against the server's instructions and this machine's disks.  Each step is a
function below; `install()` reads top to bottom.  The parameters and the
first phase, hardware, come before it (agent.start): they run while this
module and the ~80 it imports are still being imported.
"""

from __future__ import annotations

import functools
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from agent import disks as disklib
from agent import hardware, initramfs, network, session
from agent.blockdev.assemble import assemble
from agent.chroot import chroot_target
from agent.configure import bootloader as bootlib
from agent.configure import grubprobe, selinux, system
from agent.configure import initrd as initrdlib
from agent.configure import initrdpolicy as policy
from agent.configure import netconfig as netlib
from agent.configure import scripts as scriptlib
from agent.configure.crypttab import write_crypttab
from agent.configure.footprint import best
from agent.configure.fstab import write_fstab
from agent.configure.mdadmconf import write_mdadm_conf
from agent.fetch import (
    FetchError,
    FetchResult,
    Progress,
    image_paths,
    pull,
    pull_except,
    pull_only,
    pull_sparse,
    rsync_url,
    used_bytes,
)
from agent.filesystems import SwapOn, make_filesystems, mount_all, mount_fstype, use_swap
from agent.kmod import Kmod
from agent.params import (
    Source,
    dhcp_layer,
    local_cfg_skipped,
    read_local_cfg,
    server_layer,
)
from agent.params.medium import LOGS as LOGS_DIR
from agent.params.medium import find_medium
from agent.params.static import static_network
from agent.partition import partition
from agent.phases import AFTER_PLAN, InstallFailed, Stopped, canonical
from agent.plan import InstallPlan, firmware
from agent.planner import make_plan
from agent.report import DONE_MARKER, FAILED_MARKER
from agent.restpull import RestOfImage, beside_bulk
from agent.server import INITRD_LISTING, ImageServer
from agent.session import Session
from agent.storage.defaults import SOURCE as DEFAULT_LAYOUT
from agent.targets import install_targets
from sysclone.errors import ConfigError, SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

# How long the end of an install waits for the inventory to be sent.
INVENTORY_WAIT = 60.0

TARGET = Path("/sysroot")
DHCP_TIMEOUT = 60.0


# ---------------------------------------------------------------- phases ---

def read_medium(s: Session) -> None:
    """A sysclone USB disk's local.cfg (agent.params.medium): read once the
    drivers are loaded, over every other local.cfg."""
    if local_cfg_skipped(s.layers):
        return
    s.medium = find_medium()
    if s.medium is None:
        return
    cfg = s.medium.local_cfg
    s.reporter.say(f"boot medium {s.medium.device}: "
                   + (f"reading {cfg.name}" if cfg else "no local.cfg on it"))
    if cfg is not None:
        s.add_layer(read_local_cfg(cfg, source=Source.LOCAL_CFG_MEDIUM))


def _leave_medium(s: Session) -> None:
    """The agent's log onto the boot medium, which is then unmounted."""
    if s.medium is None:
        return
    who = str(s.reporter.client.get("hostname") or s.reporter.client.get("mac") or "client")
    kept = s.medium.keep_log(session.RUN_DIR / "agent.log", who)
    if kept is not None:
        s.reporter.say(f"log kept on the boot medium as {LOGS_DIR}/{kept.name}")
    s.medium.close()
    s.medium = None


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
        s.inventory = _send_inventory_later(s, net)
        return server


def _send_inventory_later(s: Session, net: network.NetConfig) -> threading.Thread:
    """The machine's inventory for the server, as an event of its own,
    collected beside the phases that follow: reading it through udev is a
    second and a half of Python under emulation, which the instructions'
    and the plan's waits and partitioning's commands leave room for.  The
    install waits for it before mkfs, which a 128 MiB client needs all its
    memory for, and before it reports its end (_wait_inventory)."""
    # Under the name the hello gave (the server's instructions may rename the
    # client meanwhile): the server keeps it where it kept the hello's.
    who = dict(s.reporter.client)

    def work() -> None:
        inv = _inventory(s, net)
        if inv is not None:
            s.reporter.event("inventory", inventory=inv, **who)

    t = threading.Thread(target=work, name="inventory", daemon=True)
    t.start()
    return t


def _wait_inventory(s: Session) -> None:
    if s.inventory is not None:
        s.inventory.join(INVENTORY_WAIT)


def _inventory(s: Session, net: network.NetConfig) -> dict[str, Any] | None:
    """What udev knows of this machine (udevd was started and triggered in
    the hardware phase), for the server (`sysclone clients show`, `bootenv
    check --client`).  A failure costs the report, never the install."""
    from agent import inventory

    try:
        inv = inventory.collect("sysclone-agent")
    except Exception as e:
        log.warning("inventory: %s", e)
        s.reporter.say(f"warning: no inventory for the server: {e}")
        return None
    inv["install_nic"] = net.nic.mac
    return inv


def fetch_instructions(s: Session, server: ImageServer, net: network.NetConfig
                       ) -> dict[str, Any]:
    with s.steps.phase("instructions"):
        p = s.params
        instr = server.instructions(hostname=p.hostname, mac=net.nic.mac, image=p.image_name,
                                    layout=p.disks_layout, network_config=p.network_config,
                                    script=p.script_name)
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
        targets = install_targets(all_disks, s.params.disks)
        # The boot environment's own modules, as the hardware phase loads
        # them (libkmod: modules.dep and the built-in ones).
        with Kmod() as kmod:
            plan = make_plan(instructions=instr, server=server.host, hostname=hostname,
                             targets=list(targets.disks), fw=firmware(),
                             ram_bytes=_ram_bytes(), choices=targets.choices,
                             have_module=lambda m: bool(kmod.lookup(m)))
        if s.resolved is not None and s.resolved.given("si.rsync-port"):
            # Asked for explicitly (even for rsync's own 873): it wins over the server's word.
            plan = replace(plan, image=replace(plan.image, rsync_port=s.params.rsync_port))
        _check_image(plan)
        plan = replace(plan, keys=_luks_keys(s, plan, server))
        for line in plan.describe().splitlines():
            s.reporter.say(line)
        s.reporter.event("plan", plan=plan.to_dict())
        return plan


# What the installed system needs to assemble and unlock its storage at
# boot, by storage feature: (what to install, the paths of which one will do).
IMAGE_TOOLS = {"md": ("mdadm", ("usr/sbin/mdadm", "sbin/mdadm")),
               "lvm": ("lvm2", ("usr/sbin/lvm", "sbin/lvm")),
               "luks": ("cryptsetup", ("usr/sbin/cryptsetup", "sbin/cryptsetup"))}
# A root on LUKS is unlocked by the initrd: its tool must have the hook.
ROOT_LUKS_HOOKS = ("cryptsetup-initramfs (or dracut)",
                   ("usr/share/initramfs-tools/hooks/cryptroot",
                    "usr/lib/dracut/modules.d/90crypt"))


def _check_image(plan: InstallPlan) -> None:
    """Before any disk is touched: the image must be there on the rsync
    daemon, and hold mdadm, lvm or cryptsetup (for a root on LUKS, the
    initrd hook that unlocks it) when the layout builds that storage -- an
    image without them could not assemble its disks at boot.  One listing
    answers it all; nothing is fetched."""
    needs = [IMAGE_TOOLS[f] for f in sorted(plan.features)]
    if "luks" in plan.root_stack:
        needs.append(ROOT_LUKS_HOOKS)
    marker = "etc/hostname"
    try:
        have = image_paths(plan.image.url, [marker, *(p for _, paths in needs for p in paths)])
    except SyscloneError as e:
        raise ConfigError(f"image {plan.image.name} cannot be read from {plan.image.url}: "
                          f"{e.message}") from None
    if marker not in have:
        raise ConfigError(f"image {plan.image.name} cannot be read from {plan.image.url}: "
                          f"it has no /{marker}")
    for package, paths in needs:
        if not any(p in have for p in paths):
            raise ConfigError(f"layout {plan.layout_name} needs {paths[0].rsplit('/', 1)[1]} "
                              f"in the installed system, and image {plan.image.name} has none: "
                              "it could not assemble its disks at boot",
                              hint=f"install {package} in the golden image")


def _luks_keys(s: Session, plan: InstallPlan, server: ImageServer) -> dict[str, bytes]:
    """Every LUKS volume's key, before anything is written: si.luks-key
    for all, else each from the image server."""
    if not plan.crypts:
        if s.params.luks_key:
            s.reporter.say(f"warning: si.luks-key is set, but layout {plan.layout_name} has no "
                           "LUKS volume: the key is not used")
        return {}
    if s.params.luks_key:
        s.reporter.say(f"LUKS key from si.luks-key ({s.resolved.origin('si.luks-key')})"
                       if s.resolved else "LUKS key from si.luks-key")
        return {c.name: s.params.luks_key.encode() for c in plan.crypts}
    keys = {}
    for c in plan.crypts:
        try:
            keys[c.name] = server.luks_key(hostname=plan.hostname, image=plan.image.module,
                                           volume=c.name)
        except SyscloneError as e:
            raise ConfigError(f"LUKS volume {c.name}: no key: {e.message}",
                              hint=e.hint or "pass si.luks-key, or put a key file on the "
                                             "image server") from None
    s.reporter.say(f"LUKS keys from the image server for {', '.join(keys)}")
    return keys


def _ram_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def partition_disks(s: Session, plan: InstallPlan) -> None:
    with s.steps.phase("partition"):
        partition(plan.disks, plan.filesystems)


def assemble_storage(s: Session, plan: InstallPlan) -> None:
    with s.steps.phase("assemble"):
        if not (plan.arrays or plan.crypts or plan.groups):
            s.reporter.say("no RAID, LUKS or LVM in this layout")
            return
        assemble(plan, s.reporter.say)


def format_filesystems(s: Session, plan: InstallPlan) -> None:
    _wait_inventory(s)
    with s.steps.phase("format"):
        make_filesystems(plan.filesystems)


def preload_filesystems(plan: InstallPlan) -> threading.Thread:
    """Load the plan's filesystem drivers in the background.  mount asks the
    kernel for a driver it lacks, and the kernel runs modprobe for it while
    the mount waits: about a second for ext4 (with jbd2, mbcache) under
    emulation.  Loaded here, beside partitioning and mkfs, which wait on
    their own commands, by the aliases the kernel itself would ask for
    (fs-ext4).  mount_target waits for it; a driver that fails to load here
    is left to mount, which then says what is wrong."""
    aliases = sorted({f"fs-{mount_fstype(f.fs)}" for f in plan.filesystems
                      if f.mountpoint and f.fs != "swap"})

    def work() -> None:
        kmod = Kmod()  # libkmod contexts are not shared between threads
        try:
            for alias in aliases:
                try:
                    for m in kmod.lookup(alias):
                        kmod.load(m)
                except SyscloneError as e:
                    log.info("loading the driver for %s ahead: %s", alias, e.message)
        finally:
            kmod.close()

    t = threading.Thread(target=work, name="fs-drivers", daemon=True)
    t.start()
    return t


def mount_target(s: Session, plan: InstallPlan, stack: ExitStack,
                 fs_drivers: threading.Thread | None = None) -> tuple[Path, SwapOn]:
    with s.steps.phase("mount"):
        if fs_drivers is not None:
            fs_drivers.join()
        TARGET.mkdir(exist_ok=True)
        mount_all(plan.mounts, TARGET, stack)
        swap = use_swap(plan.filesystems, stack)
        if swap.devices:
            s.reporter.say(f"swap on {', '.join(swap.devices)} until the install ends")
        return TARGET, swap


def pull_image(s: Session, plan: InstallPlan, root: Path, start: int,
               rest: RestOfImage | None = None) -> None:
    """The image but what the server lets come last (image.deferred): the
    bulk without rsync -S, then the sparse files (image.sparse, those in
    deferred directories too) in a run of their own with it, before
    anything reads them.  `start`: the bytes in use on the target before
    the first pull; `rest`: the deferred directories' pull, when it runs
    beside this one."""
    img = plan.image
    with s.steps.phase("fetch"):
        used = _used_on_target(plan, root)
        res = pull_except(img.url, root, img.deferred, img.sparse,
                          on_progress=_progress(s, plan, "fetch", 0), measure=used)
        if img.sparse:
            holes = pull_sparse(img.url, root, img.sparse, measure=used,
                                on_progress=_progress(s, plan, "fetch", used() - start))
            res = FetchResult(res.bytes + holes.bytes, res.seconds + holes.seconds)
        sparse = "every file checked for holes" if img.sparse is None \
            else f"{len(img.sparse)} sparse files apart" if img.sparse else "no sparse files"
        rest_note = "" if not img.deferred else \
            f", {len(img.deferred)} directories beside it" if rest and rest.beside \
            else f", {len(img.deferred)} directories to follow"
        s.reporter.say(f"{res.bytes / 2**20:,.0f} MiB in {res.seconds:.1f}s ({sparse}){rest_note}")


def pull_rest(s: Session, plan: InstallPlan, root: Path, start: int,
              started: Callable[[subprocess.Popen[str]], None] | None = None,
              stopping: threading.Event | None = None) -> None:
    """The deferred directories (kernel modules, firmware, documentation,
    package lists: imageserver.fetchorder), while the system is configured
    (agent.restpull: or beside the bulk).  `started` gets its rsync process;
    `stopping` is set when the install ends it early."""
    with s.steps.phase("fetch-rest"):
        if not plan.image.deferred:
            s.reporter.say("nothing deferred: the image is all there")
            return
        used = _used_on_target(plan, root)
        try:
            res = pull_only(plan.image.url, root, plan.image.deferred, plan.image.sparse,
                            on_progress=_progress(s, plan, "fetch-rest", used() - start),
                            measure=used, started=started)
        except FetchError:
            if stopping is not None and stopping.is_set():
                raise Stopped("the install failed elsewhere") from None
            raise
        s.reporter.say(f"{', '.join('/' + d for d in plan.image.deferred)}: "
                       f"{res.bytes / 2**20:,.0f} MiB in {res.seconds:.1f}s")


def rest_of_image(s: Session, plan: InstallPlan, root: Path, start: int,
                  beside: bool) -> RestOfImage:
    """pull_rest, to run beside the bulk or later (agent.restpull)."""
    return RestOfImage(functools.partial(pull_rest, s, plan, root, start), beside)


def _used_on_target(plan: InstallPlan, root: Path) -> Callable[[], int]:
    """The bytes in use on the new filesystems, as they fill."""
    mounts = [root / (f.mountpoint or "/").lstrip("/") for f in plan.mounts]
    return lambda: used_bytes(mounts)


def _progress(s: Session, plan: InstallPlan, phase: str, before: int
              ) -> Callable[[Progress], None]:
    """Progress is the space used on the new filesystems (`before`: what
    an earlier pull of this install added), against what the image
    occupies on the server's."""
    total = plan.image.bytes or plan.image.transfer_bytes

    def progress(pr: Progress) -> None:
        b = before + pr.bytes
        pct = min(100, b * 100 // total) if total else None
        s.reporter.event("progress", phase=phase, bytes=b, rate=pr.rate, percent=pct)

    return progress


def apply_overrides(s: Session, plan: InstallPlan, root: Path) -> None:
    with s.steps.phase("overrides"):
        if not plan.overrides:
            s.reporter.say("no overrides for this client")
            return
        # Applied least important first, so the most important one wins;
        # the server exports each as module override.NAME (imageserver.rsyncd).
        for name in reversed(plan.overrides):
            s.reporter.say(f"override {name}")
            pull(rsync_url(plan.image.server, plan.image.rsync_port, f"override.{name}"), root)


def pre_install(s: Session, plan: InstallPlan, instr: dict[str, Any],
                net: network.NetConfig, scripts: tuple[scriptlib.Script, ...]
                ) -> netlib.NetworkConfig | None:
    """Before any disk is written: the pre-install scripts, and the network
    configuration the installed system will get, read and checked."""
    with s.steps.phase("pre-install"):
        netcfg = _network_config(s, instr)
        if not scripts:
            s.reporter.say("no pre-install scripts for this client")
            return netcfg
        scriptlib.run_scripts(scripts, session.RUN_DIR / "scripts/pre-install",
                              str(session.RUN_DIR / "scripts/pre-install"),
                              _script_variables(s, plan, net), _script_report(s))
        return netcfg


def _network_config(s: Session, instr: dict[str, Any]) -> netlib.NetworkConfig | None:
    """The server's network configuration file (si.network-config), parsed:
    the server checked it against the image already, this checks it again
    before anything is written."""
    given = instr.get("network_config")
    if not given:
        return None
    netcfg = netlib.parse_network_config(given["text"], given["name"])
    s.reporter.say(f"network configuration {given['name']}: "
                   + ", ".join(i.name for i in netcfg.ifaces))
    return netcfg


def _script_variables(s: Session, plan: InstallPlan, net: network.NetConfig
                      ) -> dict[str, str]:
    """SystemImager's variables (its variables.txt), as scripts expect them."""
    short = plan.hostname.split(".")[0]
    v = {"IMAGENAME": plan.image.name, "IMAGESERVER": plan.image.server,
         "HOSTNAME": short, "BASE_HOSTNAME": scriptlib.base_hostname(short), "GROUPNAMES": "",
         "DOMAINNAME": s.params.domainname or net.domain or "",
         "DEVICE": net.nic.name, "MAC": net.nic.mac, "IPADDR": net.address,
         "NETMASK": str(IPv4Network(f"0.0.0.0/{net.prefixlen}").netmask),
         "GATEWAY": net.gateway or "", "IP_ASSIGNMENT_METHOD": net.method,
         "DISKS": " ".join(d.disk.path for d in plan.disks),
         "SCRIPTNAME": s.params.script_name or "",
         "MONITOR_SERVER": s.params.monitor_server or plan.image.server,
         "SYSCLONE_IMAGE_VERSION": "" if plan.image.version is None
         else str(plan.image.version)}
    return v


def _script_report(s: Session) -> scriptlib.Reporter:
    return scriptlib.Reporter(s.reporter.say, s.reporter.event)


def post_install(s: Session, plan: InstallPlan, net: network.NetConfig, root: Path,
                 scripts: tuple[scriptlib.Script, ...]) -> None:
    """Chrooted in the installed system, once everything else is done,
    right before its filesystems are unmounted (as SystemImager ran them)."""
    with s.steps.phase("post-install"):
        if not scripts:
            s.reporter.say("no post-install scripts for this client")
            return
        # /tmp is a tmpfs while the chroot is set up: nothing stays behind.
        scriptlib.run_scripts(scripts, root / "tmp/post-install", "/tmp/post-install",
                              _script_variables(s, plan, net), _script_report(s), target=root)


def configure_system(s: Session, plan: InstallPlan, net: network.NetConfig,
                     root: Path, netcfg: netlib.NetworkConfig | None = None) -> None:
    with s.steps.phase("configure"):
        s.written += write_fstab(plan.filesystems, root, plan.layout)
        s.written += write_crypttab(plan, root, str(s.params.luks_unlock))
        s.written += write_mdadm_conf(plan, root)
        s.written += system.set_hostname(root, plan.hostname, s.params.domainname or net.domain)
        s.written += system.reset_machine_id(root)
        s.written += _write_network(s, net, root, netcfg)
        s.written += selinux.relabel_on_first_boot(root, s.params.selinux_relabel)
        prepare_initrd(s, plan, root)


def host_keys(s: Session, root: Path) -> None:
    """Clones must not share SSH host keys.  Beside configure, initrd and
    the bootloader: a 3072-bit RSA key alone takes half a minute under
    emulation, and nothing else reads the keys before the reboot."""
    with s.steps.phase("host-keys"):
        t0 = time.monotonic()
        written = system.regenerate_ssh_host_keys(root)
        s.written += written
        s.reporter.say(f"new SSH host keys in {time.monotonic() - t0:.1f}s: {', '.join(written)}"
                       if written else "no SSH host keys in the image")


def _write_network(s: Session, net: network.NetConfig, root: Path,
                   netcfg: netlib.NetworkConfig | None = None) -> list[str]:
    style = netlib.choose(root)
    if style is None:
        if netcfg is not None:
            raise ConfigError(f"{netcfg.name}: the image has no network style sysclone knows",
                              hint="install systemd-networkd, NetworkManager, netplan or "
                                   "ifupdown in the golden image")
        s.reporter.say("warning: no known network configuration style in the image; "
                       "network left unconfigured")
        return []
    nic = netlib.NicIdentity(net.nic.name, net.nic.mac, _udev_net_names(net.nic.name))
    if net.method == "static":
        addr = netlib.Addressing("static", f"{net.address}/{net.prefixlen}", net.gateway,
                                 net.dns, net.domain)
    else:
        addr = netlib.Addressing("dhcp")
    result = netlib.configure(root, style, nic, addr, netcfg)
    for w in result.warnings:
        s.reporter.say(f"warning: network: {w}")
    what = f"{netcfg.name} and the install NIC" if netcfg else f"{addr.method} on {nic.mac}"
    s.reporter.say(f"network: {style.name}, {what}: {', '.join(result.files)}")
    return list(result.files)


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


def initrd(s: Session, plan: InstallPlan, server: ImageServer, root: Path,
           whole_image: Callable[[], object] = lambda: None) -> None:
    """`whole_image()` returns once the deferred part of the image is there
    (module objects, firmware): what a regeneration here needs."""
    with s.steps.phase("initrd"):
        tool = best(initrdlib.TOOLS, root)
        kvers = initrdlib.kernel_versions(root)
        needs = _storage_needs(plan)
        # What the layout needs to mount root must be in every initrd the
        # image's tool makes, now and at its next kernel update.
        features = initrdlib.features_of(needs)
        if tool is None and kvers and features:
            raise initrdlib.InitrdError(
                "the layout needs " + ", ".join(sorted(features)) + " in the initrd, but the "
                "image has no initrd tool", hint="install initramfs-tools or dracut in the "
                                                 "golden image")
        if tool is None or not kvers:
            s.reporter.say("no initrd tool or no kernel in the image: nothing to do")
            return
        s.written += tool.require(root, features)
        listed = _server_listings(plan, server) if s.params.initrd == "auto" else {}
        facts = [_initrd_facts(tool, root, k, listed) for k in kvers] \
            if s.params.initrd == "auto" else []
        decision = policy.decide(str(s.params.initrd), tool.name, facts, needs)
        where = "server" if decision.regenerate and tool.builds_generic(root) else "client"
        s.reporter.say(f"{tool.name} for {', '.join(kvers)}: {decision.describe()}")
        s.reporter.event("initrd", tool=tool.name, kernels=kvers, needs=needs.to_dict(),
                         where=where if decision.regenerate else None, **decision.to_dict())
        if not decision.regenerate:
            return
        t0 = time.monotonic()
        if where == "server":
            try:
                for k in kvers:
                    _initrd_from_server(s, plan, server, tool, root, k)
                s.reporter.event("initrd-built", where="server",
                                 seconds=round(time.monotonic() - t0, 2))
                return
            except SyscloneError as e:
                s.reporter.say(f"the image server could not build it ({e.message}): "
                               "regenerating here instead")
                s.reporter.event("initrd-built", where="client", server_error=e.message)
                t0 = time.monotonic()
        whole_image()
        tool.regenerate(root, kvers)
        s.reporter.event("initrd-built", where="client", seconds=round(time.monotonic() - t0, 2))


def written_paths(written: list[str]) -> list[str]:
    """What configure wrote, as the done event reports it: absolute paths,
    each once (the writers return some relative to the root); updateclient
    keeps them out of every later update."""
    return sorted({"/" + w.lstrip("/") for w in written})


def _initrd_from_server(s: Session, plan: InstallPlan, server: ImageServer,
                        tool: initrdlib.InitrdTool, root: Path, kver: str) -> None:
    """A generic initrd does not depend on this machine: the image server
    builds it with the image's own tool at native speed (imageserver.
    initrdbuild), from the image plus the files this install wrote."""
    files = {}
    for rel in sorted({w.lstrip("/") for w in s.written}):
        p = root / rel
        if initrdlib.is_initrd_input(rel) and p.is_file() and not p.is_symlink():
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
    disk_drivers: list[str] = []
    for d in plan.disks:
        disk_drivers += [m for m in hardware.block_driver_modules(d.disk.name)
                         if m not in disk_drivers]
    idents = {f.uuid for f in plan.filesystems} | {f.device for f in plan.filesystems} | \
        {a.uuid for a in plan.arrays} | {a.name for a in plan.arrays} | \
        {c.uuid for c in plan.crypts} | {c.path for c in plan.crypts}
    must = ({c.uuid for c in plan.crypts} if "luks" in plan.root_stack else set()) | \
        ({a.uuid for a in plan.arrays} if "md" in plan.root_stack else set())
    return policy.storage_needs(root_fs, disk_drivers, plan.features, plan.raid_levels, idents,
                                must)


def _server_listings(plan: InstallPlan, server: ImageServer) -> dict[str, Any]:
    """The image's initrds as the image server listed them, natively, once
    per version (imageserver.initrdlisting): reading one here is seconds of
    decompression under emulation, on update-grub's path.  {} when the
    server cannot say: each initrd is then read here."""
    try:
        got = server.get(INITRD_LISTING, {"module": plan.image.module}, attempts=1).get("initrds")
    except SyscloneError as e:
        log.info("initrd listings from the image server: %s", e.message)
        return {}
    return got if isinstance(got, dict) else {}


def _listed(listed: dict[str, Any], root: Path, path: Path) -> initramfs.Listing | None:
    """The server's listing of `path`, if it is of this very file: same
    path, size and mtime (an override may have replaced it)."""
    entry = listed.get(path.relative_to(root).as_posix())
    try:
        st = path.stat()
        if not isinstance(entry, dict) or entry.get("size") != st.st_size or \
                entry.get("mtime") != st.st_mtime_ns // 1_000_000_000:
            return None
        return initramfs.Listing.from_dict(entry["listing"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        log.info("the server's listing of %s is not usable: %s", path, e)
        return None


def _initrd_facts(tool: initrdlib.InitrdTool, root: Path, kver: str,
                  listed: dict[str, Any]) -> policy.InitrdFacts:
    path = tool.initrd_path(root, kver)
    listing, problem = None, None
    if path is not None:
        listing = _listed(listed, root, path)
        if listing is not None:
            log.debug("%s: listed by the image server", path)
        else:
            try:
                listing = initrdlib.list_initrd(root, path)
            except SyscloneError as e:
                problem = f"{path.name} cannot be read: {e.message}"
    return policy.InitrdFacts(kver, path, listing, policy.builtin_modules(root, kver), problem)


def install_bootloader(s: Session, plan: InstallPlan, root: Path,
                       initrd_ready: Callable[[], object] = lambda: None) -> None:
    with s.steps.phase("bootloader"):
        esp = next((f.mountpoint for f in plan.filesystems
                    if f.mountpoint in ("/boot/efi", "/efi")
                    or (f.mountpoint == "/boot" and f.fs in ("vfat", "fat32", "fat16"))),
                   "/boot/efi")
        layout_bl = plan.layout.bootloader
        # The layout's flavor is honoured; the built-in default layout
        # names none of its own, the image's footprint decides.
        given = layout_bl is not None and plan.layout.source != DEFAULT_LAYOUT
        target = bootlib.BootTarget(
            plan.firmware, plan.boot_disks, esp,
            flavor=layout_bl.flavor.value if given and layout_bl else None,
            timeout=layout_bl.timeout if layout_bl else None,
            default_entry=layout_bl.default_entry if layout_bl else None)
        bl = bootlib.choose(root, target)
        with ExitStack() as config_done:
            def config_may_start() -> None:
                # GRUB writes its configuration once the initrds are there;
                # only then may udevadm be hidden from its grub-probe runs
                # (initrd tools copy udevadm into the initrd).
                initrd_ready()
                if isinstance(bl, bootlib.Grub2):
                    config_done.enter_context(grubprobe.without_udevadm(root, s.reporter.say))

            bl.install(root, target, config_may_start)
        s.reporter.say(f"{bl.name} for {plan.firmware} on {', '.join(plan.boot_disks)}")


# ------------------------------------------------------------- the flow ---

def install(s: Session, plan_only: bool,
            detected: Callable[[], hardware.HardwareReport]) -> InstallPlan | None:
    hw = detected()  # the hardware phase: agent.session ran it while this was imported
    read_medium(s)
    net = bring_up_network(s)
    server = connect_monitor(s, hw, net)
    instr = fetch_instructions(s, server, net)
    plan = validate_plan(s, instr, server, net)
    if plan_only or s.params.dry_run:
        s.reporter.say("dry run: nothing was written")
        later = [b for b in s.params.breaks if canonical(b) in AFTER_PLAN]
        if later:
            s.reporter.say(f"warning: si.break={','.join(later)}: a dry run ends after the plan "
                           "and never reaches it")
        return plan
    scripts = scriptlib.from_instructions(instr)
    netcfg = pre_install(s, plan, instr, net, scripts["pre-install"])
    fs_drivers = preload_filesystems(plan)
    partition_disks(s, plan)
    assemble_storage(s, plan)
    format_filesystems(s, plan)
    with ExitStack() as mounts:
        root, swap = mount_target(s, plan, mounts, fs_drivers)
        start = _used_on_target(plan, root)()
        rest = rest_of_image(s, plan, root, start, beside_bulk(
            bool(plan.image.deferred), bool(s.steps.breaks), _ram_bytes()))
        mounts.callback(rest.stop)  # runs before the unmounts, which came first
        rest.begin()
        pull_image(s, plan, root, start, rest)
        if plan.overrides:  # they go on top of the whole image
            rest.finish()
        rest.check()
        apply_overrides(s, plan, root)
        # Everything from here runs the image's own tools, chrooted: with
        # /dev, /proc, /sys bound (a captured image's /dev is empty).
        with chroot_target(root, efi=plan.firmware == "uefi"):
            _configure_while_fetching(s, plan, net, server, root, rest, netcfg)
            post_install(s, plan, net, root, scripts["post-install"])
        with s.steps.phase("finish"):
            kept = swap.keep()
            t0 = time.monotonic()
            mounts.close()  # unmount everything, innermost first
            run(["sync"])
            s.reporter.say(f"filesystems unmounted and synced in {time.monotonic() - t0:.1f}s"
                           + (f"; swap on {', '.join(kept)} stays on until the reboot"
                              if kept else ""))
    return plan


def _configure_while_fetching(s: Session, plan: InstallPlan, net: network.NetConfig,
                              server: ImageServer, root: Path, rest: RestOfImage,
                              netcfg: netlib.NetworkConfig | None) -> None:
    """fetch-rest (unless the rest is there already), configure -> initrd,
    the SSH host keys and the bootloader, side by side: rsync and mostly
    shell scripts, minutes on a slow machine.  What orders them:
      - an initrd regenerated here needs the module objects and firmware,
        which may still be coming: it waits for the rest of the image;
      - the bootloader's configuration lists the initrds: it waits for the
        initrd phase (its boot code is installed meanwhile).
    Nothing else reads what comes last (imageserver.fetchorder)."""
    initrd_done = threading.Event()

    def whole_image() -> None:
        if not rest.arrived():
            raise SyscloneError("the rest of the image did not arrive (see fetch-rest)")

    def configure_and_initrd() -> None:
        try:
            configure_system(s, plan, net, root, netcfg)
            initrd(s, plan, server, root, whole_image)
        finally:
            initrd_done.set()

    jobs: dict[str, Callable[[], None]] = {}
    if not rest.done:
        jobs["fetch-rest"] = rest.finish
    jobs["configure"] = configure_and_initrd
    jobs["host-keys"] = functools.partial(host_keys, s, root)
    jobs["bootloader"] = lambda: install_bootloader(s, plan, root, initrd_done.wait)
    s.steps.concurrently(jobs, also=("initrd",))


def run_session(s: Session, plan_only: bool, started: float,
                detected: Callable[[], hardware.HardwareReport]) -> int:
    """Everything after the hardware phase (agent.start.run_install);
    the exit status and post-action say how it went."""
    try:
        return _run(s, plan_only, started, detected)
    finally:
        _leave_medium(s)


def _run(s: Session, plan_only: bool, started: float,
         detected: Callable[[], hardware.HardwareReport]) -> int:
    reporter, steps = s.reporter, s.steps
    plan = None
    try:
        plan = install(s, plan_only, detected)
    except InstallFailed as e:
        phase = e.fields.get("phase", "?")
        reporter.say(f"{FAILED_MARKER}: [{phase}] {e}")
        _wait_inventory(s)
        reporter.flush()
        return 1
    except SyscloneError as e:  # outside any phase
        reporter.event("failed", phase=None, message=e.message, detail=e.to_dict())
        reporter.say(f"{FAILED_MARKER}: {e}")
        _wait_inventory(s)
        reporter.flush()
        return 1
    if (plan_only or s.params.dry_run) and s.resolved is not None:
        for line in s.resolved.explain(show_defaults=False).splitlines():
            reporter.say(line)
    _wait_inventory(s)
    # Wall clock: initrd and bootloader overlap, their times do not add up.
    total = time.monotonic() - started
    image = {"image": plan.image.name, "image_version": plan.image.version} if plan else {}
    reporter.event("done", message=f"installed in {total:.0f}s", seconds=round(total, 2),
                   timings={n: round(t, 2) for n, t in steps.timings},
                   written=written_paths(s.written), **image)
    reporter.flush()
    reporter.say(f"{DONE_MARKER} in {total:.1f}s: "
                 + ", ".join(f"{n} {t:.1f}s" for n, t in steps.timings))
    session.write_post_action(str(s.params.post_action))
    return 0
