"""Checks of an installed system that do not trust the code under test:
rsync's own itemized dry run, blkid, the on-disk partition table."""

from __future__ import annotations

import subprocess
from pathlib import Path


def sh(*argv: str, check: bool = True) -> str:
    r = subprocess.run(argv, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)[:300]} failed ({r.returncode}): "
                             f"{r.stdout.strip()[-2000:]}\n{r.stderr.strip()[-2000:]}")
    return r.stdout


def itemized_differences(image: Path, installed: Path | str,
                         extra: tuple[str, ...] = ()) -> dict[str, str]:
    """path -> rsync itemize code, for every file whose content, type, owner,
    permissions, ACLs or xattrs differ, or that exists on one side only.
    Directory timestamp changes alone are not differences.  `installed` may
    be a remote root (`root@HOST:`, with `-e ssh...` in `extra`)."""
    out = sh("rsync", "-aHAXn", "--checksum", "--numeric-ids", "--delete", "-i", *extra,
             f"{image}/", f"{installed}/")
    diffs = {}
    for line in out.splitlines():
        if not line.strip():
            continue
        code, name = line[:11], line[12:].rstrip("/")
        if code.startswith(".d") and set(code[2:]) <= {".", "t", " "}:
            continue  # a directory whose mtime moved because a file in it changed
        diffs[name] = code.strip()
    return diffs


def fstab_uuids(fstab_text: str) -> dict[str, str]:
    """mountpoint (or 'swap') -> UUID, from an fstab."""
    out = {}
    for line in fstab_text.splitlines():
        f = line.split()
        if len(f) >= 3 and not f[0].startswith("#") and f[0].startswith("UUID="):
            out["swap" if f[2] == "swap" else f[1]] = f[0][5:]
    return out


def blkid_uuid(device: str) -> str:
    return sh("blkid", "-s", "UUID", "-o", "value", device).strip()


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def initrd_member(initrd: Path, member: str) -> str | None:
    """One file of a Debian initrd (an optional uncompressed early archive,
    then a zstd one), read with the host's own zstd and cpio."""
    data = initrd.read_bytes()
    start = data.find(ZSTD_MAGIC)
    if start < 0:
        raise AssertionError(f"{initrd} has no zstd archive")
    raw = subprocess.run(["zstd", "-dc"], input=data[start:], capture_output=True,
                         check=True).stdout
    names = subprocess.run(["cpio", "-t", "--quiet"], input=raw, capture_output=True,
                           check=True).stdout.decode().split()
    if member not in names:
        return None
    return subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", member], input=raw,
                          capture_output=True, check=True).stdout.decode()
