"""A layout file in either form: which form it is, reading and writing it.

The image server sends a layout with its `format` ("systemimager-xml" or
"toml"); files are told apart by their suffix, else by their first
character (XML starts with "<").  Both forms read into the same model.
"""

from __future__ import annotations

from pathlib import Path

from agent.storage.model import Layout
from agent.storage.sixml import parse_layout, to_xml
from agent.storage.tomlread import parse_toml
from agent.storage.tomlwrite import to_toml
from sysclone.errors import ConfigError

XML = "systemimager-xml"
TOML = "toml"
FORMATS = (XML, TOML)
SUFFIXES = {".xml": XML, ".toml": TOML}


def format_of(name: str, data: str | bytes) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in SUFFIXES:
        return SUFFIXES[suffix]
    head = data.lstrip()[:1]
    return XML if head in ("<", b"<") else TOML


def parse(data: str | bytes, name: str, fmt: str | None = None) -> Layout:
    """A layout (schema-checked only) from text in `fmt`, or the form
    `name` and the text say."""
    fmt = fmt or format_of(name, data)
    if fmt == XML:
        return parse_layout(data, name)
    if fmt == TOML:
        return parse_toml(data, name)
    raise ConfigError(f"layout {name}: unknown format {fmt!r}",
                      hint="one of " + ", ".join(FORMATS))


def load(path: str | Path) -> Layout:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read disk layout: {exc.strerror}") from None
    return parse(data, str(path))


def render(layout: Layout, fmt: str) -> str:
    if fmt == XML:
        return to_xml(layout)
    if fmt == TOML:
        return to_toml(layout)
    raise ConfigError(f"unknown layout format {fmt!r}", hint="one of " + ", ".join(FORMATS))
