"""The boot server (si_mkbootserver, si_mkdhcpserver): dnsmasq configured
for a PXE tree (mkmedia.pxe), and the same for sites on ISC dhcpd.

dnsmasq does DHCP and TFTP on one interface, nothing else (no DNS):

  full    it hands out addresses: a dynamic range, plus a static lease for
          each client the monitor has seen (MAC, last address, host name)
          and each --host; option 140 names the image server, so clients
          need no IMAGESERVER= on their command line
  proxy   another DHCP server hands out the addresses; dnsmasq only answers
          the PXE firmware with its boot file (proxy-DHCP).  The agent's own
          DHCP then comes from that server, without option 140: the tree's
          command line must name the image server.  What only the site's
          server can hand out (--router, --dns, --domain, --image-server as
          option 140, an ISC dhcpd subnet) is refused, not dropped

The boot file follows the firmware (DHCP option 93):

  BIOS (0)                 pxelinux.0, or undionly.kpxe with --bios-loader ipxe
  UEFI x86-64 (7, 9)       bootx64.efi (Debian's signed shim, then GRUB), or
                           ipxe.efi with --efi-loader ipxe
  UEFI HTTP boot (16)      http://.../boot/ipxe.efi, with option 60 HTTPClient
  iPXE (user class iPXE)   boot.ipxe, over HTTP when the image server serves
                           the tree (ROOT/pxe at /boot/), else over TFTP; from
                           a tree without iPXE, the firmware's file above

Tags are made exclusive so no line depends on dnsmasq's order of matching.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import re
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.params.kinds import is_hostname
from mkmedia import pxe
from mkmedia.clientkeys import mac_key
from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot
from sysclone.run import daemon, output

_IFACE = re.compile(r"[A-Za-z0-9._@-]{1,15}\Z")
MODES = ("full", "proxy")
BIOS_LOADERS = {"pxelinux": pxe.BIOS_BOOTFILE, "ipxe": pxe.IPXE_BIOS}
EFI_LOADERS = {"grub": pxe.EFI_BOOTFILE, "ipxe": pxe.IPXE_EFI}
# The tree's loader each boot file needs.
_NEEDS = {"pxelinux": "pxelinux", "grub": "grub", "ipxe": "ipxe"}
_DHCPD_FULL_ONLY = ("--dhcpd is for full mode: its subnet hands out addresses, and in proxy "
                    "mode the site's DHCP server does")


@dataclass(frozen=True)
class StaticLease:
    mac: str
    ip: str | None = None
    name: str | None = None

    @classmethod
    def parse(cls, text: str) -> StaticLease:
        """MAC[,IP][,NAME], as --host takes it."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts or len(parts) > 3:
            raise ConfigError(f"--host {text!r}: expected MAC[,IP][,NAME]")
        mac = mac_key(parts[0]).mac
        assert mac is not None
        ip = name = None
        for p in parts[1:]:
            try:
                ip = str(ipaddress.IPv4Address(p))
            except ValueError:
                if not is_hostname(p):
                    raise ConfigError(f"--host {text!r}: {p!r} is neither an IPv4 address nor "
                                      "a host name") from None
                name = p
        return cls(mac, ip, name)


@dataclass(frozen=True)
class BootServer:
    interface: str
    address: ipaddress.IPv4Interface  # this server on that interface, with its network
    mode: str
    tree: Path
    loaders: tuple[str, ...]  # what the tree holds
    image_server: str | None  # option 140; None in proxy mode (not sent)
    dhcp_range: tuple[str, str] | None
    router: str | None
    dns: tuple[str, ...]
    domain: str | None
    hosts: tuple[StaticLease, ...]
    bios_loader: str
    efi_loader: str
    http_base: str | None  # URL of the tree over HTTP, ending in /
    lease_file: Path
    pid_file: Path
    user: str | None  # dnsmasq's --user; None: its default (it drops root)
    lease_time: str = "12h"
    warnings: tuple[str, ...] = ()


