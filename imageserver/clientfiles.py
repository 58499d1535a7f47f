"""Per-client scripts and network configurations, chosen the way
SystemImager chooses them, and sent with the install instructions.

Pre-install scripts (ROOT/scripts/pre-install/) run in the boot environment
before the disks are partitioned; post-install scripts (ROOT/scripts/
post-install/) run chrooted in the installed system once it is configured,
right before its filesystems are unmounted.  A script runs for a client
when its name is two digits, a class and a period, then any description:

    10all.mount_nfs        every client
    20web.tune             clients installing image "web"
    30node.bios            clients whose base host name is "node" (node01...)
    40compute.ib           clients in group "compute"
    50node07.fix           client node07

Scripts run class by class -- all, the image, the base host name, the
groups, the host name (SystemImager 4.9's run_pre/post_install_scripts) --
and by name within a class, so by number; a script matching two classes
runs once, with the first.  Editor backups (name~) are skipped.
(SystemImager's README says groups come before the base host name; its
code, which the installs followed, puts them after: sysclone does what the
code did, which is also the reverse of the per-client file lookup.)
si.script-name=NAME adds the class NAME, run last; when no script has that
class in either directory the client is told so and the install stops.
SystemImager named its main install script so; sysclone has no main
install script (the instructions take its place).

The network configuration (si.network-config, SystemImager's net-config.xml)
is ROOT/scripts/network-configs/NAME[.xml] when named, else the first of
host name, groups, base host name, image name and `default`, with or
without .xml.  It is parsed and checked against the image's network style
here, so that a configuration the image cannot express is refused before
any disk is touched.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any

from imageserver.lookup import base_hostname, candidates, find_file
from sysclone.errors import ConfigError

log = logging.getLogger(__name__)

STAGES = ("pre-install", "post-install")
NETWORK_DIR = "network-configs"
MAX_SCRIPT = 1 << 20  # a script is a script: a megabyte is plenty
MAX_NETWORK_CONFIG = 256 * 1024


def script_classes(hostname: str | None, groups: tuple[str, ...], image: str | None,
                   script_name: str | None = None) -> list[str]:
    """The classes a client's scripts may have, in the order they run."""
    out = ["all"]
    if image:
        out.append(image)
    if hostname:
        short = hostname.split(".")[0]
        base = base_hostname(hostname)
        if base:
            out.append(base)
        out += list(groups)
        out += [short, hostname]
    else:
        out += list(groups)
    if script_name:
        out.append(script_name)
    return list(dict.fromkeys(c for c in out if c))


def script_class(name: str, classes: list[str]) -> str | None:
    """The class a script name belongs to (the first that fits), or None."""
    if len(name) < 4 or not name[:2].isdigit() or name.endswith("~") or "/" in name:
        return None
    rest = name[2:]
    for c in classes:
        if rest.startswith(c + ".") and len(rest) > len(c) + 1:
            return c
    return None


def choose_scripts(directory: Path, classes: list[str]) -> list[Path]:
    """The scripts of `directory` that run for these classes, in order."""
    if not directory.is_dir():
        return []
    names = sorted(p.name for p in directory.iterdir()
                   if p.is_file() and not p.name.startswith("."))
    out: list[Path] = []
    for c in classes:
        out += [directory / n for n in names if script_class(n, classes) == c]
    return out


def scripts_for(scripts_dir: Path, hostname: str | None, groups: tuple[str, ...],
                image: str | None, script_name: str | None = None,
                with_data: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Each stage's scripts for one client, as the instructions carry them:
    name, class, sha256 and (base64) contents."""
    if script_name is not None and ("/" in script_name or script_name in (".", "..")):
        raise ConfigError(f"si.script-name={script_name!r} is not a script class name")
    classes = script_classes(hostname, groups, image, script_name)
    out: dict[str, list[dict[str, Any]]] = {}
    for stage in STAGES:
        entries = []
        for p in choose_scripts(scripts_dir / stage, classes):
            data = p.read_bytes()
            if len(data) > MAX_SCRIPT:
                raise ConfigError(f"{stage} script {p.name} is larger than "
                                  f"{MAX_SCRIPT // 1024} KiB", hint=f"see {p}")
            entry: dict[str, Any] = {"name": p.name, "class": script_class(p.name, classes),
                                     "sha256": hashlib.sha256(data).hexdigest()}
            if with_data:
                entry["data"] = base64.b64encode(data).decode()
            entries.append(entry)
        out[stage] = entries
    if script_name and not any(e["class"] == script_name for es in out.values() for e in es):
        raise ConfigError(
            f"si.script-name={script_name}: no script of that class in "
            f"{scripts_dir / 'pre-install'} or {scripts_dir / 'post-install'}",
            hint=f"name one NN{script_name}.description (two digits, the class, a period)")
    return out


def network_config_for(scripts_dir: Path, hostname: str | None, groups: tuple[str, ...],
                       image: str | None, name: str | None, tree: Path | None
                       ) -> dict[str, Any] | None:
    """The client's network configuration file, checked against the image
    at `tree` (None: not checked), as the instructions carry it."""
    from agent.configure.netconfig import check_image
    from agent.configure.netxml import parse_network_config

    directory = scripts_dir / NETWORK_DIR
    if name:
        found = find_file(directory, [name], ("", ".xml"))
        if found is None:
            raise ConfigError(f"network configuration {name!r} not found in {directory}",
                              hint=f"si.network-config names {directory}/NAME or NAME.xml")
    else:
        found = find_file(directory, candidates(hostname, groups, image), ("", ".xml"))
        if found is None:
            return None
    if found.stat().st_size > MAX_NETWORK_CONFIG:
        raise ConfigError(f"network configuration {found} is larger than "
                          f"{MAX_NETWORK_CONFIG // 1024} KiB")
    text = found.read_text(errors="replace")
    cfg = parse_network_config(text, found.name)
    style, warnings = (None, list(cfg.warnings))
    if tree is not None:
        style, warnings = check_image(tree, cfg)
    return {"name": found.name, "text": text, "style": style, "warnings": warnings}
