"""Which extra options a layout may pass to mkfs and lvcreate.

A layout is data from the image server: its mkfs_opts and lv_options end
up on a command line run as root.  Only options that shape the new
filesystem or volume are allowed; options that name another device
(mkfs.xfs -l logdev=, mke2fs -J device=, mkfs.btrfs's extra devices,
lvcreate's PV arguments), read or write other files (-d, -p, --rootdir),
change what sysclone decides (UUID, size) or make the command do nothing
(-n) are refused.  Values are plain words: never a path.

The label option (-L, mkfs.fat's -n) is the one exception kept for
SystemImager layouts and captured ones, which set labels that way: it is
read as the filesystem's label (`label_of`) and sysclone passes it itself.

`problems(tool, text)` lists what is wrong, each with the tool's allowed
options as the hint.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

# A plain value: numbers, sizes, words, comma lists; no "/", no spaces.
_WORD = re.compile(r"[A-Za-z0-9_.,=:+^-]+")


@dataclass(frozen=True)
class Opt:
    value: bool = False  # takes a value
    subopts: tuple[str, ...] = ()  # allowed keys of a key[=value],... value
    choices: tuple[str, ...] = ()  # the only values allowed


# Sub-option keys per option, as each tool documents them.
_MKE2FS_E = ("stride", "stripe_width", "stripe-width", "resize", "lazy_itable_init",
             "lazy_journal_init", "packed_meta_blocks", "num_backup_sb", "test_fs", "discard",
             "nodiscard", "quotatype", "encoding", "encoding_flags", "assume_storage_prezeroed",
             "no_copy_xattrs")
_XFS_D = ("agcount", "agsize", "su", "sw", "sunit", "swidth", "noalign", "cowextsize",
          "extszinherit", "rtinherit", "projinherit", "daxinherit")

SPECS: dict[str, dict[str, Opt]] = {
    "mke2fs": {
        "-b": Opt(True), "-C": Opt(True), "-E": Opt(True, _MKE2FS_E), "-g": Opt(True),
        "-G": Opt(True), "-i": Opt(True), "-I": Opt(True), "-j": Opt(),
        "-J": Opt(True, ("size", "fast_commit_size")), "-m": Opt(True), "-M": Opt(True),
        "-N": Opt(True), "-o": Opt(True), "-O": Opt(True), "-q": Opt(), "-r": Opt(True),
        "-T": Opt(True), "-e": Opt(True), "-F": Opt(),
    },
    "mkfs.xfs": {
        "-b": Opt(True, ("size",)),
        "-m": Opt(True, ("crc", "finobt", "rmapbt", "reflink", "bigtime", "inobtcount")),
        "-d": Opt(True, _XFS_D),
        "-i": Opt(True, ("size", "maxpct", "align", "sparse", "attr", "projid32bit",
                         "nrext64")),
        "-l": Opt(True, ("size", "version", "su", "sunit", "lazy-count", "internal")),
        "-n": Opt(True, ("size", "version", "ftype")),
        "-r": Opt(True, ("extsize",)),
        "-s": Opt(True, ("size",)), "-K": Opt(), "-f": Opt(), "-q": Opt(),
    },
    "mkfs.btrfs": {
        "-d": Opt(True), "--data": Opt(True), "-m": Opt(True), "--metadata": Opt(True),
        "-n": Opt(True), "--nodesize": Opt(True), "-s": Opt(True), "--sectorsize": Opt(True),
        "-O": Opt(True), "--features": Opt(True), "-R": Opt(True),
        "--runtime-features": Opt(True), "--csum": Opt(True), "--checksum": Opt(True),
        "-M": Opt(), "--mixed": Opt(), "-K": Opt(), "--nodiscard": Opt(), "-f": Opt(),
        "-q": Opt(),
    },
    "mkfs.fat": {
        "-F": Opt(True), "-S": Opt(True), "-s": Opt(True), "-r": Opt(True), "-R": Opt(True),
        "-f": Opt(True), "-h": Opt(True), "-a": Opt(), "-I": Opt(), "-D": Opt(True),
        "-v": Opt(),
    },
    "mkswap": {"-p": Opt(True), "--pagesize": Opt(True), "-f": Opt(), "--force": Opt()},
    "lvcreate": {
        # The volume types the boot environment's device-mapper modules
        # serve (bootenv.modules "dm"): no thin pools, caches or VDO.
        "--type": Opt(True, choices=("linear", "striped", "mirror", "raid0", "raid1", "raid4",
                                     "raid5", "raid6", "raid10")),
        "-m": Opt(True), "--mirrors": Opt(True), "-i": Opt(True),
        "--stripes": Opt(True), "-I": Opt(True), "--stripesize": Opt(True),
        "-r": Opt(True), "--readahead": Opt(True), "-C": Opt(True), "--contiguous": Opt(True),
        "--alloc": Opt(True, choices=("contiguous", "cling", "normal", "anywhere", "inherit")),
        "-R": Opt(True), "--regionsize": Opt(True), "--nosync": Opt(),
        "-W": Opt(True), "--wipesignatures": Opt(True), "-Z": Opt(True), "--zero": Opt(True),
        "--addtag": Opt(True),
    },
}

# Options that are not allowed for a reason worth saying.
_WHY = {
    ("mke2fs", "-U"): "the UUID is the plan's (mount_dev=\"UUID=...\" to choose it)",
    ("mke2fs", "-d"): "it copies files from the installer into the filesystem",
    ("mke2fs", "-l"): "it reads a bad-blocks file from the installer",
    ("mke2fs", "-n"): "it makes mke2fs create nothing",
    ("mke2fs", "-S"): "it rewrites superblocks of an existing filesystem",
    ("mkfs.xfs", "-p"): "it copies files from the installer into the filesystem",
    ("mkfs.xfs", "-N"): "it makes mkfs.xfs create nothing",
    ("mkfs.btrfs", "-U"): "the UUID is the plan's", ("mkfs.btrfs", "--uuid"): "the UUID is "
                                                                             "the plan's",
    ("mkfs.btrfs", "-r"): "it copies files from the installer into the filesystem",
    ("mkfs.btrfs", "--rootdir"): "it copies files from the installer into the filesystem",
    ("mkfs.btrfs", "-b"): "the size is the partition's",
    ("mkfs.fat", "-i"): "the volume id is the plan's", ("mkfs.fat", "-C"): "it creates a file",
    ("mkswap", "-U"): "the UUID is the plan's",
    ("lvcreate", "-n"): "the name is the <lv>'s", ("lvcreate", "-L"): "the size is the <lv>'s",
    ("lvcreate", "-l"): "the size is the <lv>'s",
}

# Each tool's label option: accepted, and read as the filesystem's label.
LABEL_OPTIONS = {"mke2fs": ("-L",), "mkfs.xfs": ("-L",), "mkfs.btrfs": ("-L", "--label"),
                 "mkfs.fat": ("-n",), "mkswap": ("-L", "--label")}

# Which command creates each filesystem.
TOOL_OF_FS = {"ext2": "mke2fs", "ext3": "mke2fs", "ext4": "mke2fs", "xfs": "mkfs.xfs",
              "btrfs": "mkfs.btrfs", "vfat": "mkfs.fat", "fat": "mkfs.fat", "fat16": "mkfs.fat",
              "fat32": "mkfs.fat", "msdos": "mkfs.fat", "swap": "mkswap"}


def _spec(tool: str) -> dict[str, Opt]:
    return {**SPECS[tool], **{o: Opt(True) for o in LABEL_OPTIONS.get(tool, ())}}


def split_label(tool: str, text: str | None) -> tuple[str | None, list[str]]:
    """(the label the options set, the options without it)."""
    tokens = shlex.split(text or "")
    names = LABEL_OPTIONS.get(tool, ())
    label, rest = None, []
    spec = _spec(tool)
    i = 0
    while i < len(tokens):
        name, value = _split(tokens[i], spec)
        if name in names:
            if value is None and i + 1 < len(tokens):
                i += 1
                value = tokens[i]
            label = value
        else:
            rest.append(tokens[i])
        i += 1
    return label, rest


def _split(token: str, spec: dict[str, Opt]) -> tuple[str, str | None]:
    """(option, value glued to it): --opt=value, or -bVALUE for a short
    option that takes a value."""
    if token.startswith("--") and "=" in token:
        name, value = token.split("=", 1)
        return name, value
    if not token.startswith("--") and len(token) > 2 and spec.get(token[:2], Opt()).value:
        return token[:2], token[2:]
    return token, None


def _value_problem(tool: str, option: str, opt: Opt, value: str) -> str | None:
    if option in LABEL_OPTIONS.get(tool, ()):
        return None  # a label: checked as one (validate_fsinfo)
    if not _WORD.fullmatch(value):
        return f"{tool} {option} {value!r}: values are plain words, never paths"
    if opt.choices and value not in opt.choices:
        return f"{tool} {option} {value}: not allowed (allowed: {', '.join(opt.choices)})"
    if opt.subopts:
        for item in value.split(","):
            key = item.split("=", 1)[0]
            if key and key not in opt.subopts:
                return (f"{tool} {option} {key}: not allowed (allowed: "
                        f"{', '.join(opt.subopts)})")
    return None


def problems(tool: str, text: str) -> list[str]:
    """What is wrong with extra options `text` for `tool` (mke2fs, mkfs.xfs,
    mkfs.btrfs, mkfs.fat, mkswap, lvcreate); empty when they are fine."""
    spec = _spec(tool)
    try:
        tokens = shlex.split(text)
    except ValueError as e:
        return [f"{text!r}: {e}"]
    out = []
    pending = list(tokens)
    while pending:
        token = pending.pop(0)
        if not token.startswith("-") or token == "-":
            out.append(f"{token!r} is not an option: extra {tool} arguments would name "
                       "another device or a size")
            continue
        name, value = _split(token, spec)
        opt = spec.get(name)
        if opt is None:
            why = _WHY.get((tool, name))
            out.append(f"{tool} {name} is not allowed" + (f": {why}" if why else ""))
            if value is None and pending and not pending[0].startswith("-"):
                pending.pop(0)  # its value: one problem per option is enough
            continue
        if opt.value and value is None:
            value = pending.pop(0) if pending else None
            if value is None:
                out.append(f"{tool} {name} needs a value")
                continue
        elif not opt.value and value is not None:
            out.append(f"{tool} {name} takes no value")
            continue
        if value is not None:
            problem = _value_problem(tool, name, opt, value)
            if problem:
                out.append(problem)
    return out
