"""The manifest of an image version: every path, what it is, and a hash.

Written when a version is stored; `image verify` walks the tree again and
compares (so a stored version provably never changed), `image diff` compares
two manifests without touching the trees.  One JSON object per line, gzip'd,
sorted by path:

    {"p": "/usr/bin/ping", "t": "f", "m": 493, "u": 0, "g": 0, "s": 90568,
     "mt": 1700000000123456789, "x": {"security.capability": "<sha256>"},
     "h": "<sha256 of the content>"}

t is f (file), d, l (symlink, "l": target), c/b (device, "r": "maj:min"),
p (fifo) or s (socket); "k" names the first path of a hard-link group.  ACLs
are the system.posix_acl_* xattrs.  Names that are not UTF-8 are kept as
Python's surrogate escapes, which JSON carries as \\udcXX.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring_ascii as _str
from operator import attrgetter
from pathlib import Path
from typing import Any

# By the format bits of st_mode: one lookup, not a test per type (a tenth of
# the manifest's walk went to trying them in turn).
_TYPES = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
          stat.S_IFBLK: "b", stat.S_IFIFO: "p", stat.S_IFSOCK: "s"}


def file_type(mode: int) -> str:
    return _TYPES.get(stat.S_IFMT(mode), "?")


@dataclass(frozen=True, slots=True)
class Entry:
    path: str  # "/" for the tree itself, "/etc/passwd" below it
    type: str
    mode: int  # permission bits, set-id and sticky included
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0  # regular files only
    sha256: str | None = None
    target: str | None = None  # symlinks
    rdev: str | None = None  # devices
    xattrs: tuple[tuple[str, str], ...] = ()  # (name, sha256 of the value), sorted
    link: str | None = None  # hard link: the group's first path

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"p": self.path, "t": self.type, "m": self.mode, "u": self.uid,
                                "g": self.gid, "mt": self.mtime_ns}
        if self.type == "f":
            d["s"] = self.size
            d["h"] = self.sha256
        for key, value in (("l", self.target), ("r", self.rdev), ("k", self.link)):
            if value is not None:
                d[key] = value
        if self.xattrs:
            d["x"] = dict(self.xattrs)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        return cls(path=str(d["p"]), type=str(d["t"]), mode=int(d["m"]), uid=int(d["u"]),
                   gid=int(d["g"]), mtime_ns=int(d["mt"]), size=int(d.get("s") or 0),
                   sha256=_opt(d.get("h")), target=_opt(d.get("l")), rdev=_opt(d.get("r")),
                   xattrs=tuple(sorted((str(k), str(v)) for k, v in (d.get("x") or {}).items())),
                   link=_opt(d.get("k")))


def _opt(v: object) -> str | None:
    return None if v is None else str(v)


def sha256_file(path: str | Path) -> str:
    # file_digest reads into one buffer it reuses: 8 % less time over the
    # demo image's files than a new bytes object per read.
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


Xattrs = tuple[tuple[str, str], ...]  # (name, sha256 of the value), sorted


def read_xattrs(path: str) -> Xattrs:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:  # a filesystem without xattr support
        return ()
    out = []
    for n in names:
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
        except OSError:
            continue
        out.append((n, hashlib.sha256(v).hexdigest()))
    return tuple(sorted(out))


# Given a path below the tree and its lstat, the content hash if it is
# already known (a file hard-linked from the previous version), else None.
Reuse = Callable[[str, os.stat_result], str | None]
# The same for a new file read while it was copied (imageserver.prehash):
# its hash, and its extended attributes if they are known still.
Prehashed = Callable[[str, os.stat_result], "tuple[str, Xattrs | None] | None"]


@dataclass
class Walk:
    """A manifest as it is built, with what the store wants to know about
    the files' inodes (sharing with the previous version, disk use)."""

    entries: list[Entry] = field(default_factory=list)
    reused: int = 0  # regular files whose hash came from the previous version
    hashed: int = 0  # regular files read and hashed here
    prehashed: int = 0  # new files hashed while they were copied
    new_bytes: int = 0  # allocated bytes of inodes not shared with it


_name = attrgetter("name")


def _listing(root: str, rel: str) -> list[tuple[str, os.stat_result]]:
    with os.scandir(root + rel if rel else root) as it:
        entries = sorted(it, key=_name)
    return [(f"{rel}/{e.name}", e.stat(follow_symlinks=False)) for e in entries]