# ----------------------------------------------------------------- options ---

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interface", metavar="IFACE",
                   help="the interface the machines boot on (dnsmasq binds to it only); "
                        "required")
    p.add_argument("--address", metavar="ADDR/PREFIX",
                   help="this server on IFACE (default: IFACE's IPv4 address)")
    p.add_argument("--mode", choices=MODES, default="full",
                   help="full: hand out addresses (default); proxy: beside another DHCP "
                        "server, answer only the PXE firmware (that server gives addresses, "
                        "router, DNS and domain: --range, --host, --router, --dns, --domain, "
                        "--image-server and --dhcpd are refused)")
    p.add_argument("--tree", help="the PXE tree to serve over TFTP (default: ROOT/pxe)")
    p.add_argument("--range", metavar="START,END",
                   help="dynamic addresses (full mode; default .100-.199 of the network)")
    p.add_argument("--router", metavar="ADDR",
                   help="default gateway to hand out (full mode; in the served network)")
    p.add_argument("--dns", action="append", metavar="ADDR",
                   help="name server (full mode; repeatable)")
    p.add_argument("--domain", help="DNS domain to hand out (full mode)")
    p.add_argument("--host", action="append", metavar="MAC[,IP][,NAME]",
                   help="a static lease (full mode; repeatable); IP in the served network")
    p.add_argument("--no-seen", action="store_true",
                   help="no static leases for the clients the monitor has seen")
    p.add_argument("--image-server", metavar="HOST",
                   help="option 140 (full mode; default: this server's address); in "
                        "proxy mode put IMAGESERVER= on the tree's command line instead")
    p.add_argument("--http-port", type=int, default=8181,
                   help="the image server's HTTP port, for UEFI HTTP boot and iPXE "
                        "(default 8181)")
    p.add_argument("--bios-loader", choices=sorted(BIOS_LOADERS), default="pxelinux")
    p.add_argument("--efi-loader", choices=sorted(EFI_LOADERS), default="grub",
                   help="grub: Debian's signed shim and GRUB, boots with Secure Boot on "
                        "(default); ipxe: iPXE")
    p.add_argument("--dnsmasq-user", metavar="USER",
                   help="user dnsmasq runs as (default: its own choice, which must be able "
                        "to read the tree)")
    p.add_argument("--output", metavar="FILE",
                   help="where to write the dnsmasq configuration (default: "
                        "ROOT/run/dnsmasq.conf)")
    p.add_argument("--dhcpd", metavar="FILE",
                   help="also write the same for ISC dhcpd (a dhcpd.conf subnet fragment "
                        "that hands out addresses; full mode only: in proxy mode the site's "
                        "DHCP server keeps its own configuration)")
    p.add_argument("--run", action="store_true",
                   help="run dnsmasq with it in the foreground until interrupted")


def interface_address(interface: str) -> ipaddress.IPv4Interface:
    """IFACE's first IPv4 address, with its prefix."""
    try:
        data = json.loads(output(["ip", "-j", "-4", "addr", "show", "dev", interface],
                                 check=False) or "[]")
    except ValueError:
        data = []
    for link in data:
        for a in link.get("addr_info") or ():
            if a.get("family") == "inet":
                return ipaddress.IPv4Interface(f"{a['local']}/{a['prefixlen']}")
    raise ConfigError(f"--interface {interface} has no IPv4 address",
                      hint="give it one, or pass --address ADDR/PREFIX")


