"""Files the image server hands out over HTTP besides its JSON answers:

    /boot/PATH             the PXE tree (ROOT/pxe): iPXE loads the boot
                           environment over HTTP, and UEFI HTTP boot starts
                           from /boot/ipxe.efi
    /v1/bootenv/FILE       the standard boot environment (kernel, initrd.img,
                           manifest.json), for `updateclient --autoinstall`

Only regular files inside those directories are served: a path is
resolved, symlinks included, and must stay inside.  The sysclone files of a
tree (its description, lock, files being written) are not served.
"""

from __future__ import annotations

from pathlib import Path

from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

BOOT_PREFIX = "/boot/"
BOOTENV_PREFIX = "/v1/bootenv/"
BOOTENV_FILES = ("kernel", "initrd.img", "manifest.json")


def is_download(path: str) -> bool:
    return path.startswith((BOOT_PREFIX, BOOTENV_PREFIX))


def _content_type(name: str) -> str:
    if name.endswith((".cfg", ".ipxe")) or "/pxelinux.cfg/" in name or "grub.cfg" in name:
        return "text/plain; charset=utf-8"
    if name.endswith(".json"):
        return "application/json"
    return "application/octet-stream"


def resolve_download(state: StateRoot, path: str) -> tuple[Path, str]:
    """The file an URL path names and its content type; ConfigError (404)
    for anything else."""
    if path.startswith(BOOTENV_PREFIX):
        name = path[len(BOOTENV_PREFIX):]
        if name not in BOOTENV_FILES:
            raise ConfigError(f"no boot environment file {name!r}",
                              hint="files: " + ", ".join(BOOTENV_FILES))
        top, rel = state.bootenvs / "standard", name
    elif path.startswith(BOOT_PREFIX):
        top, rel = state.pxe, path[len(BOOT_PREFIX):]
    else:
        raise ConfigError(f"no such download {path}")
    parts = rel.split("/")
    if not rel or any(p in ("", ".", "..") or p.startswith(".") for p in parts) \
            or parts[-1] == "sysclone-pxe.json":
        raise ConfigError(f"no such file {path}")
    base = top.resolve()
    target = (top / rel).resolve()
    if base not in target.parents or not target.is_file():
        raise ConfigError(f"no such file {path}")
    return target, _content_type(rel)
