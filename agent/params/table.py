"""The install-parameter table: every parameter the agent reads, declared once.

Parsing (kernel command line, local.cfg, DHCP, server config), the typed
`InstallParams` fields and the documentation are all derived from `PARAMS`.

Names:
- the canonical name is the 4.9 `si.` kernel parameter (sysclone's additions
  use the same prefix);
- aliases are older spellings recognized exactly as written: the 4.3 manual's
  upper-case VARIABLE names (IMAGESERVER, ...) and, for every 4.9 parameter,
  the early 4.9 `rd.sis.` prefix.  Aliases are deprecated on the kernel
  command line, except IMAGESERVER, IMAGENAME and HOSTNAME, which sysclone
  documents as first-class spellings; in a local.cfg the upper-case names
  are the native form;
- `var` is the local.cfg variable: the first upper-case alias, else the
  canonical name without `si.`, upper-cased, '-' as '_' (si.dl-protocol ->
  DL_PROTOCOL).  local.cfg accepts that, every upper-case alias and the
  canonical name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from agent.params.kinds import (
    SIMPLE_PARSERS,
    BadValue,
    Kind,
    Shape,
    parse_enum,
    parse_int,
)

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class DlProtocol(StrEnum):
    """How the image is transferred (si.dl-protocol)."""

    RSYNC = "rsync"
    NFS = "nfs"
    TORRENT = "torrent"
    FLAMETHROWER = "flamethrower"
    SSH = "ssh"
    DOCKER = "docker"

    @property
    def implemented(self) -> bool:
        """Whether sysclone can install with this protocol yet."""
        return self in SUPPORTED_PROTOCOLS


SUPPORTED_PROTOCOLS: frozenset[DlProtocol] = frozenset({DlProtocol.RSYNC})


class PostAction(StrEnum):
    """What the client does once installed (si.post-action)."""

    DIRECTBOOT = "directboot"
    REBOOT = "reboot"
    SHUTDOWN = "shutdown"
    POWEROFF = "poweroff"
    KEXEC = "kexec"
    SHELL = "shell"


class LuksUnlock(StrEnum):
    """How the installed system unlocks its LUKS volumes (si.luks-unlock)."""

    KEYFILE = "keyfile"
    CONSOLE = "console"


class InitrdPolicy(StrEnum):
    """Whether the installed system's initrd is rebuilt (si.initrd)."""

    AUTO = "auto"
    KEEP = "keep"
    REGENERATE = "regenerate"


SI_BREAK_STEPS: tuple[str, ...] = (
    "parse-localcfg", "network-infos", "ping", "download-scripts", "monitor", "deploy",
    "pre-install", "prepare-disks", "main-install", "download-image", "extract-image",
    "install-overrides", "install-configs", "configure-network", "boot-loader",
    "post-install", "se-linux", "umount-client", "terminate-transfer", "finished",
)
"""The 4.9 breakpoint names accepted by si.break; callers add their own."""


@dataclass(frozen=True)
class Alias:
    """Another name for a parameter, recognized exactly as spelled."""

    name: str
    deprecated: bool = True
    origin: str = "4.3"  # where the name comes from: 4.3, 4.9, rd.sis
    flag_value: str | None = None
    """For a legacy on/off switch that selects a value (BITTORRENT=y means
    si.dl-protocol=torrent): the value it selects when on; off sets nothing."""

    @property
    def is_variable(self) -> bool:
        """An upper-case shell-style name, usable in local.cfg."""
        return self.name.replace("_", "").isalnum() and self.name.isupper()


