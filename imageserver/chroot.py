"""`sysclone image chroot NAME [-- CMD...]`: change an image the safe way.

The command (or a shell) runs in a private copy of the current version --
never in the stored tree, whose files are hard links shared with other
versions (on btrfs the copy is a writable snapshot, which costs nothing) --
with /proc, /sys, /dev, /dev/pts and /run mounted, and daemons
kept from starting (policy-rc.d).  The mounts are always undone, in reverse
order, whatever happens.  If the command succeeds and changed something,
the copy is stored as a new version, sharing its unchanged files with the
old one; a failing command (a non-zero exit) or no change stores nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from imageserver import manifest
from imageserver.names import ImageRef, check_name
from imageserver.seal import NewVersion, Sealed, load_manifest, seal
from imageserver.versions import Versions
from sysclone.errors import SyscloneError
from sysclone.paths import StateRoot
from sysclone.run import interactive, run

# (what, mount argv after "mount", the path inside the tree)
MOUNTS = (
    ("proc", ["-t", "proc", "proc"], "proc"),
    ("sys", ["-t", "sysfs", "sysfs"], "sys"),
    ("dev", ["--bind", "/dev"], "dev"),
    ("dev/pts", ["--bind", "/dev/pts"], "dev/pts"),
    ("run", ["-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs"], "run"),
)
POLICY_RC_D = "#!/bin/sh\n# sysclone image chroot: no daemon starts inside an image\nexit 101\n"


@dataclass(frozen=True)
class ChrootResult:
    sealed: Sealed | None  # None: nothing changed, nothing stored
    changes: int


def _unmount(target: Path) -> None:
    if run(["umount", str(target)], check=False).returncode != 0:
        run(["umount", "-l", str(target)], check=False)  # busy: detach it at least


@contextmanager
def bound(tree: Path) -> Iterator[None]:
    """The runtime filesystems a command in the tree expects, undone in
    reverse order even on failure; directories the image lacks are skipped
    (never created: the image must not change because of this)."""
    with ExitStack() as stack:
        for _what, argv, rel in MOUNTS:
            target = tree / rel
            if not target.is_dir() or target.is_symlink():
                continue
            run(["mount", *argv, str(target)])
            stack.callback(_unmount, target)
        yield


@contextmanager
def no_daemons(tree: Path) -> Iterator[None]:
    sbin = tree / "usr/sbin"
    policy = sbin / "policy-rc.d"
    if not sbin.is_dir() or sbin.is_symlink() or policy.exists() or policy.is_symlink():
        yield
        return
    st = sbin.stat()
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)
        os.utime(sbin, ns=(st.st_atime_ns, st.st_mtime_ns))


def default_shell(tree: Path) -> list[str]:
    for sh in ("/bin/bash", "/bin/sh"):
        if (tree / sh.lstrip("/")).exists():
            return [sh, "-l"] if sh.endswith("bash") else [sh]
    raise SyscloneError(f"no shell in {tree}", hint="pass a command after --")


def chroot_image(state: StateRoot, name: str, command: Sequence[str] = (),
                 progress: Callable[[str], None] | None = None) -> ChrootResult:
    say = progress or (lambda line: None)
    v = Versions(state)
    check_name(name)
    with v.lock(name):
        n, tree = v.resolve(ImageRef(name))
        with v.stage(name, seed=tree) as s:
            if s.seed is None:
                say(f"copying {name}{f'@{n}' if n else ''} to a private tree")
                run(["cp", "-a", "--reflink=auto", f"{tree}/.", f"{s.tree}/"])
            argv = list(command) or default_shell(s.tree)
            with bound(s.tree), no_daemons(s.tree):
                rc = interactive(["chroot", str(s.tree), *argv])
            if rc != 0:
                raise SyscloneError(f"{argv[0]} exited with status {rc} in image {name}: "
                                    "nothing was stored, the image is unchanged")
            before = load_manifest(v.version_dir(name, n)) if n is not None else None
            before = before if before is not None else manifest.build(tree).entries
            changes = manifest.compare(before, manifest.build(s.tree).entries)
            if not changes:
                return ChrootResult(None, 0)
            sealed = seal(v, s, NewVersion(
                origin="chroot", source=f"{name}@{n}" if n else name,
                details={"command": argv, "changes": len(changes)}, dedupe=True,
                files=_carry(v.version_dir(name, n) if n else None)), say)
    return ChrootResult(sealed, len(changes))


CARRIED = ("layout.xml", "facts.json", "modules", "modaliases")


def _carry(version_dir: Path | None) -> dict[str, bytes]:
    """What the old version knew about its golden client still holds."""
    if version_dir is None:
        return {}
    return {f: (version_dir / f).read_bytes() for f in CARRIED if (version_dir / f).is_file()}
