"""A boot-server tree: what a TFTP (or HTTP) server hands to machines that
boot from the network, for every kind of firmware.

    pxelinux.0 ldlinux.c32     BIOS PXE (pxelinux)
    pxelinux.cfg/default       its install entry; /01-<mac>, /<IP hex> per client
    bootx64.efi grubx64.efi    UEFI PXE: Debian's signed shim, then signed GRUB
    mmx64.efi                  (netboot image), which reads
    grub/grub.cfg              its install entry; grub.cfg-01-<mac>, -<IP hex>
    ipxe.efi undionly.kpxe     iPXE for UEFI (HTTP boot too) and BIOS, which
    boot.ipxe                  runs this: ipxe/01-<mac>.ipxe, ipxe/<ip>.ipxe,
    ipxe/default.ipxe          else the default
    kernel initrd.img          the boot environment
    sysclone-pxe.json          what the tree holds: the default install
                               parameters, the loaders, each client's entry

A client's own entry either installs (with its own parameters) or boots the
local disk.  `imageserver.netboot` switches a client to the local disk once
it reported a finished install (SystemImager's netbootmond), so a machine
left on network boot does not install again and again; `sysclone clients
reinstall NAME` switches it back.  Entries are rewritten under a lock and
each file by rename: a client booting meanwhile reads the old or the new.

IPAPPEND 2 (pxelinux), and BOOTIF= on the GRUB and iPXE lines, tell the
agent which NIC the machine booted from.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mkmedia import bootfiles, menus
from mkmedia.clientkeys import ClientKey, mac_key, parse_selector
from sysclone.errors import ConfigError, SyscloneError

PXELINUX = Path("/usr/lib/PXELINUX/pxelinux.0")
SYSLINUX_BIOS = Path("/usr/lib/syslinux/modules/bios")
MODULES = ("ldlinux.c32",)
LOADERS = ("pxelinux", "grub", "ipxe")
META = "sysclone-pxe.json"
LOCK = ".sysclone-pxe.lock"
MODES = ("install", "local")

# Boot files handed out by DHCP, per firmware (imageserver.bootserver).
BIOS_BOOTFILE = "pxelinux.0"
EFI_BOOTFILE = "bootx64.efi"
IPXE_EFI = "ipxe.efi"
IPXE_BIOS = "undionly.kpxe"
IPXE_SCRIPT = "boot.ipxe"
# Each loader's files in the tree, as the firmware (or the loader before it)
# asks for them: a rebuild without a loader removes these, and only these.
LOADER_FILES = {
    "pxelinux": (BIOS_BOOTFILE, *MODULES),
    "grub": (EFI_BOOTFILE, "grubx64.efi", "mmx64.efi"),  # shim, GRUB, MokManager
    "ipxe": (IPXE_EFI, IPXE_BIOS),
}


@dataclass(frozen=True)
class PxeSpec:
    kernel: Path
    initrd: Path
    append: str  # install parameters and kernel options
    label: str = "sysclone"
    timeout_ds: int = 0  # tenths of a second at the prompt; 0 = boot at once


@dataclass(frozen=True)
class ClientEntry:
    """One client's (or subnet's) own entry."""

    key: str  # pxelinux's name for it: 01-<mac> or IP hex
    mode: str = "install"  # install | local
    append: str | None = None  # its whole kernel command line; None: the default's
    name: str | None = None  # its host name, when known
    auto: bool = False  # made by the switch after an install, not by a person

    def __post_init__(self) -> None:
        parse_selector(self.key)  # a key read back from the file is checked too
        if self.mode not in MODES:
            raise ConfigError(f"client {self.key}: mode {self.mode!r} is not install or local")


@dataclass(frozen=True)
class TreeInfo:
    """sysclone-pxe.json: how the tree was made and its clients' entries."""

    append: str
    loaders: tuple[str, ...] = LOADERS
    switch: bool = True  # local boot after a finished install
    timeout: int = 0  # seconds at the menu
    clients: dict[str, ClientEntry] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["loaders"] = list(self.loaders)
        d["clients"] = {k: asdict(c) for k, c in sorted(self.clients.items())}
        return json.dumps({"format": 1, **d}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> TreeInfo:
        try:
            d = json.loads(text)
            clients = {k: ClientEntry(**c) for k, c in (d.get("clients") or {}).items()}
            loaders = tuple(d.get("loaders") or ())
            unknown = [x for x in loaders if x not in LOADERS]
            if unknown:
                raise ValueError(f"unknown loader {unknown[0]!r}")
            return cls(str(d["append"]), loaders, bool(d.get("switch", True)),
                       int(d.get("timeout", 0)), clients)
        except (ValueError, KeyError, TypeError) as e:
            raise SyscloneError(f"{where} is not a sysclone PXE tree description: {e}",
                                hint="rewrite the tree with `sysclone media pxe`") from None


# ------------------------------------------------------------- compat API ---

def render_config(spec: PxeSpec) -> str:
    return menus.syslinux_cfg(menus.Install("kernel", ("initrd.img",), spec.append),
                              timeout_ds=spec.timeout_ds, ipappend=True, label=spec.label)


def mac_config_name(mac: str) -> str:
    return mac_key(mac).name


def write_tree(out: Path, spec: PxeSpec, per_mac: dict[str, str] | None = None) -> Path:
    """Write (or refresh) a pxelinux-only tree; `per_mac` maps MACs to their
    own APPEND.  (The demo's and the tests' trees: no switching.)"""
    clients = [ClientEntry(mac_key(m).name, append=a) for m, a in (per_mac or {}).items()]
    return build_tree(out, spec.kernel, spec.initrd,
                      TreeInfo(spec.append, ("pxelinux",), switch=False,
                               timeout=spec.timeout_ds // 10),
                      clients, label=spec.label)


# --------------------------------------------------------------- the tree ---

def _loader_files(loaders: Iterable[str]) -> list[tuple[Path, str]]:
    """(host file, name in the tree) of each loader; one error for all that
    are missing."""
    out: list[tuple[Path, str]] = []
    if "pxelinux" in loaders:
        pxelinux = list(zip((PXELINUX, *(SYSLINUX_BIOS / m for m in MODULES)),
                            LOADER_FILES["pxelinux"], strict=True))
        for f, _ in pxelinux:
            if not f.is_file():
                raise SyscloneError(f"{f} not found", hint="apt install pxelinux syslinux-common")
        out += pxelinux
    wanted: list[tuple[bootfiles.HostFile, str]] = []
    if "grub" in loaders:
        # shim is what the firmware runs; it fetches grubx64.efi (the netboot
        # image, whatever its Debian name) from the same directory.
        wanted += zip((bootfiles.SHIM, bootfiles.GRUB_EFI_NET, bootfiles.MOKMANAGER),
                      LOADER_FILES["grub"], strict=True)
    if "ipxe" in loaders:
        wanted += zip((bootfiles.IPXE_EFI, bootfiles.IPXE_BIOS), LOADER_FILES["ipxe"],
                      strict=True)
    paths = bootfiles.require(*(f for f, _ in wanted))
    return out + [(p, name) for p, (_, name) in zip(paths, wanted, strict=True)]


def _install(append: str) -> menus.Install:
    return menus.Install("kernel", ("initrd.img",), append)


def _files_for_default(info: TreeInfo, label: str) -> dict[str, str]:
    entry = _install(info.append)
    files: dict[str, str] = {}
    if "pxelinux" in info.loaders:
        files["pxelinux.cfg/default"] = menus.syslinux_cfg(
            entry, timeout_ds=info.timeout * 10, ipappend=True, label=label)
    if "grub" in info.loaders:
        files["grub/grub.cfg"] = menus.grub_cfg(
            menus.Install("/kernel", ("/initrd.img",), info.append), timeout=info.timeout,
            net=True, net_search=True)
    if "ipxe" in info.loaders:
        files[IPXE_SCRIPT] = (
            "#!ipxe\n" + menus.HEADER + "\n"
            "# this client's own script by MAC, then by address, else the default\n"
            "chain --autofree ipxe/01-${netX/mac:hexhyp}.ipxe || "
            "chain --autofree ipxe/${ip:hexraw}.ipxe || chain --autofree ipxe/default.ipxe\n")
        files["ipxe/default.ipxe"] = menus.ipxe_script(entry, base="../")
    return files


def client_files(info: TreeInfo, c: ClientEntry, label: str = "sysclone") -> dict[str, str]:
    """The files of one client's entry, by path in the tree."""
    key = ClientKey(c.key)
    append = info.append if c.append is None else c.append
    entry: menus.Entry = menus.LocalDisk() if c.mode == "local" else _install(append)
    grub_entry: menus.Entry = entry if c.mode == "local" else \
        menus.Install("/kernel", ("/initrd.img",), append)
    files: dict[str, str] = {}
    if "pxelinux" in info.loaders:
        files[f"pxelinux.cfg/{key.name}"] = menus.syslinux_cfg(
            entry, timeout_ds=info.timeout * 10, ipappend=True, label=label)
    if "grub" in info.loaders:
        files[f"grub/grub.cfg-{key.name}"] = menus.grub_cfg(
            grub_entry, timeout=info.timeout, net=True,
            bootif=key.name if key.is_mac else None)
    if "ipxe" in info.loaders and key.ipxe_name:
        files[f"ipxe/{key.ipxe_name}.ipxe"] = menus.ipxe_script(entry, base="../")
    return files


def written_files(info: TreeInfo, label: str = "sysclone") -> set[str]:
    """Every file a build of `info` writes (and set_client since), by path
    in the tree: what a later build may remove, as the description recorded
    it.  Files the admin put beside them are not in it."""
    names = {"kernel", "initrd.img", META}
    names.update(name for loader in info.loaders for name in LOADER_FILES[loader])
    names.update(_files_for_default(info, label))
    for c in info.clients.values():
        names.update(client_files(info, c, label))
    return names


def ipxe_unmatched(info: TreeInfo, clients: Iterable[ClientEntry]) -> str | None:
    """One line when the tree has iPXE and some entries are networks: iPXE
    has no substring operation for the shorter prefixes pxelinux and GRUB
    try, so its clients there (UEFI HTTP boot too) get the default entry."""
    if "ipxe" not in info.loaders:
        return None
    networks = [f"{ClientKey(c.key).shown} ({c.mode})" for c in clients
                if not ClientKey(c.key).ipxe_name]
    if not networks:
        return None
    return (f"iPXE and UEFI HTTP boot clients in {', '.join(networks)} get the default "
            "entry: iPXE matches a MAC or a whole address, not a network (pxelinux and GRUB do)")


def _remove_stale(root: Path, rels: Iterable[str]) -> None:
    """Remove files an earlier build wrote, and the directories (grub/,
    ipxe/) they leave empty; a directory holding anything else stays."""
    for rel in sorted(rels):
        (root / rel).unlink(missing_ok=True)
        parent = (root / rel).parent
        if parent != root:
            with contextlib.suppress(OSError):
                parent.rmdir()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _copy_atomic(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """One writer at a time (the switch in `serve`, `clients reinstall`,
    `media pxe`)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / LOCK).open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def read_info(root: Path) -> TreeInfo | None:
    meta = root / META
    if not meta.is_file():
        return None
    return TreeInfo.from_json(meta.read_text(), str(meta))


def build_tree(out: Path, kernel: Path, initrd: Path, info: TreeInfo,
               clients: Iterable[ClientEntry] = (), *, label: str = "sysclone") -> Path:
    """Write (or refresh) a tree.  Entries the switch made (`auto`) survive
    a rebuild: a machine that installed stays on its disk."""
    for loader in info.loaders:
        if loader not in LOADERS:
            raise ConfigError(f"unknown boot loader {loader!r}",
                              hint="loaders: " + ", ".join(LOADERS))
    menus.check_append(info.append)
    given = {c.key: c for c in clients}  # validated (ClientEntry) before anything is written
    for c in given.values():
        if c.append is not None:
            menus.check_append(c.append)
    files = _loader_files(info.loaders)
    for src in (kernel, initrd):
        if not src.is_file():
            raise ConfigError(f"{src}: no such file", hint="build the boot environment first")
    with locked(out):
        old = read_info(out)
        kept = {k: c for k, c in (old.clients if old else {}).items()
                if c.auto and k not in given}
        info = replace(info, clients={**kept, **given})
        for src, name in files:
            _copy_atomic(src, out / name)
        _copy_atomic(kernel, out / "kernel")
        _copy_atomic(initrd, out / "initrd.img")
        wanted = _files_for_default(info, label)
        for c in info.clients.values():
            wanted.update(client_files(info, c, label))
        # What the last build wrote and this one does not goes: entries of
        # clients no longer listed, a dropped loader's files and menus (a
        # TFTP server would still hand them out, with the old parameters).
        if old is not None:
            _remove_stale(out, written_files(old, label) - written_files(info, label))
        for rel, text in wanted.items():
            _write_atomic(out / rel, text.encode())
        _write_atomic(out / META, info.to_json().encode())
    return out


def set_client(root: Path, entry: ClientEntry | None, key: str, label: str = "sysclone"
               ) -> TreeInfo:
    """Give one client its entry (None: remove it, the default applies)
    and rewrite only that client's files."""
    with locked(root):
        info = read_info(root)
        if info is None:
            raise SyscloneError(f"{root} is not a sysclone PXE tree ({META} is missing)",
                                hint="write it with `sysclone media pxe`")
        clients = dict(info.clients)
        old = clients.pop(key, None)
        if entry is not None:
            clients[key] = entry
        new = replace(info, clients=clients)
        files = client_files(new, entry, label) if entry is not None else {}
        if old is not None:
            for rel in client_files(info, old, label):
                if rel not in files:
                    (root / rel).unlink(missing_ok=True)
        for rel, text in files.items():
            _write_atomic(root / rel, text.encode())
        _write_atomic(root / META, new.to_json().encode())
        return new