@dataclass(frozen=True)
class Param:
    name: str
    kind: Kind
    default: Any
    help: str
    aliases: tuple[Alias, ...] = ()
    shape: Shape = Shape.SCALAR
    choices: type[StrEnum] | None = None
    minimum: int | None = None
    maximum: int | None = None
    dhcp: tuple[int, ...] = ()
    """DHCP options that carry it, preferred first."""
    origin: str = "4.9"  # 4.9, 4.3 (manual only) or sysclone (our addition)
    field: str = ""
    """The InstallParams attribute; derived from the name unless given."""
    refused: str | None = None
    """For a parameter sysclone does not act on yet: what is missing, as
    the end of "si.x: ... is not supported by sysclone yet: <refused>".
    Such a parameter is accepted by the parsers (so its name is known and
    its value checked) and refused when resolved to anything but its
    default: it is never parsed and then silently ignored."""
    secret: bool = False
    """Its value is never shown (si.luks-key): listings print a placeholder."""

    def __post_init__(self) -> None:
        if not self.field:
            object.__setattr__(self, "field", _field_name(self.name))
        if self.origin == "4.9":
            early = Alias("rd.sis." + self.name.removeprefix("si."), origin="rd.sis")
            object.__setattr__(self, "aliases", (*self.aliases, early))

    @property
    def var(self) -> str:
        """The local.cfg variable name."""
        for alias in self.aliases:
            if alias.is_variable and alias.flag_value is None:
                return alias.name
        return self.derived_var

    @property
    def derived_var(self) -> str:
        return self.name.removeprefix("si.").upper().replace("-", "_").replace(".", "_")

    @property
    def multiple(self) -> bool:
        return self.shape is not Shape.SCALAR

    def asks_for_something(self, value: Any) -> bool:
        """Whether a value differs from the default: for a refused
        parameter, whether it must be refused (si.ssh-client=no asks for
        nothing sysclone lacks; si.ssh-client=yes does)."""
        return value != self.default

    def parse_item(self, raw: str) -> Any:
        """One value (or one list item) from text; raises BadValue."""
        if self.kind is Kind.INT:
            return parse_int(raw, self.minimum, self.maximum)
        if self.kind is Kind.ENUM:
            assert self.choices is not None, self.name
            return parse_enum(raw, self.choices)
        return SIMPLE_PARSERS[self.kind](raw)

    def parse(self, raw: str) -> Any:
        """The typed value of one occurrence: a tuple of items for lists and
        repeatables (split at commas), else a single value."""
        if not self.multiple:
            return self.parse_item(raw)
        items = [item.strip() for item in raw.split(",")]
        if not all(items):
            raise BadValue("has an empty item (write a,b,c)")
        if len(items) == 1:
            return (self.parse_item(items[0]),)
        values = []
        for item in items:
            try:
                values.append(self.parse_item(item))
            except BadValue as e:  # say which item, the message quotes them all
                raise BadValue(f"has {item!r}, which {e.reason}",
                               suggestion=e.suggestion) from None
        return tuple(values)

    def metavar(self) -> str:
        """How the value is written in the docs: HOST[:PORT], y|n, ..."""
        if self.kind is Kind.ENUM and self.choices is not None:
            return "|".join(str(c) for c in self.choices)
        base = _METAVARS[self.kind]
        if self.shape is Shape.LIST:
            return f"{base}[,{base}...]"
        return base

    def format_value(self, value: Any) -> str:
        """The text form of a typed value, as it would be written (a
        secret's as a placeholder)."""
        if value is None:
            return ""
        if self.secret:
            return "(secret)"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, tuple):
            return ",".join(self.format_value(v) for v in value)
        return str(value)


_METAVARS: dict[Kind, str] = {
    Kind.TEXT: "TEXT", Kind.NAME: "NAME", Kind.BOOL: "y|n", Kind.INT: "N",
    Kind.PORT: "PORT", Kind.ENUM: "CHOICE", Kind.HOST: "HOST", Kind.HOSTNAME: "NAME",
    Kind.HOSTPORT: "HOST[:PORT]", Kind.IP: "IP", Kind.NETMASK: "MASK", Kind.IFACE: "IFACE",
    Kind.URL: "URL", Kind.DISK: "DISK|RULE", Kind.STEP: "STEP",
}


def _field_name(name: str) -> str:
    return name.removeprefix("si.").replace("-", "_").replace(".", "_")


def _a(*names: str, origin: str = "4.3") -> tuple[Alias, ...]:
    return tuple(Alias(n, origin=origin) for n in names)


_NO_SSH = "SSH installs are not implemented; sysclone installs with rsync"


def _documented(name: str, origin: str = "4.3") -> tuple[Alias, ...]:
    """IMAGESERVER, IMAGENAME and HOSTNAME are the names sysclone's own docs
    and boot menus use: accepted without a deprecation warning."""
    return (Alias(name, deprecated=False, origin=origin),)