def walk_tree(tree: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of the tree and everything below it, depth first in
    name order ("/a", "/a/b", "/a-b", "/b"), never following symlinks.  An
    explicit stack: trees can be deeper than Python's recursion limit."""
    root = os.fspath(tree)
    yield "/", os.lstat(root)
    stack = [iter(_listing(root, ""))]
    while stack:
        for rel, st in stack[-1]:
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(iter(_listing(root, rel)))
                break
        else:
            stack.pop()


def build(tree: Path, reuse: Reuse | None = None,
          on_stat: Callable[[str, os.stat_result], None] | None = None,
          workers: int | None = None, prehashed: Prehashed | None = None) -> Walk:
    """Describe every path of `tree`, hashing regular files unless `reuse`
    knows the hash (a file shared with a stored version) or `prehashed` does
    (a new file hashed while it was copied).  `on_stat` sees every lstat.
    Files are hashed by `workers` threads (hashlib and reads release the
    GIL): the walk is cheap, reading the data is not."""
    root = os.fspath(tree)
    w = Walk()
    links: dict[tuple[int, int], str] = {}
    leaders: dict[str, int] = {}  # first path of a hard-link group -> its entry
    to_hash: list[tuple[int, str]] = []  # (entry index, full path)
    followers: list[tuple[int, str]] = []  # (entry index, its group's first path)
    for rel, st in walk_tree(tree):
        if on_stat:
            on_stat(rel, st)
        full = root + rel if rel != "/" else root
        t = file_type(st.st_mode)
        link = sha = target = rdev = None
        xattrs: Xattrs | None = None
        if t != "d" and st.st_nlink > 1:
            link = links.setdefault((st.st_dev, st.st_ino), rel)
            if link == rel:
                link = None
        index = len(w.entries)
        if t == "f":
            if link is not None:
                followers.append((index, link))
            else:
                sha = reuse(rel, st) if reuse else None
                if sha is not None:
                    w.reused += 1
                else:
                    w.new_bytes += st.st_blocks * 512
                    known = prehashed(rel, st) if prehashed else None
                    if known is None:
                        to_hash.append((index, full))
                    else:
                        sha, xattrs = known
                        w.prehashed += 1
                if st.st_nlink > 1:
                    leaders[rel] = index
        elif t == "l":
            target = os.readlink(full)
        elif t in ("c", "b"):
            rdev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        w.entries.append(Entry(
            path=rel, type=t, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
            mtime_ns=st.st_mtime_ns, size=st.st_size if t == "f" else 0, sha256=sha,
            target=target, rdev=rdev, xattrs=read_xattrs(full) if xattrs is None else xattrs,
            link=link))
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        for (index, _), digest in zip(to_hash, pool.map(sha256_file, [f for _, f in to_hash]),
                                      strict=True):
            w.entries[index] = replace(w.entries[index], sha256=digest)
    w.hashed = len(to_hash)
    for index, first in followers:
        w.entries[index] = replace(w.entries[index], sha256=w.entries[leaders[first]].sha256)
    return w


# --- files ------------------------------------------------------------------
def line(e: Entry) -> str:
    """An entry as a line of a manifest file (and of what entries_sha256
    is taken over): exactly json.dumps(e.to_dict(), separators=(",", ":")),
    which stored manifests and their digests were written with, built
    directly -- 23 ms of every capture's sealing went to the dict and the
    encoder's walk of it, for the demo image's 10,900 paths, and 7 ms so."""
    out = (f'{{"p":{_str(e.path)},"t":{_str(e.type)},"m":{e.mode},"u":{e.uid},'
           f'"g":{e.gid},"mt":{e.mtime_ns}')
    if e.type == "f":
        out += f',"s":{e.size},"h":{"null" if e.sha256 is None else _str(e.sha256)}'
    if e.target is not None:
        out += f',"l":{_str(e.target)}'
    if e.rdev is not None:
        out += f',"r":{_str(e.rdev)}'
    if e.link is not None:
        out += f',"k":{_str(e.link)}'
    if e.xattrs:
        out += ',"x":{' + ",".join(f"{_str(k)}:{_str(v)}" for k, v in dict(e.xattrs).items()) \
            + "}"
    return out + "}\n"


def save(entries: Iterable[Entry], path: Path, lines: Iterable[str] | None = None) -> str:
    """Write a manifest (`lines`: the entries' lines, made already);
    returns the sha256 of the file written."""
    tmp = path.with_name(path.name + ".tmp")
    # Level 1: the sha256s, most of a manifest, do not compress at any
    # level; the demo image's whole manifest is 505 KiB instead of 462, and
    # is written in 9 ms instead of 22, which every first capture waits for.
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=1) as f:
        f.writelines(map(line, entries) if lines is None else lines)
    tmp.replace(path)
    return sha256_file(path)


def load(path: Path) -> list[Entry]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [Entry.from_dict(json.loads(line)) for line in f if line.strip()]


# --- comparing ----------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # added | removed | changed
    what: tuple[str, ...] = ()  # for changed: type, content, mode, owner, xattrs, ...

    def describe(self) -> str:
        p = self.path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        p = p.replace("\n", "\\n")
        if self.kind == "changed":
            return f"changed  {p}  ({', '.join(self.what)})"
        return f"{self.kind:<8} {p}"


def differences(a: Entry, b: Entry) -> tuple[str, ...]:
    if a.type != b.type:
        return ("type",)
    what = []
    if a.sha256 != b.sha256 or a.size != b.size:
        what.append("content")
    if a.mode != b.mode:
        what.append("mode")
    if (a.uid, a.gid) != (b.uid, b.gid):
        what.append("owner")
    if a.xattrs != b.xattrs:
        what.append("xattrs")
    if a.target != b.target:
        what.append("link target")
    if a.rdev != b.rdev:
        what.append("device number")
    if a.link != b.link:
        what.append("hard link")
    if a.mtime_ns != b.mtime_ns:
        what.append("mtime")
    return tuple(what)


def compare(old: Iterable[Entry], new: Iterable[Entry], *,
            ignore: frozenset[str] = frozenset()) -> list[Change]:
    """What changed from `old` to `new`, in path order.  `ignore` names
    kinds of change to leave out (e.g. "mtime" for a content-only diff)."""
    a = {e.path: e for e in old}
    b = {e.path: e for e in new}
    out = []
    for p in sorted(a.keys() | b.keys()):
        if p not in b:
            out.append(Change(p, "removed"))
        elif p not in a:
            out.append(Change(p, "added"))
        else:
            what = tuple(w for w in differences(a[p], b[p]) if w not in ignore)
            if what:
                out.append(Change(p, "changed", what))
    return out
