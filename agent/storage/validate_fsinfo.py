"""Layout checks: the fstab lines and the filesystems they create or keep
(see `validate`).

Mount points come from the layout and are joined onto the install target:
they must be clean absolute paths (no "..", no empty or "." components,
nothing fstab cannot hold).  A device is formatted once, except that
several lines may mount subvolumes (options subvol=...) of one btrfs.  A
filesystem kept with format="no" must sit on a partition of a disk whose
table is kept (label_type="none") and carry the UUID or label the plan
checks on the disk before anything is written.
"""

from __future__ import annotations

import re
import shlex

from agent.storage.checker import Checker
from agent.storage.checker import fsinfo_name as _fsinfo
from agent.storage.mkfsopts import TOOL_OF_FS
from agent.storage.mkfsopts import problems as option_problems
from agent.storage.model import (
    FAT_FS,
    FORMATTABLE_FS,
    MOUNT_ONLY_FS,
    ROOT_FS,
    SWAP_MOUNTPOINTS,
    FsEntry,
    LabelType,
)

_ROOT_OK = ROOT_FS | {"nfs", "nfs4"}
# Longest label each mkfs takes (bytes), and characters none of them like
# in a label fstab names by LABEL=.
LABEL_MAX = {"ext2": 16, "ext3": 16, "ext4": 16, "xfs": 12, "btrfs": 255, "swap": 16,
             "vfat": 11, "fat": 11, "fat16": 11, "fat32": 11, "msdos": 11}
_LABEL_BAD = re.compile(r"[\s/\\\"'\x00-\x1f\x7f]")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_FAT_ID = re.compile(r"[0-9a-f]{4}-[0-9a-f]{4}")
_MP_BAD = re.compile(r"[\s\\\x00-\x1f\x7f]")


def mountpoint_problem(mp: str) -> tuple[str, str | None] | None:
    """(problem, hint) when `mp` cannot safely be joined onto the target."""
    if not mp.startswith("/"):
        return "is not an absolute path", 'use a path, or "swap" for swap space'
    if _MP_BAD.search(mp):
        return "contains spaces, backslashes or control characters", \
            "fstab fields are single words"
    parts = mp.split("/")[1:]
    if mp != "/" and ("" in parts or "." in parts or ".." in parts):
        return 'has empty, "." or ".." components', \
            "write the plain path, e.g. /var/log (it must stay below /)"
    if len(mp) > 1024:
        return "is too long", None
    return None


def check(c: Checker) -> None:
    lines: set[int] = set()
    mounts: dict[str, FsEntry] = {}
    labels: dict[str, FsEntry] = {}
    uuids: dict[str, FsEntry] = {}
    for e in c.layout.fsinfo:
        where = _fsinfo(e)
        if e.line is not None:
            if e.line in lines:
                c.add(e.src_line, f"{where}: line {e.line} is used twice",
                      "line numbers order /etc/fstab; make them unique")
            lines.add(e.line)
        if e.is_comment:
            if any(v is not None for v in (e.mkfs_opts, e.options, e.dump, e.passno, e.format,
                                           e.label)):
                c.add(e.src_line, f"{where} has mount fields but no device, mount point or "
                                  "filesystem", "a line with only comment= is an fstab comment")
            continue
        missing = [n for n, v in (("real_dev", e.fstab_device), ("mp", e.mountpoint),
                                  ("fs", e.fs)) if v is None]
        if missing:
            c.add(e.src_line, f"{where} lacks {', '.join(missing)}")
            continue
        assert e.mountpoint is not None and e.fs is not None
        filesystem(c, e, where)
        mp = e.mountpoint
        if mp in SWAP_MOUNTPOINTS:
            if not e.is_swap and mp == "swap":
                c.add(e.src_line, f'{where}: mp="swap" but fs="{e.fs}"',
                      'swap space needs fs="swap"')
        elif (bad := mountpoint_problem(mp)) is not None:
            c.add(e.src_line, f"{where}: mount point {mp!r} {bad[0]}", bad[1])
        elif mp in mounts:
            c.add(e.src_line, f"{where}: {mp} is mounted twice (also line {mounts[mp].line})")
        else:
            mounts[mp] = e
        if e.is_swap and mp not in SWAP_MOUNTPOINTS:
            c.add(e.src_line, f"{where}: swap space mounted on {mp}", 'use mp="swap"')
        if e.options is not None and len(e.options.split()) != 1:
            c.add(e.src_line, f"{where}: mount options {e.options!r} contain spaces",
                  "fstab options are one comma-separated word")
        if e.formats or e.format is False:
            identity(c, e, where, labels, uuids)
    root = mounts.get("/")
    if root is None:
        # At the first fstab line: where the root's line belongs.
        first = next((e.src_line for e in c.layout.fsinfo), None)
        c.add(first, "no <fsinfo> mounts /", 'add <fsinfo mp="/" .../> for the root filesystem')
    elif root.fs in (FORMATTABLE_FS | MOUNT_ONLY_FS) - _ROOT_OK:
        # (an unknown fs is reported above, or allowed by format="no")
        c.add(root.src_line, f"{_fsinfo(root)}: / cannot be {root.fs}",
              "use " + ", ".join(sorted(ROOT_FS)))


