"""A version's manifest on disk: whole, or what changed since an older one.

    manifest.jsonl.gz        every path (imageserver/manifest.py's format)
    manifest.delta.jsonl.gz  {"base": N}, then the entries added or changed
                             since version N, and {"p": PATH, "gone": 1} for
                             each path removed

A whole manifest costs about 40 bytes a file whatever the compression (a
sha256 does not compress): half a megabyte a version for a small Debian
image, while a new version of it usually differs in a few hundred paths.
So a version whose parent has a manifest stores a delta, unless the chain
behind it is already MAX_CHAIN long (reading a manifest never means reading
more than that many files).  Removing a version first makes the deltas
based on it whole again (`materialize`), so a chain never points at a
version that is gone.  version.json keeps the sha256 of the file
(manifest_sha256) and of the whole list it stands for (entries_sha256);
`image verify` checks both.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from imageserver import manifest
from imageserver.manifest import Entry

FULL = "manifest.jsonl.gz"
DELTA = "manifest.delta.jsonl.gz"
MAX_CHAIN = 16
T = TypeVar("T")


class Unreadable(ValueError):
    """A manifest file that cannot be read: truncated, not gzip, not the
    format.  Names the file (gzip and json errors do not)."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: damaged, cannot be read ({why})")
        self.path = path


def _reading(path: Path, read: Callable[[], T]) -> T:
    try:
        return read()
    except Unreadable:
        raise
    except FileNotFoundError:
        raise
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError,
            AttributeError) as e:
        # EOFError: a truncated gzip; ValueError: bad JSON or UTF-8;
        # KeyError/TypeError/AttributeError: JSON of another shape.
        why = e.strerror if isinstance(e, OSError) and e.strerror else \
            str(e) or type(e).__name__
        raise Unreadable(path, why) from None


def lines_of(entries: list[Entry]) -> list[str]:
    """Each entry's manifest line, made once for both save() and
    entries_digest() (each made them itself: 0.03 s of a capture's 0.19 s
    sealing, for the demo image's 10,900 paths)."""
    return [manifest.line(e) for e in entries]


def entries_digest(entries: list[Entry], lines: list[str] | None = None) -> str:
    """The sha256 of a manifest's entries as whole-manifest lines, however
    the file holding them is written.  `lines`: lines_of(entries)."""
    lines = lines_of(entries) if lines is None else lines
    h = hashlib.sha256()
    for i in sorted(range(len(entries)), key=lambda i: _order(entries[i].path)):
        h.update(lines[i].encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def file_of(vdir: Path) -> Path | None:
    for name in (FULL, DELTA):
        if (vdir / name).is_file():
            return vdir / name
    return None


def base_of(vdir: Path) -> int | None:
    """The version a delta manifest is based on (None: a whole one)."""
    if (vdir / FULL).is_file() or not (vdir / DELTA).is_file():
        return None

    def read() -> int:
        with gzip.open(vdir / DELTA, "rt", encoding="utf-8") as f:
            return int(json.loads(f.readline())["base"])
    return _reading(vdir / DELTA, read)


def chain_length(vdir: Path) -> int:
    """How many delta files lie between this version and a whole manifest."""
    n = 0
    while (base := base_of(vdir)) is not None:
        n += 1
        vdir = vdir.parent / str(base)
    return n


def load(vdir: Path) -> list[Entry] | None:
    """A version's entries, deltas applied; None if it has no manifest."""
    deltas: list[Path] = []
    d = vdir
    while (base := base_of(d)) is not None:
        deltas.append(d / DELTA)
        if len(deltas) > MAX_CHAIN * 4:
            raise ValueError(f"{vdir}: a manifest chain that does not end")
        d = d.parent / str(base)
    if not (d / FULL).is_file():
        if deltas:
            raise FileNotFoundError(f"{d / FULL}: the base of {deltas[-1]} is missing")
        return None
    full = d / FULL
    by_path = {e.path: e for e in _reading(full, lambda: manifest.load(full))}
    for delta in reversed(deltas):
        _reading(delta, partial(_apply, delta, by_path))
    return [by_path[p] for p in sorted(by_path, key=_order)]


def _apply(delta: Path, by_path: dict[str, Entry]) -> None:
    with gzip.open(delta, "rt", encoding="utf-8") as f:
        f.readline()  # {"base": N}
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("gone"):
                by_path.pop(str(row["p"]), None)
            else:
                by_path[str(row["p"])] = Entry.from_dict(row)


def _order(path: str) -> tuple[str, ...]:
    """Manifest order (imageserver.manifest.walk_tree): a directory's
    contents right after it, by name."""
    return tuple(path.split("/"))


def save(vdir: Path, entries: list[Entry], base: tuple[int, list[Entry]] | None,
         lines: list[str] | None = None) -> str:
    """Write the manifest of the version being made in `vdir`: a delta
    against `base` (its number and entries) if given, else whole.  `lines`:
    lines_of(entries).  Returns the sha256 of the file written."""
    lines = lines_of(entries) if lines is None else lines
    if base is None:
        return manifest.save(entries, vdir / FULL, lines)
    number, old = base
    before = {e.path: e for e in old}
    now = {e.path for e in entries}
    path = vdir / DELTA
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
        f.write(json.dumps({"base": number}) + "\n")
        for e, text in zip(entries, lines, strict=True):
            if before.get(e.path) != e:
                f.write(text)
        for p in sorted(before.keys() - now):
            f.write(json.dumps({"p": p, "gone": 1}, separators=(",", ":")) + "\n")
    tmp.replace(path)
    return manifest.sha256_file(path)


def materialize(vdir: Path) -> str | None:
    """Write a delta manifest out whole (its base is about to go); returns
    the new file's sha256, or None if it was whole already.  The delta
    stays until drop_delta(): while both are there, the whole one is read."""
    if base_of(vdir) is None:
        return None
    entries = load(vdir)
    assert entries is not None
    return manifest.save(entries, vdir / FULL)


def drop_delta(vdir: Path) -> None:
    if (vdir / FULL).is_file():
        (vdir / DELTA).unlink(missing_ok=True)