def _ip(value: str, option: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise ConfigError(f"{option} {value!r} is not an IPv4 address") from None


def seen_clients(state: StateRoot) -> list[StaticLease]:
    """A static lease for each client the monitor heard: its last MAC,
    address and host name."""
    out: dict[str, StaticLease] = {}
    if not state.logs.is_dir():
        return []
    for f in sorted(state.logs.glob("*.jsonl")):
        mac = ip = name = None
        for line in f.read_text(errors="replace").splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            mac = ev.get("mac") or mac
            ip = ev.get("ip") or ip
            name = ev.get("hostname") or name
        try:
            key = mac_key(str(mac)) if mac else None
        except ConfigError:
            key = None
        if key is None:
            continue
        good_ip = None
        with contextlib.suppress(ValueError):
            good_ip = str(ipaddress.IPv4Address(str(ip).split("/")[0])) if ip else None
        assert key.mac is not None
        out[key.mac] = StaticLease(key.mac, good_ip,
                                   str(name) if name and is_hostname(str(name)) else None)
    return list(out.values())


def _readable_by_others(tree: Path) -> bool:
    for p in [tree, *tree.parents]:
        mode = p.stat().st_mode
        if not mode & stat.S_IXOTH or (p == tree and not mode & stat.S_IROTH):
            return False
    return True


def config_from_options(state: StateRoot, a: argparse.Namespace) -> BootServer:
    if not a.interface:
        raise ConfigError("bootserver: --interface IFACE is required (where machines boot)")
    if not _IFACE.match(a.interface):
        raise ConfigError(f"--interface {a.interface!r} is not an interface name")
    tree = Path(a.tree).absolute() if a.tree else state.pxe
    info = pxe.read_info(tree)
    if info is None:
        raise ConfigError(f"no PXE tree in {tree}", hint="write one with `sysclone media pxe`")
    if a.address:
        try:
            address = ipaddress.IPv4Interface(a.address)
        except ValueError:
            raise ConfigError(f"--address {a.address!r} is not ADDR/PREFIX") from None
        if "/" not in a.address:
            raise ConfigError(f"--address {a.address}: give the prefix too (ADDR/24)")
    else:
        address = interface_address(a.interface)
    warnings: list[str] = []
    for loader in (a.bios_loader, a.efi_loader):
        if _NEEDS[loader] not in info.loaders:
            raise ConfigError(f"the tree {tree} has no {loader} files",
                              hint=f"rewrite it with `sysclone media pxe --loaders ...,{loader}`")
    if not 1 <= a.http_port <= 65535:
        raise ConfigError(f"--http-port {a.http_port} is not a port number (1-65535)")
    http_base = f"http://{address.ip}:{a.http_port}/boot/" \
        if tree.resolve() == state.pxe.resolve() else None
    if "ipxe" in info.loaders and http_base is None:
        warnings.append(f"the image server serves ROOT/pxe over HTTP, not {tree}: no UEFI HTTP "
                        "boot, and iPXE loads the boot environment over TFTP")
    image_server = None
    dhcp_range = None
    hosts: list[StaticLease] = []
    router = None
    if a.mode == "full":
        image_server = a.image_server or str(address.ip)
        if a.image_server and not (is_hostname(a.image_server) or _is_ip(a.image_server)):
            raise ConfigError(f"--image-server {a.image_server!r} is not a host")
        dhcp_range = _range(a.range, address)
        hosts = _static_leases(state, a, address.network)
        router = _router(a.router, address.network) if a.router else None
    else:
        _refuse_in_proxy_mode(a)
        if "IMAGESERVER=" not in info.append and "si.image-server=" not in info.append:
            warnings.append("proxy mode: clients get no option 140 from the site's DHCP "
                            "server; put IMAGESERVER= on the tree's command line")
        if "ipxe" in (a.bios_loader, a.efi_loader):
            raise ConfigError("proxy mode boots pxelinux and GRUB only: iPXE would be sent "
                              "its own boot file again", hint="use --mode full for iPXE")
    if a.dnsmasq_user is None and not _readable_by_others(tree):
        raise ConfigError(f"{tree} cannot be read by other users, and dnsmasq serves TFTP "
                          "as its own unprivileged user",
                          hint="make it readable (chmod o+rx on the path), or pass "
                               "--dnsmasq-user root")
    if a.dnsmasq_user is not None and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}",
                                                      a.dnsmasq_user):
        raise ConfigError(f"--dnsmasq-user {a.dnsmasq_user!r} is not a user name")
    dns = tuple(_ip(d, "--dns") for d in a.dns or ())
    if a.domain and not is_hostname(a.domain):
        raise ConfigError(f"--domain {a.domain!r} is not a domain name")
    return BootServer(a.interface, address, a.mode, tree, info.loaders, image_server,
                      dhcp_range, router, dns, a.domain, tuple(hosts), a.bios_loader,
                      a.efi_loader, http_base, state.run / "dnsmasq.leases",
                      state.run / "dnsmasq.pid", a.dnsmasq_user, warnings=tuple(warnings))