PARAMS: tuple[Param, ...] = (
    # -- where to install from and what ----------------------------------------------------------
    Param("si.image-server", Kind.HOSTPORT, None,
          "Image server, as host or host:port. A port given here is the server's HTTP API port "
          "and wins over si.server-port.",
          aliases=_documented("IMAGESERVER"), dhcp=(140, 100)),
    Param("si.config", Kind.NAME, None,
          "Name of a configuration file on the image server; its settings override every "
          "other source.",
          refused="configuration files on the server come with a later release; the server's "
                  "instructions can carry parameters meanwhile"),
    Param("si.image-name", Kind.NAME, None,
          "Image to install (default: chosen by the server from the host name).",
          aliases=_documented("IMAGENAME", origin="4.9")),
    Param("si.script-name", Kind.NAME, None,
          "An extra class of pre-/post-install scripts on the server: besides those named "
          "NNall.*, NN<image>.*, NN<base host name>.*, NN<group>.* and NN<host name>.*, "
          "the ones named NN<NAME>.* run, last. The install stops when no script has that "
          "name. (SystemImager named its main install script so; sysclone has none, its "
          "instructions take that place.)",
          aliases=_a("SCRIPTNAME", origin="4.9")),
    Param("si.disks-layout", Kind.NAME, None,
          "Disk layout file on the server (default: looked up like the script).",
          aliases=_a("DISKS_LAYOUT", origin="4.9")),
    Param("si.network-config", Kind.NAME, None,
          "Network configuration for the installed system: SystemImager's network-config "
          "XML (NICs, bonds, VLANs, aliases, IPv6, DNS) in the server's "
          "scripts/network-configs/NAME[.xml] (default: looked up by host name, group, base "
          "host name, image, then 'default'; none found: the install NIC only). Written in "
          "the image's own network style; what that style cannot express is refused before "
          "any disk is touched. The install NIC is added, as installed, when the file does "
          "not mention it."),
    Param("si.dl-protocol", Kind.ENUM, DlProtocol.RSYNC,
          "How the image is transferred. Only rsync is implemented by sysclone so far. "
          "When not given, si.ssh-download-url selects ssh and "
          "si.flamethrower-directory-portbase selects flamethrower, as in 4.9.",
          choices=DlProtocol,
          aliases=(Alias("BITTORRENT", flag_value=DlProtocol.TORRENT.value),)),
    Param("si.rsync-port", Kind.PORT, 873,
          "Port of the image server's rsync daemon.", origin="sysclone"),
    Param("si.server-port", Kind.PORT, 8181,
          "Port of the image server's HTTP API (install instructions and monitoring).",
          origin="sysclone"),
    Param("si.disk", Kind.DISK, (),
          "The disks to install on; the layout's disks map onto them in the order given "
          "(default: every disk that is not removable, read-only or in use, in name order). "
          "Each item is a disk (sda, nvme0n1, /dev/vdb; used even when removable or in use), "
          "a link to one (/dev/disk/by-id/..., /dev/disk/by-path/...), or a rule choosing, "
          "among the usable disks, those that meet all its conditions, joined by '+': "
          "size>=100G, size<=2T, size>100G, size<2T, size=400G..520G (G = GiB as lsblk "
          "prints, GB = 10^9), model=PATTERN, serial=PATTERN, wwn=PATTERN (shell patterns; "
          "quote one with spaces), bus=nvme|sata|sas|scsi|ata|virtio|usb|mmc, rotational=0|1; "
          "e.g. si.disk=bus=nvme+size>=100G,/dev/disk/by-id/wwn-0x5000c500a1b2c3d4. A rule "
          "matching no disk, or more disks than the layout uses, stops the install before "
          "any disk is written; the plan says why each disk was chosen or skipped.",
          shape=Shape.LIST, origin="sysclone", field="disks"),
    Param("si.dry-run", Kind.BOOL, False,
          "Show the install plan and the effective parameters, touch nothing.",
          origin="sysclone"),
    Param("si.luks-key", Kind.TEXT, None,
          "Key (passphrase) of the layout's LUKS volumes, all of them. Without it the agent "
          "fetches each volume's key from the image server (ROOT/scripts/luks-keys/, looked "
          "up by host name, base host name, image, then 'default'). Whoever can read the "
          "boot configuration can read it: prefer the server's key files, or a local.cfg "
          "only root can read. Never shown in listings.",
          origin="sysclone", secret=True),
    Param("si.luks-unlock", Kind.ENUM, LuksUnlock.KEYFILE,
          "How the installed system unlocks its LUKS volumes at boot: 'keyfile' stores the "
          "key in /etc/cryptsetup-keys.d and in the initrd, so it boots unattended (the key "
          "can then be read from /boot); 'console' asks for the passphrase on the console at "
          "every boot and stores no key.",
          choices=LuksUnlock, origin="sysclone"),
    # -- identity and install network -------------------------------------------------------------
    Param("si.hostname", Kind.HOSTNAME, None,
          "Host name of the installed machine (default: from DHCP or the server).",
          aliases=_documented("HOSTNAME"), dhcp=(12,), origin="4.3"),
    Param("si.domainname", Kind.HOSTNAME, None,
          "DNS domain name (default: from DHCP).",
          aliases=_a("DOMAINNAME"), dhcp=(15,), origin="4.3"),
    Param("si.install-iface", Kind.IFACE, None,
          "Network interface used for the install, by name or MAC (default: the one "
          "BOOTIF= names -- pxelinux's IPAPPEND 2 and sysclone's PXE entries add it -- "
          "else the first with a link).",
          aliases=_a("DEVICE")),
    Param("si.ip-address", Kind.IP, None,
          "Static IPv4 address of the install interface (default: DHCP). The installed "
          "system gets the same static addressing. Needs si.netmask (or si.network-address "
          "and si.broadcast); the other static settings are refused without it.",
          aliases=_a("IPADDR"), origin="4.3"),
    Param("si.netmask", Kind.NETMASK, None,
          "Netmask of the static address, dotted (255.255.255.0) or as a prefix length (24).",
          aliases=_a("NETMASK"), origin="4.3"),
    Param("si.network-address", Kind.IP, None,
          "Network address of the static address (10.0.0.0): checked against si.ip-address "
          "and si.netmask; with si.broadcast it gives the netmask when that is not set.",
          aliases=_a("NETWORK"), origin="4.3"),
    Param("si.broadcast", Kind.IP, None,
          "Broadcast address of the static address: checked against si.ip-address and "
          "si.netmask, and set on the interface.",
          aliases=_a("BROADCAST"), origin="4.3"),
    Param("si.gateway", Kind.IP, None,
          "Default router of the static address; it must be inside its network.",
          aliases=_a("GATEWAY"), origin="4.3"),
    Param("si.gateway-iface", Kind.IFACE, None,
          "Interface that reaches the default router. The agent configures only the install "
          "interface, so this must name it (by name or MAC); anything else is refused.",
          aliases=_a("GATEWAYDEV"), origin="4.3"),
    Param("si.dns-servers", Kind.IP, (),
          "DNS servers for the install (resolv.conf) and for a static install's network "
          "configuration. With DHCP they replace the servers the lease names, for the "
          "install only. SystemImager had no such setting: DNS came from DHCP.",
          shape=Shape.LIST, origin="sysclone"),
    Param("si.ether-sleep", Kind.INT, 0,
          "Seconds to wait after bringing the interface up, before talking to the network.",
          aliases=_a("ETHER_SLEEP"), minimum=0, maximum=3600, origin="4.3"),
    # -- monitoring and logging ------------------------------------------------------------------
    Param("si.monitor-server", Kind.HOST, None,
          "Monitor server to report progress to (setting it enables monitoring).",
          aliases=_a("MONITOR_SERVER", origin="4.9")),
    Param("si.monitor-port", Kind.PORT, 8181,
          "Port of the monitor server."),
    Param("si.monitor-console", Kind.BOOL, False,
          "Send the whole console output to the monitor.",
          aliases=_a("MONITOR_CONSOLE", origin="4.9"),
          refused="the monitor receives the agent's phases, progress and errors, not its "
                  "console"),
    Param("si.log-server", Kind.HOST, None,
          "Syslog server that also receives the agent's log, over UDP (default: none). "
          "Taken into use as soon as it is known, from DHCP or the server's instructions "
          "too.",
          aliases=_a("LOG_SERVER"), dhcp=(7,), origin="4.3"),
    Param("si.log-server-port", Kind.PORT, 514,
          "UDP port of the syslog server (si.log-server).",
          aliases=_a("LOG_SERVER_PORT"), dhcp=(141,)),
    # -- other transports (recognized, refused when asked for) -----------------------------------
    Param("si.ssh-client", Kind.BOOL, False,
          "Download through an SSH tunnel opened by the client.",
          aliases=_a("SSH", origin="4.9"), refused=_NO_SSH),
    Param("si.ssh-download-url", Kind.URL, None,
          "URL of the SSH keys/tunnel data for SSH installs.",
          aliases=_a("SSH_DOWNLOAD_URL", origin="4.9"), dhcp=(142,), refused=_NO_SSH),
    Param("si.ssh-server", Kind.BOOL, False,
          "Start an SSH server so the image server can push the install (si_pushinstall).",
          aliases=_a("SSHD", origin="4.9"),
          refused="the boot environment has no SSH server; the client pulls its install"),
    Param("si.ssh-user", Kind.NAME, None,
          "User on the image server for the SSH tunnel (4.9 used root when unset).",
          aliases=_a("SSH_USER"), refused=_NO_SSH),
    Param("si.flamethrower-directory-portbase", Kind.PORT, None,
          "Port where Flamethrower (multicast) advertises its directory (usually 9000).",
          aliases=_a("FLAMETHROWER_DIRECTORY_PORTBASE"), dhcp=(143,),
          refused="Flamethrower multicast installs are not implemented; sysclone installs "
                  "with rsync"),
    Param("si.tmpfs-staging", Kind.BOOL, False,
          "Spool the image into a tmpfs before writing it to disk (needs RAM+swap of twice "
          "the image).",
          aliases=_a("TMPFS_STAGING"), dhcp=(144,),
          refused="the image is always streamed straight to the disk; staging it in RAM is "
                  "not implemented"),
    # -- behaviour -------------------------------------------------------------------------------
    Param("si.skip-local-cfg", Kind.BOOL, False,
          "Ignore local.cfg files (only the kernel command line can ask for this).",
          aliases=_a("SKIP_LOCAL_CFG")),
    Param("si.post-action", Kind.ENUM, PostAction.REBOOT,
          "What to do once installed: reboot (directboot and kexec reboot too, sysclone has "
          "no kexec), poweroff (or shutdown), or a shell on the console.",
          choices=PostAction),
    Param("si.initrd", Kind.ENUM, InitrdPolicy.AUTO,
          "The installed system's initrd: 'auto' keeps the image's own when it provably "
          "boots this machine (one per kernel, built generic, holding the root filesystem's, "
          "disk controllers' and md/LVM/LUKS modules and tools this layout needs, naming no "
          "old disk) and regenerates it with the image's tool otherwise; 'keep' and "
          "'regenerate' force the choice. The agent reports which and why.",
          choices=InitrdPolicy, origin="sysclone"),
    Param("si.term", Kind.TEXT, None,
          "TERM for the shells the agent opens (si.break) and the commands it runs "
          "(default: the boot environment's, linux)."),
    Param("si.selinux-relabel", Kind.BOOL, True,
          "When the image has SELinux enabled, have the installed system relabel its files "
          "on first boot (/.autorelabel); no means leave the labels rsync copied."),
    Param("si.debug", Kind.BOOL, False,
          "Debug messages on the console too (the agent's log file always has them)."),
    Param("si.break", Kind.STEP, (),
          "Drop to a shell before this step; repeat it (or use commas) for several steps. "
          "parse-localcfg stops before local.cfg is read (kernel command line only).",
          shape=Shape.REPEATABLE, field="breaks"),
)


