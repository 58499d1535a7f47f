"""Bringing the install network up: pick the NIC, raise the link, get an
address by DHCP (pyroute2's client) or from static install parameters.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)

ARPHRD_ETHER = "1"
# Where the kernel and the resolver are; module attributes so that tests can
# point the whole network phase at a fake tree.
SYSFS = Path("/sys")
RESOLV_CONF = Path("/etc/resolv.conf")

# DHCP options asked for: the lease's basics, host and domain name, log
# server, and SystemImager's private options (140 image server, 141 log
# server port, 142 SSH download URL, 143 Flamethrower port base); servers
# only send what is asked for.
REQUESTED_OPTIONS = (1, 3, 6, 7, 12, 15, 28, 51, 58, 59, 140, 141, 142, 143, 144)
ARPHRD_INFINIBAND = "32"
# domain:bus:device.function; a USB NIC's device is an interface like 2-1:1.0.
_PCI_SLOT = re.compile(r"^[0-9a-f]{4,}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


class NetworkError(SyscloneError):
    pass


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str
    driver: str | None
    pci_slot: str | None

    @property
    def bootif(self) -> str:
        """The form pxelinux's IPAPPEND 2 uses: BOOTIF=01-52-54-00-12-34-56."""
        return "01-" + self.mac.replace(":", "-")


@dataclass(frozen=True)
class NetConfig:
    """The address the install runs with, however it was obtained."""

    nic: Nic
    method: str  # dhcp | static
    address: str
    prefixlen: int
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    broadcast: str | None = None  # static only: DHCP's is left to the kernel's default
    server_id: str | None = None  # the DHCP server
    next_server: str | None = None  # siaddr: where PXE files came from
    options: dict[int | str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"iface": self.nic.name, "mac": self.nic.mac, "method": self.method,
                "address": f"{self.address}/{self.prefixlen}", "gateway": self.gateway,
                "dns": list(self.dns), "domain": self.domain}


