"""How per-client files are found, SystemImager 4.9's way: by host name,
its short form, group names, base host name (node01 -> node), image name,
then `default`; each NAME with the suffixes asked for, in order."""

from __future__ import annotations

import re
from pathlib import Path


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
