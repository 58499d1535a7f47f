"""Merging layers into the effective, typed install parameters.

Precedence, lowest first (SystemImager's rules, see Source): defaults <
DHCP < kernel command line < local.cfg in the initrd < local.cfg on the
boot medium < server config.  A scalar
takes its value from the highest layer that sets it; a repeatable
(si.break) collects the values of every layer.  si.skip-local-cfg, from
the kernel command line, drops the local.cfg layers.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from agent.params.kinds import HostPort, IPAddress, Shape
from agent.params.layers import Layer, Setting, Source, bad_value, defaults_layer
from agent.params.table import (
    PARAMS,
    SI_BREAK_STEPS,
    SUPPORTED_PROTOCOLS,
    DlProtocol,
    InitrdPolicy,
    LuksUnlock,
    PostAction,
    param,
)
from sysclone.errors import ConfigError

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent.storage.diskspec import DiskSpec


@dataclass(frozen=True, kw_only=True, slots=True)
class InstallParams:
    """The effective install parameters, one typed field per table entry
    (no defaults here: resolve() fills every field from the table)."""

    # where to install from and what
    image_server: HostPort | None
    config: str | None
    image_name: str | None
    script_name: str | None
    disks_layout: str | None
    network_config: str | None
    dl_protocol: DlProtocol
    rsync_port: int
    server_port: int
    disks: tuple[DiskSpec, ...]
    dry_run: bool
    luks_key: str | None
    luks_unlock: LuksUnlock
    # identity and install network
    hostname: str | None
    domainname: str | None
    install_iface: str | None
    ip_address: IPAddress | None
    netmask: int | None  # prefix length
    network_address: IPAddress | None
    broadcast: IPAddress | None
    gateway: IPAddress | None
    gateway_iface: str | None
    dns_servers: tuple[IPAddress, ...]
    ether_sleep: int
    # monitoring and logging
    monitor_server: str | None
    monitor_port: int
    monitor_console: bool
    log_server: str | None
    log_server_port: int
    # other transports
    ssh_client: bool
    ssh_download_url: str | None
    ssh_server: bool
    ssh_user: str | None
    flamethrower_directory_portbase: int | None
    tmpfs_staging: bool
    # behaviour
    skip_local_cfg: bool
    post_action: PostAction
    initrd: InitrdPolicy
    term: str | None
    selinux_relabel: bool
    debug: bool
    breaks: tuple[str, ...]

    @property
    def api_port(self) -> int:
        """The image server's HTTP API port: the port written in
        si.image-server if any, else si.server-port."""
        if self.image_server is not None and self.image_server.port is not None:
            return self.image_server.port
        return self.server_port

    @property
    def static_ip(self) -> bool:
        """Whether a static address was given (else: DHCP)."""
        return self.ip_address is not None

    def breaks_at(self, step: str) -> bool:
        return step in self.breaks

    def to_dict(self) -> dict[str, Any]:
        """Canonical name -> JSON-friendly value (None when unset; a secret's
        placeholder when set)."""
        return {p.name: p.format_value(getattr(self, p.field)) if p.secret
                and getattr(self, p.field) is not None else _jsonable(getattr(self, p.field))
                for p in PARAMS}

    @classmethod
    def defaults(cls) -> InstallParams:
        return resolve(()).params


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class Resolved:
    """The effective parameters and where each came from."""

    params: InstallParams
    effective: Mapping[str, tuple[Setting, ...]]
    """Canonical name -> the winning setting (all of them for a repeatable);
    () when unset."""
    shadowed: Mapping[str, tuple[Setting, ...]]
    """Canonical name -> settings of lower layers that lost, lowest first."""
    layers: tuple[Layer, ...]
    """The layers used, lowest precedence first, the defaults included."""
    skipped: tuple[Layer, ...]
    """Layers given but not used (local.cfg under si.skip-local-cfg)."""
    warnings: tuple[str, ...]

    def setting(self, name: str) -> Setting | None:
        """The winning setting of a parameter (the last one for a repeatable)."""
        found = self.effective.get(name)
        return found[-1] if found else None

    def given(self, name: str) -> bool:
        """Whether some source set the parameter, rather than its default."""
        s = self.setting(name)
        return s is not None and s.source is not Source.DEFAULT

    def origin(self, name: str) -> str:
        """Where a parameter's value came from: 'default', 'kernel command
        line', 'local.cfg at /local.cfg, line 3 (as IMAGESERVER)', or 'unset'."""
        found = self.effective.get(name)
        if not found:
            return "unset"
        return "; ".join(dict.fromkeys(s.describe() for s in found))

    def require_supported(self) -> None:
        """ConfigError for the first parameter that asks for something
        sysclone does not do yet (Param.refused), then for the protocol.
        Called as soon as parameters are resolved, before any phase, so a
        parameter is never parsed and then silently ignored."""
        for p in PARAMS:
            if p.refused is None:
                continue
            found = self.effective.get(p.name, ())
            if not found or not p.asks_for_something(found[-1].value):
                continue
            s = found[-1]
            raise ConfigError(
                f"{s.key if s.key == p.name else f'{s.key} ({p.name})'}: "
                f"{p.format_value(s.value)!r} is not supported by sysclone yet: {p.refused} "
                f"({s.describe()})",
                hint=f"remove {s.key} (sysclone params lists what is supported)",
                parameter=p.name, value=s.raw, source=s.describe())
        self.require_supported_protocol()

    def require_supported_protocol(self) -> DlProtocol:
        """The download protocol, or ConfigError when sysclone cannot do it yet."""
        protocol = self.params.dl_protocol
        if protocol in SUPPORTED_PROTOCOLS:
            return protocol
        p = param("si.dl-protocol")
        supported = ", ".join(sorted(str(s) for s in SUPPORTED_PROTOCOLS))
        raise ConfigError(
            f"si.dl-protocol: {str(protocol)!r} is not implemented by sysclone yet "
            f"(supported: {supported}) ({self.origin(p.name)})",
            hint=f"boot with {p.name}=rsync", parameter=p.name, value=str(protocol),
            source=self.origin(p.name))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Canonical name -> {"value": ..., "from": ...} for every parameter,
        for a dry run's report."""
        values = self.params.to_dict()
        return {p.name: {"value": values[p.name], "from": self.origin(p.name)} for p in PARAMS}

    def explain(self, *, show_defaults: bool = True, show_unset: bool = False) -> str:
        """A table of the effective parameters, their values and origins,
        with the values they overrode; then skipped layers and warnings."""
        order = " < ".join(dict.fromkeys(s.label for s in Source))
        rows: list[tuple[str, str, str]] = []
        for p in PARAMS:
            found = self.effective.get(p.name, ())
            if not found:
                if show_unset:
                    rows.append((p.name, "-", "unset"))
                continue
            if found[0].source is Source.DEFAULT and not show_defaults:
                continue
            for i, s in enumerate(found):
                origin = s.describe()
                if i == len(found) - 1 and p.shape is not Shape.REPEATABLE:
                    lost = [f"{p.format_value(o.value)} from {o.describe()}"
                            for o in reversed(self.shadowed.get(p.name, ()))
                            if o.source is not Source.DEFAULT]
                    if lost:
                        origin += "; overrides " + ", ".join(lost)
                rows.append((p.name if i == 0 else "", p.format_value(s.value), origin))
        width_name = max((len(r[0]) for r in rows), default=0)
        width_value = max((len(r[1]) for r in rows), default=0)
        lines = [f"Install parameters (precedence, lowest first: {order})"]
        lines += [f"  {n:<{width_name}}  {v:<{width_value}}  {o}".rstrip() for n, v, o in rows]
        for layer in self.skipped:
            lines.append(f"skipped: {layer.name} (si.skip-local-cfg is set)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def local_cfg_skipped(layers: Iterable[Layer]) -> bool:
    """Whether si.skip-local-cfg is on, as decided by the layers below the
    local.cfg ones (DHCP, kernel command line).  The agent asks this before
    looking for local.cfg files at all."""
    skip = False
    for layer in sorted(layers, key=lambda la: la.source):
        if layer.source < Source.LOCAL_CFG_INITRD:
            value = layer.value("si.skip-local-cfg")
            if value is not None:
                skip = bool(value)
    return skip


def resolve(layers: Iterable[Layer], *, break_steps: Collection[str] = ()) -> Resolved:
    """Merge layers (in any order: they are sorted by Source, keeping the
    given order among layers of the same Source) over the defaults.

    break_steps: step names valid for si.break besides SystemImager's
    (SI_BREAK_STEPS), such as sysclone's own phase names.  An unknown step,
    or si.skip-local-cfg given where it cannot work, is reported here."""
    given = sorted(layers, key=lambda la: la.source)
    skip = local_cfg_skipped(given)
    used = [defaults_layer(), *(la for la in given if not (skip and la.source.is_local_cfg))]
    skipped = tuple(la for la in given if skip and la.source.is_local_cfg)
    warnings: list[str] = []
    for layer in used:
        warnings.extend(w for w in layer.warnings if w not in warnings)

    effective: dict[str, tuple[Setting, ...]] = {}
    shadowed: dict[str, tuple[Setting, ...]] = {}
    for p in PARAMS:
        settings: list[Setting] = []
        for layer in used:
            found = layer.settings.get(p.name, ())
            if found and p.name == "si.skip-local-cfg" and layer.source >= Source.LOCAL_CFG_INITRD:
                warnings.append(f"{found[-1].where}: {found[-1].key} has no effect here; "
                                "set si.skip-local-cfg on the kernel command line")
                continue
            settings.extend(found)
        if p.shape is Shape.REPEATABLE:
            seen: dict[Any, Setting] = {}
            for s in settings:
                seen.setdefault(s.value, s)
            effective[p.name] = tuple(seen.values())
            shadowed[p.name] = tuple(s for s in settings if seen[s.value] is not s)
        elif settings:
            effective[p.name] = (settings[-1],)
            shadowed[p.name] = tuple(settings[:-1])
        else:
            effective[p.name] = ()
            shadowed[p.name] = ()

    _derive_protocol(effective, shadowed)
    _check_breaks(effective.get("si.break", ()), break_steps)

    values: dict[str, Any] = {}
    for p in PARAMS:
        found = effective[p.name]
        if p.shape is Shape.REPEATABLE:
            values[p.field] = tuple(s.value for s in found)
        else:
            values[p.field] = found[-1].value if found else p.default
    return Resolved(
        params=InstallParams(**values),
        effective=MappingProxyType(effective),
        shadowed=MappingProxyType(shadowed),
        layers=tuple(used),
        skipped=skipped,
        warnings=tuple(warnings),
    )


def _derive_protocol(effective: dict[str, tuple[Setting, ...]],
                     shadowed: dict[str, tuple[Setting, ...]]) -> None:
    """As in 4.9: with no si.dl-protocol given, an SSH download URL means ssh
    and a Flamethrower port base means flamethrower."""
    current = effective["si.dl-protocol"]
    if current and current[-1].source is not Source.DEFAULT:
        return
    for trigger_name, protocol in (("si.ssh-download-url", DlProtocol.SSH),
                                   ("si.flamethrower-directory-portbase",
                                    DlProtocol.FLAMETHROWER)):
        trigger = effective[trigger_name]
        if trigger:
            t = trigger[-1]
            detail = ", ".join(filter(None, [t.detail, f"implied by {t.key}"]))
            derived = Setting(param("si.dl-protocol"), protocol, str(protocol),
                              "si.dl-protocol", t.source, t.layer, detail)
            shadowed["si.dl-protocol"] = (*shadowed["si.dl-protocol"], *current)
            effective["si.dl-protocol"] = (derived,)
            return


def _check_breaks(settings: tuple[Setting, ...], extra: Collection[str]) -> None:
    valid = dict.fromkeys([*SI_BREAK_STEPS, *extra])
    for s in settings:
        if s.value in valid:
            continue
        from difflib import get_close_matches  # only for a value it refuses

        close = get_close_matches(s.value, list(valid), n=1)
        raise bad_value(s.key, s.param, s.value, "is not a step of the install", s.where,
                        close[0] if close else None, hint="steps: " + ", ".join(valid))
