"""Which of a golden client's files are sparse, asked over SSH before a
capture pulls them, so that only they come with rsync -S.

rsync -S keeps holes, but its receiver then writes every file in 1 KiB
pieces to find the runs of zeros: `rsync -aHAX` of the demo image over
loopback SSH took 1.63-1.72 s with it and 1.33-1.45 s without (three runs
each, into an ext4 in memory), on a client where one file in thousands has
a hole.  So, like the agent's installs
(imageserver.sparsefiles), a first capture over SSH pulls the bulk without
-S, leaving the sparse files out, then those with -S in a second run of
the same connection.

The client is asked with its own find(1), over the capture's SSH
connection, on the filesystems the capture crosses into (the mount list's
real local filesystems, each with -xdev), never below a mount the capture
skips.  Only files of at least
HOLE_MIN bytes are listed: a smaller one cannot have a hole that big.  The
scan falls back to -S for every file (SparseFiles.fallback, the capture
as before) when find fails or is missing, and for the reasons
sparsefiles.classify gives (a sparse file with two names, a name rsync
could misread, too many of them).  A file that becomes sparse between the
scan and the pull arrives whole: correct, only bigger.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence

from imageserver.prepare.golden import rsync_escape, skipped_mounts
from imageserver.sources import SshSource
from imageserver.sparsefiles import HOLE_MIN, FileFacts, SparseFiles, classify
from sysclone.run import run_bytes

SCAN_TIMEOUT = 600
# device, inode, links, size, 512-byte blocks, path; NUL after each.
PRINTF = "%D %i %n %s %b %p\\0"


def scanned_mounts(findmnt_json: str, skipped: Sequence[str]) -> list[str]:
    """The mount points a capture crosses into: "/" and every mount the
    capture does not skip, nor lies below one it `skipped`."""
    try:
        mounts = json.loads(findmnt_json or "{}").get("filesystems") or []
    except ValueError:
        mounts = []
    out = ["/"]
    for m in mounts:
        t = str(m.get("target") or "")
        if not t.startswith("/") or t in out:
            continue
        if any(t == s or t.startswith(s.rstrip("/") + "/") for s in skipped):
            continue
        out.append(t)
    return out


def pruned_mounts(findmnt_json: str) -> list[str]:
    """The mount points the capture skips: find must not go below them
    either.  -xdev alone would: a bind mount of a directory of the same
    filesystem (the bench's golden client binds the host's /usr) is the
    same device."""
    return [t for t, _why in skipped_mounts(findmnt_json)]


def scan_command(roots: Sequence[str], prune: Sequence[str] = ()) -> str:
    """The shell command the client runs (ssh passes one string)."""
    q = shlex.quote
    # find's -path patterns take the same backslash escapes as rsync's.
    skip = " -o ".join(f"-path {q(rsync_escape(p))}" for p in prune)
    pruning = f"\\( {skip} \\) -prune -o " if prune else ""
    return (f"LC_ALL=C find {' '.join(q(r) for r in roots)} -xdev {pruning}-type f "
            f"-size +{HOLE_MIN - 1}c -printf {q(PRINTF)}")


def parse(out: bytes) -> Iterator[FileFacts]:
    """find's records: absolute paths become relative to the client's /."""
    for rec in out.split(b"\0"):
        if not rec:
            continue
        dev, ino, nlink, size, blocks, path = rec.split(b" ", 5)
        rel = path.decode("utf-8", "surrogateescape").lstrip("/")
        yield FileFacts(rel, int(size), int(blocks), int(nlink), (int(dev), int(ino)))


def ssh_sparse_files(src: SshSource, findmnt_json: str) -> SparseFiles:
    skipped = pruned_mounts(findmnt_json)
    cmd = scan_command(scanned_mounts(findmnt_json, skipped), skipped)
    res = run_bytes([*src.ssh_argv(), src.host, cmd], timeout=SCAN_TIMEOUT)
    if res.returncode != 0:
        why = res.stderr.decode("utf-8", "replace").strip().splitlines()
        return SparseFiles(fallback=f"find on the client failed ({res.returncode}): "
                                    f"{why[0] if why else 'no message'}")
    try:
        return classify(parse(res.stdout))
    except ValueError:
        return SparseFiles(fallback="find's output on the client was not understood")
