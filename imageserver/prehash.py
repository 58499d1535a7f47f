"""Hash files while rsync is still copying the rest.

A capture's manifest needs the sha256 of every new file.  Reading them
again after the copy would add a second pass over the data to every
capture; instead rsync names each file as it finishes it (--out-format) and
worker threads hash it while the transfer goes on, in time a slow network
or the client's disk leaves idle.  The manifest then takes the hash when
the file is still the one that was hashed (same inode, size and mtime) and
reads it itself otherwise.  The workers read each file's extended
attributes too, which the manifest takes while the file's ctime says they
cannot have changed since (a new name of a hard-linked file changes it:
those are read again).
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from pathlib import Path
from typing import NamedTuple

from imageserver.manifest import Prehashed, Xattrs, read_xattrs, sha256_file

# rsync's --out-format: the 11-character itemize string, the bytes sent and
# the name (relative to the tree, unprintable bytes as \#ooo).  With %b in
# it rsync logs a file once it is received, not when it starts sending it.
OUT_FORMAT = "--out-format=%i %b %n"
_ITEM = re.compile(r"^([<>ch.*][fdLDS][ .+?cstTpoguaxn]{9}) \d+ (.+)$")
_ESCAPE = re.compile(rb"\\#([0-7]{3})")
RETRIES, RETRY_SECONDS = 20, 0.01


def is_item(line: str) -> bool:
    return bool(_ITEM.match(line))


def unescape(name: str) -> str:
    if "\\#" not in name:
        return name
    raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), os.fsencode(name))
    return os.fsdecode(raw)


class Hashed(NamedTuple):
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str
    xattrs: Xattrs


def default_workers() -> int:
    """Up to four, leaving one CPU to rsync's receiver: on two, a second
    hashing thread only took time from it (six alternated captures of the
    demo image, 3.76 s median with two, 3.74 s with one; one keeps up)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class Prehasher:
    """Worker threads hash the files fed to them.  The reading thread only
    queues a name (a ThreadPoolExecutor's future and bookkeeping per file
    cost a tenth of a second of its time over the demo image's 8,600
    files, time in which rsync's output waited to be read)."""

    def __init__(self, tree: Path, workers: int | None = None) -> None:
        self.root = os.fspath(tree)
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.results: dict[str, Hashed | None] = {}
        self.threads = [threading.Thread(target=self._work, name=f"prehash-{i}", daemon=True)
                        for i in range(workers or default_workers())]
        for t in self.threads:
            t.start()

    def feed(self, line: str) -> bool:
        """One line of rsync's output; True if it was a file it finished."""
        m = _ITEM.match(line)
        if not m:
            return False
        if m.group(1).startswith(">f"):  # received: its content is in place
            self.queue.put("/" + unescape(m.group(2)))
        return True

    def _work(self) -> None:
        while (rel := self.queue.get()) is not None:
            # A name that comes twice may be hashed twice at once: either
            # hash is kept only while it is still the file's (reuse_from).
            self.results[rel] = self._hash(self.root + rel)

    @staticmethod
    def _hash(path: str) -> Hashed | None:
        """The file's identity and hash, once rsync has renamed it into place
        and set its time (it may log the file a moment before); None if it
        never settles, and the manifest reads it later."""
        for _ in range(RETRIES):
            try:
                st = os.lstat(path)
                digest = sha256_file(path)
                xattrs = read_xattrs(path)
                after = os.lstat(path)
            except OSError:
                time.sleep(RETRY_SECONDS)
                continue
            if (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == \
                    (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns):
                return Hashed(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                              st.st_ctime_ns, digest, xattrs)
            time.sleep(RETRY_SECONDS)
        return None

    def close(self) -> dict[str, Hashed]:
        """Wait for the hashing; {path: (dev, ino, size, mtime_ns, sha256)}."""
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()
        return {rel: r for rel, r in self.results.items() if r is not None}


def reuse_from(hashes: dict[str, Hashed]) -> Prehashed:
    """The hashes as manifest.build() takes them: valid while the file is
    the one that was hashed; its extended attributes while nothing changed
    the inode since either (ctime)."""
    def known(rel: str, st: os.stat_result) -> tuple[str, Xattrs | None] | None:
        h = hashes.get(rel)
        if h and (h.dev, h.ino, h.size, h.mtime_ns) == \
                (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            return h.sha256, h.xattrs if h.ctime_ns == st.st_ctime_ns else None
        return None
    return known