def _index() -> tuple[dict[str, Param], dict[str, tuple[Param, Alias | None]],
                      dict[str, tuple[Param, Alias | None]]]:
    by_name = {p.name: p for p in PARAMS}
    cmdline: dict[str, tuple[Param, Alias | None]] = {}
    local: dict[str, tuple[Param, Alias | None]] = {}

    def add(table: dict[str, tuple[Param, Alias | None]], key: str, p: Param,
            alias: Alias | None) -> None:
        other = table.get(key)
        if other is not None and other[0] is not p:
            raise AssertionError(f"{key} names both {other[0].name} and {p.name}")
        table.setdefault(key, (p, alias))

    for p in PARAMS:
        add(cmdline, p.name, p, None)
        add(local, p.name, p, None)
        add(local, p.derived_var, p, None)
        for alias in p.aliases:
            add(cmdline, alias.name, p, alias)
            if alias.is_variable:
                add(local, alias.name, p, alias)
    return by_name, cmdline, local


_BY_NAME, _CMDLINE_KEYS, _LOCAL_KEYS = _index()

BY_NAME: MappingProxyType[str, Param] = MappingProxyType(_BY_NAME)
"""Canonical name -> parameter."""
CMDLINE_KEYS: MappingProxyType[str, tuple[Param, Alias | None]] = MappingProxyType(_CMDLINE_KEYS)
"""Every name recognized on the kernel command line (canonical and aliases)."""
LOCAL_KEYS: MappingProxyType[str, tuple[Param, Alias | None]] = MappingProxyType(_LOCAL_KEYS)
"""Every name recognized in local.cfg and server config files."""


def param(name: str) -> Param:
    """The parameter with this canonical name (KeyError otherwise)."""
    return _BY_NAME[name]