def filesystem(c: Checker, e: FsEntry, where: str) -> None:
    """Is the fs known, is what gets formatted a device we create, and is
    what is kept one we can check?"""
    fs = e.fs
    assert fs is not None
    if fs not in FORMATTABLE_FS and fs not in MOUNT_ONLY_FS and e.format is not False:
        c.add(e.src_line, f"{where}: unknown filesystem {fs!r}",
              "known: " + ", ".join(sorted(FORMATTABLE_FS)) + '; add format="no" to only '
              "write the fstab line")
        return
    if fs in MOUNT_ONLY_FS and e.format is True:
        c.add(e.src_line, f"{where}: {fs} cannot be formatted", 'drop format="yes"')
        return
    if fs in FORMATTABLE_FS and e.format is False and e.real_dev is not None:
        kept(c, e, where)
        return
    if not e.formats:
        return
    if e.real_dev is None:
        c.add(e.src_line, f"{where}: formatting needs real_dev (mount_dev only names the "
                          "filesystem in fstab)",
              'add real_dev, or format="no" to mount an existing filesystem')
        return
    kind = c.device_kind(e.real_dev)
    if kind is None or kind == "extended":
        what = ("the extended partition" if kind else
                "not a partition, md array, LUKS volume or logical volume of this layout")
        c.add(e.src_line, f"{where}: {e.real_dev} is {what}",
              'format="no" mounts an existing filesystem without formatting it')
        return
    tool = TOOL_OF_FS.get(fs)
    if tool is None:
        c.add(e.src_line, f"{where}: sysclone cannot create {fs} on {e.real_dev}",
              "use one of " + ", ".join(sorted(TOOL_OF_FS)) + '; format="no" keeps an '
              "existing one")
    if e.mkfs_opts is not None and tool is not None:
        for problem in option_problems(tool, e.mkfs_opts):
            c.add(e.src_line, f"{where}: mkfs_opts: {problem}",
                  f"allowed for {fs}: options shaping the filesystem, with plain values")
    elif e.mkfs_opts is not None:
        try:
            shlex.split(e.mkfs_opts)
        except ValueError as exc:
            c.add(e.src_line, f"{where}: mkfs_opts {e.mkfs_opts!r}: {exc}")
    sub = e.subvolume
    if sub is not None and any(part in ("", ".", "..") or len(part.encode()) > 255
                               for part in sub.split("/")):
        c.add(e.src_line, f"{where}: subvolume {sub!r} is not a path inside the filesystem",
              "name it like @home or data/www")
    shared(c, e, where)


