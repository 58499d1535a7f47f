"""Checks of what users type on the `sysclone` command line.

Names become paths (ROOT/vms/<hostname>.img, cache/<suite>-<arch>-...), so
every name is checked where it enters the CLI, before any step starts, and a
bad one is one line of error: ConfigError with a hint.  The rules are the
ones the rest of sysclone already uses: host names as the install
parameter si.hostname (RFC 1123), image names as the image store.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from agent.params.kinds import is_hostname
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

# Debian suites, architectures, kernel flavors and package names.
_DEBIAN_NAME = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}\Z")
# An rsync "hosts allow" entry: one address, network or name pattern.
_RSYNC_HOST = re.compile(r"[A-Za-z0-9.:/*?\[\]_-]{1,255}\Z")


def host_name(value: str, option: str) -> str:
    """A host name as si.hostname takes it; it also names files (the demo's
    VM disk), which the rule keeps inside their directory."""
    if not is_hostname(value):
        raise ConfigError(f"{option} {value!r} is not a valid host name",
                          hint="RFC 1123: letters, digits and '-', in dot-separated labels "
                               "of at most 63 characters")
    return value


def image_name(value: str) -> str:
    from imageserver.store import check_name

    return check_name(value)


def debian_name(value: str, option: str, what: str) -> str:
    if not _DEBIAN_NAME.match(value):
        raise ConfigError(f"{option} {value!r} is not a valid {what}",
                          hint="lower-case letters, digits, '.', '+' and '-'")
    return value


def mirror_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https", "file") or \
            (parts.scheme != "file" and not parts.netloc) or any(c.isspace() for c in value):
        raise ConfigError(f"--mirror {value!r} is not a mirror URL",
                          hint="http://deb.debian.org/debian (http, https or file)")
    return value


def positive(value: int, option: str) -> int:
    if value <= 0:
        raise ConfigError(f"{option} {value} must be a positive number")
    return value


def port(value: int, option: str) -> int:
    if not 1 <= value <= 65535:
        raise ConfigError(f"{option} {value} is not a port number (1-65535)")
    return value


def rsync_host_pattern(value: str) -> str:
    """One `hosts allow` entry: it is written into rsyncd.conf, so no white
    space or line breaks that could add settings of their own."""
    if not _RSYNC_HOST.match(value):
        raise ConfigError(f"--hosts-allow {value!r} is not an address, network or host "
                          "pattern", hint="one entry per option: 10.0.0.0/24, *.lab.example")
    return value


def output_dir(value: str, option: str, state: StateRoot) -> Path:
    """A directory sysclone writes into: a directory or nothing yet, and never
    inside an image (clients would receive what is written there)."""
    path = Path(value).absolute()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {value}: exists and is not a directory")
    return outside_images(path, value, option, state)


def outside_images(path: Path, value: str, option: str, state: StateRoot) -> Path:
    """`path` (typed as `value`) is not in the image store: clients would
    receive what is written there."""
    resolved, images = path.resolve(), state.images.resolve()
    if resolved == images or images in resolved.parents:
        raise ConfigError(f"{option} {value}: is inside the image store {state.images}",
                          hint="choose a directory outside it: clients receive the images")
    return path


def bootenv_dir(value: str | None, state: StateRoot) -> Path:
    """A built boot environment: the directory holds kernel and initrd.img."""
    path = Path(value).absolute() if value else state.bootenvs / "standard"
    missing = [f for f in ("kernel", "initrd.img") if not (path / f).is_file()]
    if missing:
        where = f"--bootenv {value}" if value else f"{path}"
        raise ConfigError(f"no boot environment in {where}: {' and '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} missing",
                          hint="build one with 'sysclone bootenv build'"
                               + ("" if value else " (or pass --bootenv DIR)"))
    return path
