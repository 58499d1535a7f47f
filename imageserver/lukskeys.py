"""LUKS keys the image server hands to installing clients.

    ROOT/scripts/luks-keys/<name>/<volume>.key   one volume's key
    ROOT/scripts/luks-keys/<name>.key            every volume's key

<name> is looked up as layouts are: host name, short host name, base host
name (node01 -> node), image, then `default`.  A key is text (a
passphrase, or e.g. `head -c 48 /dev/urandom | base64`): it becomes the
volume's passphrase, typed at the console when si.luks-unlock=console, and
goes through the same text files as the rest of the installed system's
configuration.  One trailing newline is not part of it.

The install network is trusted here as it is for everything else the
server serves (images, layouts): whoever can ask for a host's instructions
can ask for its keys.  Keep the directory readable by root only.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from imageserver.lookup import candidates
from sysclone.errors import ConfigError

KEY_DIR = "luks-keys"
MAX_KEY = 8192  # cryptsetup's own limit for a key file
_VOLUME = re.compile(r"[A-Za-z0-9+_][A-Za-z0-9+_.-]{0,126}")


def read_key(path: Path) -> bytes:
    data = path.read_bytes()
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data or len(data) > MAX_KEY or b"\0" in data:
        raise ConfigError(f"{path}: a LUKS key is 1 to {MAX_KEY} bytes of text")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: a LUKS key must be text",
                          hint="e.g. head -c 48 /dev/urandom | base64 > KEYFILE") from None
    return data


def find_key(scripts: Path, hostname: str | None, image: str | None,
             volume: str) -> tuple[Path, bytes]:
    if not _VOLUME.fullmatch(volume):
        raise ConfigError(f"{volume!r} is not a LUKS volume name")
    from imageserver import cluster

    base = scripts / KEY_DIR
    groups = cluster.load(scripts).group_names(hostname)
    for name in candidates(hostname, groups, image):
        if "/" in name or name in (".", ".."):  # names come from clients
            continue
        for p in (base / name / f"{volume}.key", base / f"{name}.key"):
            if p.is_file():
                return p, read_key(p)
    raise ConfigError(f"no LUKS key for volume {volume} of {hostname or 'this client'}",
                      hint=f"put one in {base}/<host name>.key (or <host>/{volume}.key, "
                           "<group>.key, <image>.key, default.key), or pass si.luks-key")


def answer(scripts: Path, query: dict[str, str]) -> dict[str, Any]:
    """GET /v1/luks-key?hostname=&image=&volume= -> {"key": base64, "name": ...}."""
    image = (query.get("image") or "").split("@")[0] or None
    path, key = find_key(scripts, query.get("hostname") or None, image,
                         query.get("volume") or "")
    return {"key": base64.b64encode(key).decode(), "name": str(path.relative_to(scripts))}
