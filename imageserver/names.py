"""Image names and references: `NAME` (the current version) or `NAME@N`.

Names come from the command line, from clients (IMAGENAME=) and from the
store's own directory, and end up in paths, rsyncd.conf section headers and
rsync URLs; they are checked here, where they enter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sysclone.errors import ConfigError

# \Z: no trailing newline.  No leading '-' (an option), '.' (hidden, '..') or
# '@' (the version separator); no '/' (a path); no '..' anywhere.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")
NAME_HINT = ("a letter or digit first, then letters, digits, '.', '_', '+' or '-', "
             "at most 64 in all, no '..'")
MAX_VERSION = 10**9


def is_name(name: str) -> bool:
    return bool(NAME_RE.match(name)) and ".." not in name


def check_name(name: str) -> str:
    if not is_name(name):
        raise ConfigError(f"image name {name!r} is not valid", hint=NAME_HINT)
    return name


def parse_version(text: str) -> int:
    if not text.isascii() or not text.isdigit() or text.startswith("0") \
            or int(text) > MAX_VERSION:
        raise ConfigError(f"image version {text!r} is not valid",
                          hint="versions are whole numbers from 1, as `image versions` lists")
    return int(text)


@dataclass(frozen=True)
class ImageRef:
    """An image, and optionally one of its versions (None: the current one)."""

    name: str
    version: int | None = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        name, at, version = text.partition("@")
        if at and not name:
            raise ConfigError(f"image name {text!r} is not valid", hint=NAME_HINT)
        check_name(name)
        return cls(name, parse_version(version) if at else None)

    def __str__(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version}"
