"""Image names and references: `NAME` (the current version) or `NAME@N`.

Names come from the command line, from clients (IMAGENAME=) and from the
store's own directory, and end up in paths, rsyncd.conf section headers and
rsync URLs; they are checked here, where they enter.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.names import is_store_name as is_name
from sysclone.errors import ConfigError

NAME_HINT = ("a letter or digit first, then letters, digits, '.', '_', '+' or '-', "
             "at most 64 in all, no '..'")
MAX_VERSION = 10**9


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
