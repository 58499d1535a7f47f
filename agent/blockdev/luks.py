"""LUKS2: formatting and opening the plan's volumes.

The key never appears on a command line: it is written to a file on the
boot environment's tmpfs (mode 0600), passed with --key-file, and removed
again at once.  The LUKS UUID is the plan's (--uuid), so crypttab can name
it before it exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from agent.plan import CryptPlan


def format_argv(c: CryptPlan, key_file: Path) -> list[str]:
    argv = ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
            f"--uuid={c.uuid}", f"--key-file={key_file}"]
    if c.cipher:
        argv.append(f"--cipher={c.cipher}")
    if c.key_size:
        argv.append(f"--key-size={c.key_size}")
    return [*argv, c.device]


def open_argv(c: CryptPlan, key_file: Path) -> list[str]:
    return ["cryptsetup", "open", "--type", "luks2", f"--key-file={key_file}", c.device,
            c.name]


@contextmanager
def key_file(directory: Path, name: str, key: bytes) -> Iterator[Path]:
    """The key in a file only root can read, for as long as the block runs."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{name}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        yield path
    finally:
        path.unlink(missing_ok=True)