def _read(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def list_nics(sysfs: Path | None = None) -> list[Nic]:
    """Physical network interfaces (those backed by a device), sorted by name."""
    nics: list[Nic] = []
    base = (sysfs or SYSFS) / "class/net"
    if not base.is_dir():
        return nics
    for d in sorted(base.iterdir()):
        dev = d / "device"
        if not dev.exists() or _read(d / "type") not in (ARPHRD_ETHER, ARPHRD_INFINIBAND):
            continue
        drv = dev / "driver"
        driver = drv.resolve().name if drv.exists() else None
        # virtio NICs sit below their PCI function: device -> virtioN, parent is PCI.
        pci = dev.resolve()
        slot = pci.parent.name if pci.name.startswith("virtio") else pci.name
        nics.append(Nic(d.name, _read(d / "address").lower(), driver,
                        slot if _PCI_SLOT.match(slot) else None))
    return nics


def choose_nic(nics: list[Nic], wanted: str | None, bootif: str | None,
               carrier: Callable[[Nic], bool]) -> Nic:
    """The install NIC: the one asked for (name or MAC), else the one PXE booted
    from (BOOTIF), else the first with a link."""
    if not nics:
        raise NetworkError("no network interface found",
                           hint="the boot environment may lack the driver for this NIC")
    if wanted:
        for n in nics:
            if wanted in (n.name, n.mac) or wanted.lower() == n.mac:
                return n
        raise NetworkError(f"si.install-iface={wanted}: no such interface",
                           hint="found " + ", ".join(f"{n.name} ({n.mac})" for n in nics))
    if bootif:
        for n in nics:
            if n.bootif == bootif.lower():
                return n
        log.warning("BOOTIF=%s names no interface of this machine (%s): the first with a "
                    "link is used", bootif, ", ".join(f"{n.name} {n.mac}" for n in nics))
    for n in nics:
        if carrier(n):
            return n
    return nics[0]


def has_carrier(nic: Nic, sysfs: Path | None = None) -> bool:
    return _read((sysfs or SYSFS) / "class/net" / nic.name / "carrier") == "1"


def link_up(nic: Nic, wait: float = 10.0) -> None:
    """Set the link up and wait (bounded) for carrier."""
    with _iproute()() as ipr:
        idx = ipr.link_lookup(ifname=nic.name)
        if not idx:
            raise NetworkError(f"interface {nic.name} vanished")
        ipr.link("set", index=idx[0], state="up")
        lo = ipr.link_lookup(ifname="lo")
        if lo:
            ipr.link("set", index=lo[0], state="up")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not has_carrier(nic):
        time.sleep(0.1)


def static_config(nic: Nic, address: str, netmask: str | None, gateway: str | None,
                  dns: tuple[str, ...] = (), *, broadcast: str | None = None,
                  domain: str | None = None) -> NetConfig:
    """Configure a static address (the install parameters were checked as a
    whole by agent.params.static before any phase)."""
    from ipaddress import IPv4Interface

    try:
        iface = IPv4Interface(f"{address}/{netmask}" if netmask and "/" not in address
                              else address)
    except ValueError as e:
        raise NetworkError(f"IPADDR/NETMASK: {e}") from None
    cfg = NetConfig(nic, "static", str(iface.ip), iface.network.prefixlen, gateway, dns,
                    domain, broadcast)
    apply(cfg)
    return cfg


def dhcp(nic: Nic, timeout: float, hostname: str | None = None) -> NetConfig:
    """Get a lease with pyroute2's DHCP client and configure it; the address
    is kept (no RELEASE) for the rest of the install."""
    # Imported here: a static-address install never needs asyncio (a fifth
    # of the agent's imports before its first phase, natively).
    import asyncio

    try:
        cfg = asyncio.run(_dhcp(nic, timeout, hostname))
    except TimeoutError:
        raise NetworkError(f"no DHCP answer on {nic.name} within {timeout:.0f}s",
                           hint="check the DHCP server, or pass IPADDR/NETMASK/GATEWAY") from None
    apply(cfg)
    return cfg


def apply(cfg: NetConfig) -> None:
    """Put the address and default route on the interface.  Done here rather
    than in the DHCP client's hooks, which run after BOUND is signalled and
    could still be in flight when the client is shut down."""
    with _iproute()() as ipr:
        idx = ipr.link_lookup(ifname=cfg.nic.name)[0]
        extra = {"broadcast": cfg.broadcast} if cfg.broadcast else {}
        ipr.addr("replace", index=idx, address=cfg.address, prefixlen=cfg.prefixlen, **extra)
        if cfg.gateway:
            ipr.route("replace", dst="0.0.0.0/0", gateway=cfg.gateway, oif=idx)


def _iproute() -> Any:
    """pyroute2's IPRoute class (a function, so tests can put a fake here)."""
    from agent import pyroute2_light

    return pyroute2_light.iproute()


async def _dhcp(nic: Nic, timeout: float, hostname: str | None) -> NetConfig:
    from agent import pyroute2_light

    pyroute2_light.register()
    from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
    from pyroute2.dhcp.fsm import State
    from pyroute2.dhcp.leases import Lease

    class MemoryLease(Lease):
        """The lease lives as long as the install; nothing to persist."""

        def dump(self) -> None:
            pass

        @classmethod
        def load(cls, interface: str) -> None:
            return None

    from pyroute2.dhcp.enums.dhcp import Option

    cfg = ClientConfig(
        interface=nic.name, lease_type=MemoryLease,
        requested_parameters=tuple(Option(n) for n in REQUESTED_OPTIONS),
        hooks=(),
        release=False, handle_signals=False, vendor_id="sysclone",
        host_name=hostname,
    )
    async with AsyncDHCPClient(cfg) as client:
        await client.bootstrap()
        await client.wait_for_state(State.BOUND, timeout=timeout)
        lease = client.lease
        if lease is None:
            raise NetworkError(f"DHCP on {nic.name} ended without a lease")
    return _from_lease(nic, lease)


def _opt(lease: Any, name: str) -> Any:
    try:
        return getattr(lease, name)
    except LookupError:
        return None


def _from_lease(nic: Nic, lease: Any) -> NetConfig:
    ack = lease.ack
    routers = _opt(lease, "routers") or []
    siaddr = ack.get("siaddr")
    return NetConfig(
        nic=nic, method="dhcp", address=lease.ip, prefixlen=lease.prefixlen,
        gateway=routers[0] if routers else None,
        dns=tuple(_opt(lease, "name_servers") or ()),
        domain=_opt(lease, "domain_name"),
        server_id=_opt(lease, "server_id"),
        next_server=siaddr if siaddr and siaddr != "0.0.0.0" else None,
        options=_options_by_number(ack.get("options") or {}),
    )


def _options_by_number(options: dict[str, Any]) -> dict[int | str, Any]:
    """pyroute2 names the options it decodes; the parameter table wants
    their numbers (12 host name, 140 image server...)."""
    from agent import pyroute2_light

    pyroute2_light.register()
    from pyroute2.dhcp.enums.dhcp import Option

    out: dict[int | str, Any] = {}
    for k, v in options.items():
        name = str(k)
        if isinstance(k, int):
            number = k
        elif name.upper() in Option.__members__:
            number = Option[name.upper()].value
        elif name.startswith("option") and name[6:].isdigit():
            number = int(name[6:])
        else:
            continue
        out[number] = _option_value(number, v)
    return out


def _option_value(number: int, value: Any) -> Any:
    """Options pyroute2 cannot decode arrive as a list of byte values.  The
    image server (140) may be sent as text or as a 4-byte address."""
    if isinstance(value, list) and all(isinstance(b, int) for b in value):
        raw = bytes(value)
        if number == 140 and len(raw) == 4 and not all(32 < b < 127 for b in raw):
            return ".".join(str(b) for b in raw)
        return raw
    if isinstance(value, list) and all(isinstance(a, str) for a in value):
        # Address lists (3 routers, 7 log servers): the parameter table reads text.
        return ",".join(value)
    return value


def write_resolv_conf(cfg: NetConfig, path: Path | None = None) -> None:
    """The install's resolver: the lease's (or the static si.dns-servers)
    name servers and search domain.  Left alone when there are none."""
    lines = [f"search {cfg.domain}"] if cfg.domain else []
    lines += [f"nameserver {d}" for d in cfg.dns]
    if lines:
        (path or RESOLV_CONF).write_text("\n".join(lines) + "\n")