def shared(c: Checker, e: FsEntry, where: str) -> None:
    """A device is formatted once; other lines may mount subvolumes of the
    same btrfs."""
    assert e.real_dev is not None
    first = next(x for x in c.layout.fsinfo if x.real_dev == e.real_dev and x.formats)
    if first is e:
        c.use(e.src_line, e.real_dev, f"formatted as {e.fs} (line {e.line})")
        return
    if e.fs != "btrfs" or first.fs != "btrfs":
        c.use(e.src_line, e.real_dev, f"formatted as {e.fs} (line {e.line})")
        return
    same = [x for x in c.layout.fsinfo if x.real_dev == e.real_dev and x.formats]
    mine = same.index(e)
    if e.subvolume is None and any(x.subvolume is None for x in same[:mine]):
        c.add(e.src_line, f"{where}: {e.real_dev} is mounted twice without subvol=",
              "each further line on one btrfs mounts a subvolume: options=\"subvol=NAME\"")
    elif e.subvolume is not None and e.subvolume in [x.subvolume for x in same[:mine]]:
        c.add(e.src_line, f"{where}: subvolume {e.subvolume} of {e.real_dev} is mounted twice")
    if e.mkfs_opts is not None or e.label is not None:
        c.add(e.src_line, f"{where}: mkfs_opts and label belong on the first line of "
                          f"{e.real_dev} (line {first.line}): the filesystem is made once")


def kept(c: Checker, e: FsEntry, where: str) -> None:
    """format="no" on a formattable filesystem: kept, never written."""
    assert e.real_dev is not None
    kind = c.device_kind(e.real_dev)
    if kind is None:
        return  # outside the layout: only its fstab line is written
    hit = c.layout.find_partition(e.real_dev)
    if kind != "partition" or hit is None or hit[0].label is not LabelType.NONE:
        c.add(e.src_line, f'{where}: {e.real_dev} is created anew by this layout, so '
                          'format="no" cannot keep its data',
              'give its disk label_type="none" to keep the partition table, or drop '
              'format="no"')
        return
    if e.fs_uuid is None and e.fs_label is None:
        c.add(e.src_line, f"{where}: {e.real_dev} is kept (format=\"no\") but the layout does "
                          "not say which filesystem it must be",
              'record it: mount_dev="UUID=..." or label="..."; the plan checks it on the '
              "disk before anything is written")
    c.use(e.src_line, e.real_dev, f"kept as {e.fs} (line {e.line})")


def identity(c: Checker, e: FsEntry, where: str, labels: dict[str, FsEntry],
             uuids: dict[str, FsEntry]) -> None:
    """Labels, UUIDs and mount_dev of a filesystem sysclone makes or keeps."""
    fs = e.fs or ""
    md = e.mount_dev
    if md is not None and not md.startswith(("LABEL=", "UUID=", "/dev/")):
        c.add(e.src_line, f"{where}: mount_dev {md!r} is not LABEL=..., UUID=... or a /dev "
                          "path", "PARTUUID= and PARTLABEL= name partitions sysclone makes "
                                  "new ones of")
    if len(set(e.labels)) > 1:
        c.add(e.src_line, f"{where}: the label is given as {' and '.join(map(repr, e.labels))}",
              "label, mount_dev=\"LABEL=...\" and the mkfs label option must agree")
    label = e.fs_label
    if label is not None:
        limit = LABEL_MAX.get(fs)
        if not label or _LABEL_BAD.search(label):
            c.add(e.src_line, f"{where}: label {label!r} is empty or has spaces, quotes, "
                              "slashes or control characters")
        elif limit is not None and len(label.encode()) > limit:
            c.add(e.src_line, f"{where}: label {label!r} is longer than the {limit} bytes "
                              f"{fs} allows")
        elif label in labels and labels[label].real_dev != e.real_dev:
            c.add(e.src_line, f"{where}: label {label!r} is also on line "
                              f"{labels[label].line}", "LABEL= must name one filesystem")
        labels.setdefault(label, e)
    uuid = e.fs_uuid
    if uuid is not None:
        pattern = _FAT_ID if fs in FAT_FS else _UUID
        if not pattern.fullmatch(uuid):
            c.add(e.src_line, f"{where}: {md} is not a {fs} UUID",
                  "XXXX-XXXX for FAT, 8-4-4-4-12 hex digits for the others")
        elif uuid in uuids and uuids[uuid].real_dev != e.real_dev:
            c.add(e.src_line, f"{where}: UUID {uuid} is also on line {uuids[uuid].line}")
        uuids.setdefault(uuid, e)
