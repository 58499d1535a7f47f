"""Pulling the image onto the mounted target with rsync.

rsync writes each file straight to the target filesystem, so the image is
streamed to disk and never staged in RAM: a 512 MB machine installs images
of any size.  Hard links, ACLs, xattrs, sparse files and numeric ids are
kept.  Progress comes from rsync's own --info=progress2 lines.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import SyscloneError
from sysclone.run import spawn

log = logging.getLogger(__name__)


class FetchError(SyscloneError):
    pass


# Incremental recursion stays on: the whole file list of a big image never
# sits in memory at once.  Its percentages are then rough, so the caller
# computes progress against the image size the server announced.
RSYNC_FLAGS = ("-aHAXS", "--numeric-ids", "--info=progress2")

_PROGRESS = re.compile(
    r"^\s*([\d,]+)\s+(\d+)%\s+([\d.]+)([kMGT]?B)/s\s+(\d+:\d\d:\d\d)")
_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


@dataclass(frozen=True)
class Progress:
    bytes: int
    percent: int
    rate: float  # bytes/s

    @classmethod
    def parse(cls, line: str) -> Progress | None:
        m = _PROGRESS.match(line)
        if not m:
            return None
        return cls(int(m.group(1).replace(",", "")), int(m.group(2)),
                   float(m.group(3)) * _UNITS[m.group(4)])


@dataclass(frozen=True)
class FetchResult:
    bytes: int
    seconds: float


def rsync_url(server: str, port: int, module: str) -> str:
    host = f"[{server}]" if ":" in server else server
    return f"rsync://{host}:{port}/{module}/"


def pull(url: str, target: Path, *, on_progress: Callable[[Progress], None] | None = None,
         interval: float = 1.0, extra: tuple[str, ...] = ()) -> FetchResult:
    """rsync `url` into `target`; raises with rsync's own message on failure."""
    argv = ["rsync", *RSYNC_FLAGS, *extra, url, f"{target}/"]
    t0 = time.monotonic()
    last_report = 0.0
    latest: Progress | None = None
    tail: list[str] = []
    with spawn(argv) as proc:
        assert proc.stdout is not None
        # Text mode reads universal newlines: progress2's \r-rewritten line
        # arrives as one line per update.
        for line in proc.stdout:
            p = Progress.parse(line)
            if p:
                latest = p
                now = time.monotonic()
                if on_progress and now - last_report >= interval:
                    last_report = now
                    on_progress(p)
            elif line.strip():
                tail = [*tail, line.strip()][-10:]
                log.debug("rsync: %s", line.strip())
        rc = proc.wait()
    if rc != 0:
        msg = "; ".join(tail[-3:]) or f"exit code {rc}"
        raise FetchError(f"rsync from {url} failed: {msg}", returncode=rc)
    seconds = time.monotonic() - t0
    if latest and on_progress:
        on_progress(latest)
    return FetchResult(latest.bytes if latest else 0, seconds)


