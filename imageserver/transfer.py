"""rsync between the image server and a golden client, and what its
failures mean.

Every capture pulls with the same options, whatever the transport:
-aHAXS --numeric-ids (hard links, ACLs, xattrs including security.*,
sparse files, devices, FIFOs and sockets, owners as numbers) and, as both
ends run rsync >= 3.1, nanosecond mtimes.  No -x: the capture crosses into
every real filesystem mounted below /, and the filter file keeps out the
pseudo and network ones.  Unchanged files are hard-linked from the previous
version with --link-dest, or, where the staging tree is already a snapshot
of it (btrfs), left alone while rsync deletes what the client no longer has
(excluded paths too: the result equals a capture into an empty tree) and
rewrites changed files in place (see update_argv).  The server is the receiver: it needs rsync >=
3.1.3 for nanosecond comparisons, the client any rsync >= 3.1.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imageserver.manifest import walk_tree
from imageserver.sources import DaemonSource, LocalSource, Source, SshSource
from sysclone.errors import SyscloneError
from sysclone.run import spawn_raw

# --modify-window=-1: times compared to the nanosecond, not the second (the
# default), or a file changed twice within a second could be taken as
# unchanged from the previous version, and a just-touched directory would
# keep the wrong time.
# xfs shows root its ACLs twice: as system.posix_acl_* (which --acls
# carries) and as its own on-disk form, trusted.SGI_ACL_FILE/_DEFAULT.  The
# latter must not travel: on any other filesystem it is a stray xattr.
XFS_ACL_FILTER = "-x trusted.SGI_ACL_*"
PULL_OPTIONS = ("--archive", "--hard-links", "--acls", "--xattrs",
                "--numeric-ids", "--modify-window=-1", "--info=progress2,stats1",
                f"--filter={XFS_ACL_FILTER}")
IO_TIMEOUT = 300  # seconds without data before rsync gives up (a lost network)
VANISHED = 24  # files that disappeared while being read: normal on a live system


class CaptureError(SyscloneError):
    """A capture that could not complete; the store is unchanged."""


class DiskFull(CaptureError):
    pass


@dataclass(frozen=True)
class Endpoint:
    """How rsync reaches a source: extra options and the source argument."""

    options: tuple[str, ...]
    root: str  # ends with "/": the contents of the client's /


def endpoint(source: Source, password_file: Path | None = None) -> Endpoint:
    if isinstance(source, SshSource):
        opts: tuple[str, ...] = ("-e", source.rsync_shell())
        if source.rsync_path:
            opts += ("--rsync-path", source.rsync_path)
        return Endpoint(opts, source.rsync_root())
    if isinstance(source, DaemonSource):
        assert password_file is not None
        return Endpoint((f"--password-file={password_file}",), source.url(source.module))
    assert isinstance(source, LocalSource)
    return Endpoint((), f"{source.path}/")


# Bringing a snapshot of the previous version up to date.  --inplace: a
# changed file keeps its inode, so only its own metadata changes -- a new
# file renamed over it would also rewrite its directory's entries and free
# the old inode, each a copy-on-write of metadata blocks the snapshot still
# shares (about 40 % of a version's metadata on btrfs, measured), and only
# the changed blocks of a file are rewritten.  It is safe because the tree
# is a private copy that is thrown away if the pull fails, and because
# unshare_hard_links() ran first (rsync would write through a hard link).
UPDATE_OPTIONS = ("--delete", "--delete-excluded", "--inplace")


def pull_argv(ep: Endpoint, dest: Path, filter_file: Path | None,
              link_dests: Sequence[Path] = (), *, update: bool = False,
              sparse: SparseSplit | None = None) -> list[str]:
    """`update`: `dest` already holds a previous version to bring up to
    date (call unshare_hard_links(dest) first).  `sparse`: one of the two
    runs of a split pull (imageserver.sparsescan); without it, one run
    with -S for every file."""
    argv = ["rsync", *PULL_OPTIONS, f"--timeout={IO_TIMEOUT}", *ep.options]
    if sparse is None or sparse.holes:
        argv.append("--sparse")
    if filter_file is not None:
        argv.append(f"--filter=merge {filter_file}")
    if sparse is not None:
        # A listed file gone since the scan is no error (a live system).
        argv += [f"--files-from={sparse.list_file}", "--ignore-missing-args"] \
            if sparse.holes else [f"--exclude-from={sparse.list_file}"]
    if update:
        argv += UPDATE_OPTIONS
    argv += [f"--link-dest={p}" for p in link_dests]
    return [*argv, ep.root, f"{dest}/"]


@dataclass(frozen=True)
class SparseSplit:
    """A pull in two runs: everything but the sparse files without -S
    (`list_file` holds them as exclude patterns), then only them with it
    (`list_file` holds their paths, for --files-from)."""

    list_file: Path
    holes: bool


def unshare_hard_links(tree: Path) -> int:
    """Leave each hard-link group in `tree` with its first path only;
    returns the paths unlinked.  rsync --inplace writes into a file's inode,
    and through it into every other name of it: if the client split the
    group since, one path's new content would land in the others.  rsync
    -H links the group again as the client has it (a few paths: a Debian
    image has a handful)."""
    seen: set[int] = set()
    gone = 0
    for rel, st in walk_tree(tree):
        if stat.S_ISDIR(st.st_mode) or st.st_nlink < 2:
            continue
        if st.st_ino in seen:
            os.unlink(f"{tree}{rel}")
            gone += 1
        else:
            seen.add(st.st_ino)
    return gone


# A --info=progress2 update; rsync may glue a message right after one.
_PROGRESS = re.compile(r"^\s*[\d,]+\s+\d+%\s+\S+\s+[\d:]+(\s+\([^)]*\))?")


@contextmanager
def _interrupt_through(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Ctrl-C while rsync runs goes to rsync, which stops; KeyboardInterrupt
    is raised once it has, not wherever the main thread happens to be.
    Raised in the middle of a worker thread's start or a lock's release
    (on_item hands files to threads), it turned into "RuntimeError: release
    unlocked lock" and a traceback instead of a clean interruption."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    asked: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        asked.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if asked:
        raise KeyboardInterrupt


def run_rsync(argv: list[str], what: str, on_line: Callable[[str], None] | None = None,
              on_item: Callable[[str], bool] | None = None) -> list[str]:
    """Run an rsync and raise CaptureError saying why it failed; returns the
    messages it printed (vanished files and the like).  `on_item` sees each
    line first and says if it was a file name (--out-format), not a message."""
    messages: list[str] = []
    with spawn_raw(argv) as proc, _interrupt_through(proc):
        assert proc.stdout is not None
        rest = b""
        while chunk := proc.stdout.read(CHUNK):
            rest, latest = take_lines(rest + chunk, on_item, messages)
            if on_line and latest:
                on_line(latest)
            if len(chunk) < SMALL_READ:
                time.sleep(GATHER)
        if rest.strip():
            _, latest = take_lines(rest + b"\n", on_item, messages)
            if on_line and latest:
                on_line(latest)
        rc = proc.wait()
    if rc in (0, VANISHED):
        return [m for m in messages if "vanished" in m]
    raise explain(rc, messages, what)


# rsync's output is read in the pieces the pipe holds.  A capture's is
# large: the itemized name of every path, for prehash, and progress2
# updates, each started by \r, the one after a finished file also ended by
# \n (30,000 lines in all for the demo image).  Of each line only what
# follows its last \r counts (rsync ends a message glued to an update with
# \n, and writes \r and \n in names as \#015 and \#012), and on_line, the
# terminal's status line, sees the newest of each piece, not every line:
# 30,000 updates of rich's status line took the main thread 0.4 s.
CHUNK = 1 << 16
# A read that found little (a line or two) is followed by a short pause in
# which more gathers: woken for every line, the main thread took the CPU
# from rsync and the hashing threads (the demo image's capture, eight
# alternated rounds: 3.80 s reading at once, 3.76 s with the pause).  Output
# that comes faster is read in big pieces, with no pause; at worst rsync
# waits for the rest of one pause after filling the pipe (64 KiB).
SMALL_READ = 1 << 12
GATHER = 0.01


def _text(raw: bytes) -> str:
    # rsync escapes what is not printable (\#ooo); anything else odd is kept.
    return raw.decode("utf-8", "surrogateescape")


def take_lines(data: bytes, on_item: Callable[[str], bool] | None, messages: list[str]
               ) -> tuple[bytes, str]:
    """The whole lines of `data`: files to `on_item`, the rest (less any
    progress update before them) appended to `messages` (the last 200
    kept).  Returns what follows the last line end, and the newest line
    (the update rsync is still writing, if it is one)."""
    cut = data.rfind(b"\n") + 1
    latest = ""
    for piece in _text(data[:cut]).split("\n"):
        line = piece[piece.rfind("\r") + 1:]
        if not line or line.isspace():
            continue
        latest = line
        # A name keeps its spaces; an update may have a message glued to it.
        p = _PROGRESS.match(line) if line[0] == " " else None
        message = line[p.end():].strip() if p else line
        if message and not (on_item and on_item(message)):
            messages.append(message)
            del messages[:-200]
    rest = data[cut:]
    now = _text(rest[rest.rfind(b"\r") + 1:]).strip()
    return rest, (now or latest.strip())


# (pattern in rsync's or ssh's words, what it means for the user, hint)
_CAUSES: tuple[tuple[str, str, str | None], ...] = (
    (r"No space left on device", "the image store's filesystem is full",
     "free space, or remove old versions with `sysclone image prune NAME --keep N`"),
    (r"@ERROR: auth failed", "the golden client refused the secret",
     "use the secret `sysclone client prepare` printed, in --secret-file"),
    (r"@ERROR: access denied", "the golden client does not export to this server",
     "run `client prepare --server` with this server's address"),
    (r"@ERROR: Unknown module", "the golden client exports no such module",
     "use the rsync:// URL `sysclone client prepare` printed"),
    (r"Permission denied \((publickey|password|keyboard)", "SSH refused the login",
     "pass --ssh-key, or put this server's key in the client's authorized_keys"),
    (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED",
     "the golden client's SSH host key does not match the known one", None),
    (r"Could not resolve hostname|Name or service not known|Temporary failure in name",
     "the golden client's name does not resolve", None),
    (r"Connection refused", "the golden client refused the connection",
     "is sshd (or `client prepare`) running, on that port?"),
    (r"timed out|Connection timed out|No route to host|Network is unreachable"
     r"|Connection reset|Broken pipe|connection unexpectedly closed|Timeout, server",
     "the connection to the golden client failed or was lost", None),
    (r"rsync: (command )?not found|rsync: not found|sh: \d*:? ?rsync",
     "rsync is not installed on the golden client", "install rsync there"),
)


def explain(rc: int, messages: list[str], what: str) -> CaptureError:
    text = "\n".join(messages)
    for pattern, meaning, hint in _CAUSES:
        if re.search(pattern, text):
            cls = DiskFull if "No space" in pattern else CaptureError
            return cls(f"{what}: {meaning}", hint=hint, returncode=rc)
    if rc == 20:
        return CaptureError(f"{what}: interrupted")
    errors = [m for m in messages if m.startswith(("rsync:", "rsync error", "ssh:", "@ERROR"))]
    detail = "; ".join((errors or messages)[-3:]) or f"rsync exit code {rc}"
    return CaptureError(f"{what}: {detail[:400]}", returncode=rc)