def _refuse_in_proxy_mode(a: argparse.Namespace) -> None:
    """Proxy mode answers the PXE firmware only: addresses and network
    settings come from the site's DHCP server, so an option for them would
    be dropped without a word.  It is refused instead."""
    for option, value in (("--range", a.range), ("--host", a.host), ("--router", a.router),
                          ("--dns", a.dns), ("--domain", a.domain)):
        if value:
            raise ConfigError(f"{option} is for full mode: in proxy mode the site's DHCP "
                              "server hands out addresses and network settings",
                              hint="set it on that server, or use --mode full")
    if a.image_server:
        # dnsmasq's proxy replies carry the boot file only, never option 140.
        raise ConfigError("--image-server is for full mode: in proxy mode the site's DHCP "
                          "server answers the agent, without option 140",
                          hint=f"put IMAGESERVER={a.image_server} on the tree's command line "
                               f"(sysclone media pxe --append IMAGESERVER={a.image_server})")
    if a.dhcpd:
        raise ConfigError(_DHCPD_FULL_ONLY,
                          hint="for the site's dhcpd to send the boot files itself, write the "
                               "fragment with --mode full and copy its next-server and "
                               "filename lines")


def _static_leases(state: StateRoot, a: argparse.Namespace,
                   net: ipaddress.IPv4Network) -> list[StaticLease]:
    """--host entries over the clients the monitor saw (the same MAC:
    --host wins).  A seen client's address from another network is left
    out (the machine moved; its name stays); a --host address outside the
    network is refused: it was typed for this one, and dnsmasq could not
    hand it out."""
    given: dict[str, StaticLease] = {}
    typed: dict[str, str] = {}
    for text in a.host or ():
        h = StaticLease.parse(text)
        if h.ip and ipaddress.IPv4Address(h.ip) not in net:
            raise ConfigError(f"--host {text}: {h.ip} is outside the served network {net}",
                              hint="give an address in it, or only MAC,NAME")
        if h.mac in given and given[h.mac] != h:
            # dnsmasq would take one of them; which one is nobody's guess.
            raise ConfigError(f"--host {typed[h.mac]} and --host {text} name the same MAC "
                              f"{h.mac}", hint="give each machine one --host")
        given[h.mac], typed[h.mac] = h, text
    by_mac: dict[str, StaticLease] = {}
    for h in [] if a.no_seen else seen_clients(state):
        if h.ip and ipaddress.IPv4Address(h.ip) not in net:
            h = StaticLease(h.mac, None, h.name)
        by_mac[h.mac] = h
    by_mac.update(given)
    return list(by_mac.values())


def _router(value: str, net: ipaddress.IPv4Network) -> str:
    """A gateway the clients can reach: on their own network."""
    router = _ip(value, "--router")
    if ipaddress.IPv4Address(router) not in net:
        raise ConfigError(f"--router {value} is outside the served network {net}",
                          hint="clients reach a gateway only on their own network")
    return router


