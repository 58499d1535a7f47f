"""A local.cfg carried by a boot medium, for the agent to read as its own.

SystemImager read local.cfg from the root of its initrd, from a floppy, or
from the client's disk.  A sysclone ISO carries it as a second initrd (a
tiny cpio archive the boot loader loads after the boot environment's): the
kernel unpacks it over the first, so the agent finds /local.cfg as if the
boot environment had been built with it -- whatever the machine's disk
controllers, and without rebuilding the boot environment per medium.

The archive holds the file twice: at /local.cfg for a boot environment
packed as one cpio archive, and in the first stage's "hot" directory for
one packed as a squashfs (bootenv.squash: that directory is the top layer
of the overlay the agent runs in, so the file appears there as /local.cfg).
"""

from __future__ import annotations

import io
import stat
from pathlib import Path

from bootenv.cpio import Entry, write_archive
from bootenv.squash import HOT_DIR
from sysclone.errors import ConfigError

NAME = "local.cfg"
MAX_SIZE = 64 * 1024  # a parameters file; anything bigger is a mistake


def read_checked(path: Path) -> tuple[str, tuple[str, ...]]:
    """The text of a local.cfg to put on a medium, parsed now as the agent
    will parse it (a mistake is found here, not on every client), and the
    parser's warnings."""
    from agent.params import parse_local_cfg

    if not path.is_file():
        raise ConfigError(f"--local-cfg {path}: no such file")
    if path.stat().st_size > MAX_SIZE:
        raise ConfigError(f"--local-cfg {path}: larger than {MAX_SIZE // 1024} KiB",
                          hint="a local.cfg holds VARIABLE=value lines")
    text = path.read_text(encoding="utf-8", errors="replace")
    layer = parse_local_cfg(text, name=f"local.cfg at {path}")
    return text, layer.warnings


def initrd_archive(text: str) -> bytes:
    """The second initrd: local.cfg where either packing's agent reads it."""
    data = text.encode()
    entries = [Entry(NAME, stat.S_IFREG | 0o644, data=data),
               Entry(HOT_DIR, stat.S_IFDIR | 0o755),
               Entry(f"{HOT_DIR}/{NAME}", stat.S_IFREG | 0o644, data=data)]
    buf = io.BytesIO()
    write_archive(buf, entries)
    return buf.getvalue()
