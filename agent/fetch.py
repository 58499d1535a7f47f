"""Pulling the image onto the mounted target with rsync.

rsync writes each file straight to the target filesystem, so the image is
streamed to disk and never staged in RAM: a 512 MB machine installs images
of any size.  Hard links, ACLs, xattrs, sparse files and numeric ids are
kept.

Sparse files come in a run of their own: rsync -S looks at every block of
every file for zeros and writes in small pieces (under emulation the fetch
took 39.1 s with it, 31.7 s without), while an image holds a handful of
sparse files.  The image server names them (imageserver.sparsefiles); the
bulk comes without -S and excludes them, then one -S run fetches them.
When the server names none (an older one, or one that could not list them
safely), every run keeps -S.

Progress is measured, not parsed: a thread looks at the target
filesystems' used space once a second.  rsync's own --info=progress2 prints
a line per file, and reading tens of thousands of lines in Python took CPU
from rsync itself (under emulation the fetch ran 30 % slower than the same
rsync alone).  rsync prints only its --stats, once, at the end.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysclone.errors import SyscloneError
from sysclone.run import run, spawn

log = logging.getLogger(__name__)


class FetchError(SyscloneError):
    pass


# Incremental recursion stays on: the whole file list of a big image never
# sits in memory at once.  Each file received is still verified against the
# sender's whole-file checksum, but with xxh64 rather than the xxh128 two
# rsyncs 3.2+ settle on: xxh128 is vector code, and under emulation the
# same transfer of the demo image took 12.3 s (median of 7, in one VM) with
# it and 10.6 s (of 5) with xxh64, which is plain 64-bit arithmetic.
# Natively both hash far faster than disks write.  The image server is
# sysclone's own rsync daemon (3.2 or later, which has xxh64).
CHECKSUM = "--checksum-choice=xxh64"
RSYNC_FLAGS = ("-aHAX", "--numeric-ids", CHECKSUM, "--stats")
# The same with -S: runs of zeros become holes (for sparse files, and for
# every file when which ones are sparse is not known).
SPARSE_FLAGS = ("-aHAXS", "--numeric-ids", CHECKSUM, "--stats")

_TRANSFERRED = re.compile(r"^Total transferred file size: ([\d,]+) bytes", re.M)


@dataclass(frozen=True)
class Progress:
    bytes: int  # written to the target so far
    rate: float  # bytes/s over the last interval


@dataclass(frozen=True)
class FetchResult:
    bytes: int  # rsync's "total transferred file size" (or what was measured)
    seconds: float


def used_bytes(mountpoints: Iterable[Path]) -> int:
    """Space in use on the filesystems mounted at `mountpoints`."""
    total = 0
    seen: set[int] = set()
    for m in mountpoints:
        try:
            st = os.statvfs(m)
        except OSError:
            continue
        # btrfs subvolumes are mounted several times: one filesystem, counted once.
        if st.f_fsid in seen:
            continue
        seen.add(st.f_fsid)
        total += (st.f_blocks - st.f_bfree) * st.f_frsize
    return total


def transferred(stats: str) -> int | None:
    m = _TRANSFERRED.search(stats)
    return int(m.group(1).replace(",", "")) if m else None


def rsync_url(server: str, port: int, module: str) -> str:
    host = f"[{server}]" if ":" in server else server
    return f"rsync://{host}:{port}/{module}/"


def module_sources(url: str, paths: Sequence[str]) -> list[str]:
    """rsync source arguments for `paths` (relative to the root of the
    daemon module at `url`), each after a /./ so that --relative names them
    -- and recreates them under the target -- by their path in the image.
    Later sources on the same daemon are written ::module/path."""
    m = re.fullmatch(r"(rsync://[^/]+)/(.+?)/?", url)
    if not m or not paths:
        raise ValueError(f"not an rsync module URL, or no paths: {url!r} {paths!r}")
    module = m.group(2)
    return [f"{m.group(1)}/{module}/./{paths[0]}", *(f"::{module}/./{p}" for p in paths[1:])]


@dataclass(frozen=True)
class Transfer:
    """One rsync run of (part of) an image: with -S or not, the options
    beyond the flags, and the sources (none: the whole module at the URL)."""

    holes: bool = True  # -S
    options: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def argv(self, url: str, target: Path | str) -> list[str]:
        flags = SPARSE_FLAGS if self.holes else RSYNC_FLAGS
        return ["rsync", *flags, *self.options, *(self.sources or (url,)), f"{target}/"]


# All of the image at the URL, with -S (overrides: small, and nobody has said
# which of their files are sparse).  Not in place: an override's file lands
# on one the image put there, maybe a hard link that must not change too.
WHOLE = Transfer()

# The image itself goes onto filesystems made for it a moment ago (a kept
# one is never written): no file is there to update, and nothing reads them
# before the install ends, so each file is written where it belongs instead
# of to a temporary name renamed at its end.  Under emulation (TCG, 2 vCPUs,
# the demo image, five alternated pairs of installs in one VM) the bulk took
# 6.2-6.9 s this way against 7.0-8.0 s, the whole install 0.35-1.3 s less.
ONTO_NEW = ("--inplace",)


def filter_literal(path: str) -> str:
    """`path` as an rsync filter pattern that matches only itself: rsync
    reads a backslash as an escape only in a pattern with a wildcard."""
    if not any(c in path for c in "*?["):
        return path
    return re.sub(r"([*?\[\\])", r"\\\1", path)


def _exclude(paths: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"--exclude=/{filter_literal(p)}" for p in paths)


def all_but(deferred: Sequence[str], sparse: Sequence[str] | None) -> Transfer:
    """The image but the `deferred` directories (relative to its root) and
    the `sparse` files, without -S; with -S for every file when `sparse` is
    None (not known)."""
    return Transfer(holes=sparse is None,
                    options=(*ONTO_NEW, *(f"--exclude=/{d}/" for d in deferred),
                             *_exclude(sparse or ())))


def only(url: str, paths: Sequence[str], sparse: Sequence[str] | None) -> Transfer:
    """Only the directories `paths`, each to the same place under the
    target, in one run (hard links between them kept), but the `sparse`
    files in them; with -S for every file when `sparse` is None."""
    inside = [f for f in sparse or () if any(f.startswith(f"{p}/") for p in paths)]
    return Transfer(holes=sparse is None, options=(*ONTO_NEW, "--relative", *_exclude(inside)),
                    sources=tuple(module_sources(url, [f"{p}/" for p in paths])))


def sparse_only(url: str, files: Sequence[str]) -> Transfer:
    """Only the `files`, with -S, each to the same place under the target."""
    return Transfer(holes=True, options=(*ONTO_NEW, "--relative"),
                    sources=tuple(module_sources(url, files)))


def image_paths(url: str, paths: list[str], timeout: float = 60) -> set[str]:
    """Which of `paths` (relative to the image's root) the image at `url`
    holds, from one `rsync --list-only` of them all: each rsync run is a
    fork, an exec and a daemon login, about half a second under emulation.
    Raises when the image cannot be listed at all."""
    res = run(["rsync", "--list-only", "--no-motd", "--relative", "--no-implied-dirs",
               *module_sources(url, paths)], check=False, timeout=timeout)
    if res.returncode not in (0, 23):  # 23: some of them are not there
        why = (res.stderr or res.stdout).strip().splitlines()
        # The daemon's own words (@ERROR: Unknown module ...) say most.
        said = [w for w in why if w.startswith("@ERROR")] or why[-1:]
        raise SyscloneError(said[0] if said else f"rsync exit code {res.returncode}")
    found = set()
    for line in res.stdout.splitlines():
        fields = line.split(None, 4)  # mode size date time name[ -> target]
        if len(fields) == 5:
            found.add(fields[4].split(" -> ", 1)[0].rstrip("/"))
    return found & set(paths)


def pull(url: str, target: Path, *, on_progress: Callable[[Progress], None] | None = None,
         interval: float = 1.0, transfer: Transfer = WHOLE,
         measure: Callable[[], int] | None = None,
         started: Callable[[subprocess.Popen[str]], None] | None = None) -> FetchResult:
    """rsync `url` into `target` (what `transfer` says of it: by default
    all of it, with -S); raises with rsync's own message on failure.
    `measure` gives the bytes in use on the target (default: its statvfs);
    `started` gets the rsync process (to stop it from another thread)."""
    argv = transfer.argv(url, target)
    measure = measure or (lambda: used_bytes([target]))
    base = measure()
    t0 = time.monotonic()
    stop = threading.Event()
    watcher = None
    if on_progress is not None:
        report = on_progress

        def watch() -> None:
            last_t, last_b = t0, 0
            while not stop.wait(interval):
                b, now = max(0, measure() - base), time.monotonic()
                report(Progress(b, (b - last_b) / max(now - last_t, 1e-6)))
                last_t, last_b = now, b

        watcher = threading.Thread(target=watch, name="fetch-progress", daemon=True)
        watcher.start()
    lines: list[str] = []
    try:
        with spawn(argv) as proc:
            assert proc.stdout is not None
            if started is not None:
                started(proc)
            for line in proc.stdout:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                    log.debug("rsync: %s", line.strip())
            rc = proc.wait()
    finally:
        stop.set()
        if watcher:
            watcher.join()
    seconds = time.monotonic() - t0
    if rc != 0:
        errors = [x.strip() for x in lines if not _is_stats(x)]
        msg = "; ".join(errors[-3:]) or f"exit code {rc}"
        # An rsync daemon older than 3.2 knows no xxh64 (CHECKSUM).
        old = any("checksum" in x.lower() and "xxh64" in x for x in errors)
        raise FetchError(f"rsync from {url} failed: {msg}", returncode=rc,
                         hint="the image server's rsync must be 3.2 or later (xxh64)"
                         if old else None)
    measured = max(0, measure() - base)
    if on_progress:
        on_progress(Progress(measured, measured / max(seconds, 1e-6)))
    sent = transferred("\n".join(lines))
    return FetchResult(sent if sent is not None else measured, seconds)


def pull_except(url: str, target: Path, deferred: Sequence[str],
                sparse: Sequence[str] | None = None, **kw: Any) -> FetchResult:
    """The image at `url` but the `deferred` directories (relative to its
    root), which pull_only fetches later, and the `sparse` files, which
    pull_sparse fetches (None: not known, every file comes with -S)."""
    return pull(url, target, transfer=all_but(deferred, sparse), **kw)


def pull_only(url: str, target: Path, paths: Sequence[str],
              sparse: Sequence[str] | None = None, **kw: Any) -> FetchResult:
    """Only the directories `paths` of the image at `url`, each to the same
    place under `target`, in one rsync run (hard links between them kept),
    but the `sparse` files among them (pull_sparse fetches those)."""
    return pull(url, target, transfer=only(url, paths, sparse), **kw)


def pull_sparse(url: str, target: Path, files: Sequence[str], **kw: Any) -> FetchResult:
    """Only the sparse `files` of the image at `url`, with -S, in one run."""
    return pull(url, target, transfer=sparse_only(url, files), **kw)


_STATS_PREFIXES = ("Number of ", "Total ", "Literal data", "Matched data", "File list ",
                   "sent ", "total size is")


def _is_stats(line: str) -> bool:
    return line.strip().startswith(_STATS_PREFIXES)