def _is_ip(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def _range(text: str | None, address: ipaddress.IPv4Interface) -> tuple[str, str]:
    net = address.network
    if text:
        start_s, comma, end_s = text.partition(",")
        if not comma or not start_s.strip() or not end_s.strip():
            raise ConfigError(f"--range {text}: give both ends, START,END",
                              hint=f"e.g. {net.network_address + 100},{net.network_address + 199}")
        start = ipaddress.IPv4Address(_ip(start_s.strip(), "--range"))
        end = ipaddress.IPv4Address(_ip(end_s.strip(), "--range"))
        if start not in net or end not in net or end < start:
            raise ConfigError(f"--range {text}: both ends in {net}, start first")
    else:
        if net.num_addresses < 256:
            raise ConfigError(f"{net} is too small for the default range (.100-.199)",
                              hint="give --range START,END")
        start, end = net.network_address + 100, net.network_address + 199
    if start <= address.ip <= end:
        raise ConfigError(f"the range {start}-{end} holds this server's own address "
                          f"{address.ip}", hint="give --range START,END")
    return str(start), str(end)


# ---------------------------------------------------------------- dnsmasq ---

def render_dnsmasq(cfg: BootServer) -> str:
    bios = BIOS_LOADERS[cfg.bios_loader]
    efi = EFI_LOADERS[cfg.efi_loader]
    lines = [
        "# generated by sysclone bootserver; rewritten by the next run",
        "port=0  # no DNS: DHCP and TFTP only",
        f"interface={cfg.interface}",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "log-dhcp",
        f"dhcp-leasefile={cfg.lease_file}",
        f"pid-file={cfg.pid_file}",
        "enable-tftp",
        f"tftp-root={cfg.tree}",
        "",
        "# the firmware, by DHCP option 93 (RFC 4578) and class",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        "dhcp-match=set:efihttp,option:client-arch,16",
        "dhcp-vendorclass=set:efihttp,HTTPClient",
        "dhcp-userclass=set:ipxe,iPXE",
    ]
    if cfg.user:
        lines.insert(2, f"user={cfg.user}")
    net = cfg.address.network
    if cfg.mode == "full":
        assert cfg.dhcp_range and cfg.image_server
        lines += ["", "# addresses",
                  f"dhcp-range={cfg.dhcp_range[0]},{cfg.dhcp_range[1]},{net.netmask},"
                  f"{cfg.lease_time}",
                  "dhcp-authoritative"]
        for h in cfg.hosts:
            lines.append("dhcp-host=" + ",".join(x for x in (h.mac, h.ip, h.name) if x))
        if cfg.router:
            lines.append(f"dhcp-option=option:router,{cfg.router}")
        if cfg.dns:
            lines.append(f"dhcp-option=option:dns-server,{','.join(cfg.dns)}")
        if cfg.domain:
            lines.append(f"dhcp-option=option:domain-name,{cfg.domain}")
        lines += ["", "# SystemImager's option 140: the image server, as text",
                  f'dhcp-option=140,"{cfg.image_server}"',
                  "", "# boot files"]
        # iPXE (QEMU's and many NICs' own ROM) gets boot.ipxe only from a
        # tree that has it; otherwise it boots by its firmware like any PXE
        # client (iPXE runs pxelinux and GRUB; no loop: neither is iPXE).
        not_ipxe = "tag:!ipxe," if "ipxe" in cfg.loaders else ""
        if "ipxe" in cfg.loaders:
            script = f"{cfg.http_base}{pxe.IPXE_SCRIPT}" if cfg.http_base else pxe.IPXE_SCRIPT
            lines.append(f"dhcp-boot=tag:ipxe,{script}")
        if cfg.http_base and "ipxe" in cfg.loaders:
            lines += ["dhcp-option-force=tag:efihttp,60,HTTPClient",
                      f"dhcp-boot=tag:!ipxe,tag:efihttp,{cfg.http_base}{pxe.IPXE_EFI}"]
        lines += [f"dhcp-boot={not_ipxe}tag:!efihttp,tag:efi64,{efi}",
                  f"dhcp-boot={not_ipxe}tag:!efihttp,tag:!efi64,{bios}"]
    else:
        lines += ["", "# proxy-DHCP: another server hands out the addresses",
                  f"dhcp-range={net.network_address},proxy,{net.netmask}",
                  'pxe-prompt="sysclone",0',
                  f'pxe-service=x86PC,"sysclone (BIOS)",{bios.removesuffix(".0")}',
                  f'pxe-service=BC_EFI,"sysclone (UEFI)",{efi}',
                  f'pxe-service=x86-64_EFI,"sysclone (UEFI)",{efi}']
    return "\n".join(lines) + "\n"


def run_dnsmasq(conf: Path, cfg: BootServer) -> int:
    """dnsmasq in the foreground with this configuration only, until
    SIGINT/SIGTERM; its log goes to stderr."""
    output(["dnsmasq", "--test", f"--conf-file={conf}"])
    cfg.lease_file.parent.mkdir(parents=True, exist_ok=True)
    proc = daemon(["dnsmasq", "--keep-in-foreground", "--log-facility=-",
                   f"--conf-file={conf}"], stdout=None, stderr=None)
    stop = {"sig": 0}

    def handler(signum: int, frame: Any) -> None:
        stop["sig"] = signum
        proc.terminate()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if stop["sig"]:
        return 0
    raise SyscloneError(f"dnsmasq exited with status {rc}",
                        hint="its messages are above; another DHCP server on "
                             f"{cfg.interface}? (ss -ulpn sport = :67)")


# -------------------------------------------------------------- ISC dhcpd ---

def render_dhcpd(cfg: BootServer) -> str:
    """A dhcpd.conf fragment with the same choices (SystemImager's
    mkdhcpserver wrote one like it): a subnet that hands out addresses, so
    full mode only."""
    if cfg.mode != "full" or cfg.image_server is None:
        raise ConfigError(_DHCPD_FULL_ONLY)
    net = cfg.address.network
    start, end = cfg.dhcp_range or _range(None, cfg.address)
    bios = BIOS_LOADERS[cfg.bios_loader]
    efi = EFI_LOADERS[cfg.efi_loader]
    script = f"{cfg.http_base}{pxe.IPXE_SCRIPT}" if cfg.http_base else pxe.IPXE_SCRIPT
    lines = [
        "# generated by sysclone bootserver: include it from dhcpd.conf",
        "option option-140 code 140 = text;  # SystemImager: the image server",
        "option arch code 93 = unsigned integer 16;  # RFC 4578: the firmware",
        "",
        f"subnet {net.network_address} netmask {net.netmask} {{",
        f"    range {start} {end};",
        f"    next-server {cfg.address.ip};",
        f'    option option-140 "{cfg.image_server}";',
    ]
    if cfg.router:
        lines.append(f"    option routers {cfg.router};")
    if cfg.dns:
        lines.append(f"    option domain-name-servers {', '.join(cfg.dns)};")
    if cfg.domain:
        lines.append(f'    option domain-name "{cfg.domain}";')
    # The first branch: "if", then each further one "elsif" (as in dnsmasq's
    # rules, iPXE gets boot.ipxe only from a tree that has it).
    branch = "if"
    if "ipxe" in cfg.loaders:
        lines += ['    if exists user-class and option user-class = "iPXE" {',
                  f'        filename "{script}";']
        branch = "} elsif"
    if cfg.http_base and "ipxe" in cfg.loaders:
        lines += ["    } elsif option arch = 00:10 {",
                  '        option vendor-class-identifier "HTTPClient";',
                  f'        filename "{cfg.http_base}{pxe.IPXE_EFI}";']
    lines += [
        f"    {branch} option arch = 00:07 or option arch = 00:09 {{",
        f'        filename "{efi}";',
        "    } else {",
        f'        filename "{bios}";',
        "    }",
    ]
    for i, h in enumerate(cfg.hosts):
        name = h.name or f"sysclone-{i}"
        body = [f"hardware ethernet {h.mac};"]
        if h.ip:
            body.append(f"fixed-address {h.ip};")
        if h.name:
            body.append(f'option host-name "{h.name}";')
        lines.append(f"    host {name} {{ {' '.join(body)} }}")
    lines.append("}")
    return "\n".join(lines) + "\n"

