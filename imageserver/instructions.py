"""What a client is told to install: image, disk layout, overrides, params.

Per-client files are looked up the way SystemImager 4.9 does: by host name,
then group name, then base host name (node01 -> node), then image name,
then `default` (see shared/compat/README.md).  No layout file means the
agent uses its built-in default layout for the firmware it booted with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageserver.store import ImageStore, check_name
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

LAYOUT_DIR = "disks-layouts"
API_VERSION = 1


def base_hostname(hostname: str) -> str:
    return re.sub(r"\d+$", "", hostname.split(".")[0])


def candidates(hostname: str | None, groups: tuple[str, ...], image: str | None) -> list[str]:
    out: list[str] = []
    if hostname:
        out.append(hostname)
        out.append(hostname.split(".")[0])
    out.extend(groups)
    if hostname:
        out.append(base_hostname(hostname))
    if image:
        out.append(image)
    out.append("default")
    seen: set[str] = set()
    return [c for c in out if c and not (c in seen or seen.add(c))]  # type: ignore[func-returns-value]


def find_file(directory: Path, names: list[str], suffixes: tuple[str, ...]) -> Path | None:
    for n in names:
        if "/" in n:  # names come from clients: never leave `directory`
            continue
        for s in suffixes:
            p = directory / f"{n}{s}"
            if p.is_file():
                return p
    return None


@dataclass(frozen=True)
class ClientQuery:
    hostname: str | None
    mac: str | None
    image: str | None
    layout: str | None = None  # si.disks-layout asked by the client


@dataclass(frozen=True)
class ServerPolicy:
    rsync_port: int
    default_image: str | None = None
    post_action: str | None = None  # overrides the client's when set


def resolve(state: StateRoot, q: ClientQuery, policy: ServerPolicy) -> dict[str, Any]:
    """The instructions for one client, or ConfigError (sent as 404/400)."""
    store = ImageStore(state)
    image = q.image or policy.default_image
    if not image:
        raise ConfigError("no image named for this client",
                          hint="pass IMAGENAME= on the kernel command line or set a default "
                               "image on the server")
    check_name(image)
    info = store.info(image)  # raises "unknown image" with the known ones
    layout_dir = state.scripts / LAYOUT_DIR
    layout: dict[str, Any] | None = None
    if q.layout:
        p = layout_dir / Path(q.layout).name
        found = p if p.is_file() else find_file(layout_dir, [q.layout], (".xml",))
        if not found:
            raise ConfigError(f"disks layout {q.layout!r} not found in {layout_dir}")
        layout = {"name": found.name, "format": "systemimager-xml", "text": found.read_text()}
    else:
        found = find_file(layout_dir, candidates(q.hostname, (), image), (".xml",))
        if found:
            layout = {"name": found.name, "format": "systemimager-xml",
                      "text": found.read_text()}
    usage = info.usage
    return {
        "version": API_VERSION,
        "hostname": q.hostname,
        "image": {
            "name": image, "module": image, "rsync_port": policy.rsync_port,
            "bytes": usage.bytes if usage else None, "files": usage.files if usage else None,
            "transfer_bytes": usage.transfer if usage else None,
            "usage": usage.by_dir if usage else {},
        },
        "layout": layout,
        "overrides": [],
        "params": {"si.post-action": policy.post_action} if policy.post_action else {},
    }
