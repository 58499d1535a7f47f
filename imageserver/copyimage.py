"""`sysclone image copy SRC[@N] DEST` (si_cpimage).

A stored version never changes, so a copy of one is hard links to its
files (on btrfs, a snapshot of it): instant, and no extra space.  DEST gets
a new version (version 1 if it is new); what the source version knew
(layout, facts, modules) comes along.  An image from before versions is a
mutable directory: it is copied for real (reflinks where the filesystem
has them).
"""

from __future__ import annotations

from collections.abc import Callable

from imageserver.chroot import CARRIED
from imageserver.names import ImageRef, check_name
from imageserver.seal import NewVersion, Sealed, load_manifest, seal
from imageserver.versions import Versions
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.run import run


def copy_image(state: StateRoot, src: ImageRef, dest: str,
               progress: Callable[[str], None] | None = None) -> Sealed:
    say = progress or (lambda line: None)
    check_name(dest)
    if dest == src.name:
        raise ConfigError(f"image copy: {src} and {dest} are the same image",
                          hint="use `image rollback` to make an old version current")
    v = Versions(state)
    if not v.exists(src.name):
        raise v.unknown(src.name)
    with v.lock(src.name), v.lock(dest):
        n, tree = v.resolve(src)
        with v.stage(dest, seed=tree) as s:
            say(f"copying {src.name}{f'@{n}' if n else ''} to {dest}")
            hashes = None
            if s.seed is None:
                run(["cp", "-a", "--reflink=auto" if n is None else "--link", f"{tree}/.",
                     f"{s.tree}/"])
            if n is not None:
                entries = load_manifest(v.version_dir(src.name, n))
                hashes = (tree, entries) if entries is not None else None
            vdir = v.version_dir(src.name, n) if n else None
            files = {f: (vdir / f).read_bytes() for f in CARRIED
                     if vdir is not None and (vdir / f).is_file()}
            return seal(v, s, NewVersion(origin="copy", source=f"{src.name}@{n}" if n else
                                         src.name, files=files, dedupe=True,
                                         hashes_from=hashes), say)
