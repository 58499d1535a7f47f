"""The `image` actions that manage captures and versions, and `client`.

    image capture NAME --from SOURCE      a golden client into a new version
    image versions NAME | rollback NAME N | prune NAME --keep K
    image diff A B | verify NAME[@N] | chroot NAME [-- CMD...]
    image copy SRC[@N] DEST | rename OLD NEW
    client prepare --server SERVER        on a golden client (si_prepareclient)

sysclone.cli builds the parser and calls add_image_actions() and
add_client_commands(); the handlers here work like the ones there.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot
from sysclone.ui import Ui, print_table

Handler = Callable[[argparse.Namespace, StateRoot, Ui], int]
Add = Callable[[Any, str, Handler, str], argparse.ArgumentParser]


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.0f} MiB"


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


# ---------------------------------------------------------------- capture ---

def cmd_image_capture(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.capture import CaptureOptions, capture
    from imageserver.excludes import ExcludeOptions
    from imageserver.names import check_name
    from imageserver.sources import parse_source

    check_name(a.name)
    if not a.source:
        raise ConfigError("image capture needs --from SOURCE",
                          hint="[ssh://][user@]host[:port], rsync://host[:port]/module or a "
                               "directory")
    source = parse_source(a.source, ssh_key=a.ssh_key, ssh_options=tuple(a.ssh_option),
                          secret_file=a.secret_file, rsync_path=a.rsync_path)
    opts = CaptureOptions(
        a.name, source,
        ExcludeOptions(tuple(a.exclude), tuple(Path(f) for f in a.exclude_from),
                       defaults=not a.no_default_excludes),
        layout_file=Path(a.layout) if a.layout else None, exact_geometry=a.explicit_geometry)
    old = signal.signal(signal.SIGTERM, _sigterm)  # killed: clean up like Ctrl-C
    try:
        with ui.step(f"capture {a.name} from {source.describe()}") as update:
            r = capture(state, opts, update)
    except KeyboardInterrupt:
        print(f"sysclone: capture of {a.name} interrupted: nothing was stored, "
              "the image store is unchanged", file=ui.out)
        return 130
    except SyscloneError as e:
        raise SyscloneError(f"{e.message}; nothing was stored", hint=e.hint) from None
    finally:
        signal.signal(signal.SIGTERM, old)
    u = r.info.usage or {}
    ui.info(f"image {a.name} version {r.version}: {_mib(u.get('bytes'))}, "
            f"{u.get('files', 0):,} files; {r.shared:,} shared with version "
            f"{r.info.parent}, {_mib(r.info.added_bytes)} new" if r.info.parent else
            f"image {a.name} version {r.version}: {_mib(u.get('bytes'))}, "
            f"{u.get('files', 0):,} files")
    if r.layout is not None and r.layout.usable and r.layout.layout is not None:
        ui.info(f"disk layout of the golden client recorded ({len(r.layout.layout.disks)} "
                "disk(s)): installs of this image use it unless scripts/disks-layouts has one")
    elif opts.layout_file:
        ui.info(f"disk layout from {opts.layout_file} recorded")
    for w in r.info.warnings:
        ui.info(f"warning: {w}")
    return 0


def add_capture(isub: Any, add: Add) -> None:
    from imageserver.excludes import SERVER_FILE, help_text

    p = add(isub, "capture", cmd_image_capture,
            "pull a running golden client (or a directory) into a new version of an image "
            "(si_getimage)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "SOURCE is [ssh://][user@]host[:port] (agentless: sshd and rsync on the client), "
        "rsync://host[:port]/module\n(a `sysclone client prepare` export, with --secret-file) "
        "or a local directory.\n\n"
        "What is captured: everything on the client's real local filesystems, crossing into\n"
        "each of them (a separate /boot, /var...), with hard links, ACLs, xattrs, sparse\n"
        "files, devices and numeric owners.\n\n"
        "What is left out, first matching rule wins:\n"
        "  1. the contents of pseudo, network and bind mounts in the client's mount list\n"
        "     (proc, sysfs, devtmpfs, tmpfs, cgroup, nfs, cifs, fuse, iso9660, overlay...):\n"
        "     they are not the machine's data, and the clone mounts its own (their mount\n"
        "     point directories are kept, with the mode and time the client shows while\n"
        "     they are mounted: /proc is 0555 then, whatever lies under it);\n"
        "  2. --exclude and --exclude-from (rsync filter syntax: '- PAT', '+ PAT', PAT);\n"
        f"  3. {SERVER_FILE} on this server, if it exists;\n"
        "  4. these defaults (--no-default-excludes drops them):\n" + help_text() + "\n"
        "An rsync:// export (`client prepare`) itself never serves /proc, /sys, /dev, /run\n"
        "(their directories are kept) nor its own work directory, whatever the rules say.\n"
        "Each capture records them with the version (`image show NAME`).")
    p.add_argument("name", help="image name (a new version if it exists)")
    p.add_argument("--from", dest="source", metavar="SOURCE",
                   help="the golden client or directory (required)")
    p.add_argument("--ssh-key", metavar="FILE", help="SSH identity file")
    p.add_argument("--ssh-option", action="append", default=[], metavar="KEY=VALUE",
                   help="ssh -o option, e.g. Port=2222 (repeatable)")
    p.add_argument("--rsync-path", metavar="CMD",
                   help="rsync on the client, e.g. 'sudo rsync' for a non-root user")
    p.add_argument("--secret-file", metavar="FILE",
                   help="the secret `client prepare` printed (rsync:// sources)")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="leave PATTERN out (repeatable)")
    p.add_argument("--exclude-from", action="append", default=[], metavar="FILE",
                   help="filter rules from FILE (repeatable)")
    p.add_argument("--no-default-excludes", action="store_true",
                   help="do not apply the built-in exclude list")
    p.add_argument("--layout", metavar="FILE",
                   help="disks-layout XML to record instead of the client's own")
    p.add_argument("--explicit-geometry", action="store_true",
                   help="keep every partition size exactly (default: the largest data "
                        "partition of each disk takes the space left)")


# --------------------------------------------------------------- versions ---

def cmd_image_versions(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.store import ImageStore
    from imageserver.versions import StoreDamage

    store = ImageStore(state)
    v = store.versions
    if not store.exists(a.name):
        raise v.unknown(a.name)
    if v.is_legacy(a.name):
        # One version, unnumbered: the row `image list` counts.
        info = store.info(a.name)
        used = info.usage
        print_table([{"version": "- *", "created": _when(info.created), "origin": info.origin,
                      "source": info.source or "", "files": f"{used.files:,}" if used else "?",
                      "size": _mib(used.bytes if used else None), "new": "",
                      "storage": "plain"}],
                    VERSION_COLUMNS)
        ui.info(f"image {a.name} was stored before versions existed: it has one, unnumbered")
        return 0
    current = v.current(a.name)
    rows, damage = [], []
    for n in v.numbers(a.name):
        mark = " *" if n == current else ""
        try:
            vi = v.info(a.name, n)
        except StoreDamage as e:  # the others are still worth listing
            damage.append(e)
            rows.append({"version": f"{n}{mark}", "origin": "DAMAGED"})
            continue
        u = vi.usage or {}
        rows.append({"version": f"{vi.version}{mark}",
                     "created": _when(vi.created), "origin": vi.origin,
                     "source": vi.source or "", "files": f"{u.get('files', 0):,}",
                     "size": _mib(u.get("bytes")), "new": _mib(vi.added_bytes),
                     "storage": vi.storage})
    print_table(rows, VERSION_COLUMNS)
    for problem in damage:
        print(f"sysclone: error: {problem}", file=sys.stderr)
    return 1 if damage else 0


VERSION_COLUMNS = ["version", "created", "origin", "source", "files", "size", "new", "storage"]


def cmd_image_rollback(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.names import parse_version
    from imageserver.store import ImageStore

    n = parse_version(a.version)
    ImageStore(state).rollback(a.name, n)
    ui.info(f"image {a.name} is version {n} again; new installs get it")
    return 0


def cmd_image_prune(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    import shutil

    from imageserver.store import ImageStore

    if a.keep is None:
        raise ConfigError("image prune needs --keep K", hint="the number of versions to keep")
    before = shutil.disk_usage(state.images).free if state.images.is_dir() else 0
    gone = ImageStore(state).prune(a.name, a.keep)
    freed = shutil.disk_usage(state.images).free - before if gone else 0
    ui.info(f"image {a.name}: removed version(s) {', '.join(map(str, gone))}, "
            f"{_mib(max(0, freed))} freed" if gone else f"image {a.name}: nothing to prune")
    return 0


def _trouble(e: SyscloneError | OSError) -> SyscloneError:
    """diff and verify exit 1 for differences found, so an error is 2 (as
    for diff(1)): a script tells "changed" from "could not tell"."""
    if isinstance(e, OSError):
        where = f": {e.filename}" if e.filename else ""
        e = SyscloneError(f"{e.strerror or e}{where}")
    e.fields["status"] = 2
    return e


def cmd_image_diff(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.names import ImageRef
    from imageserver.verify import diff

    try:
        ra, rb, changes = diff(state, ImageRef.parse(a.a), ImageRef.parse(a.b),
                               ignore=frozenset({"mtime"}) if a.ignore_times else frozenset())
    except (SyscloneError, OSError) as e:
        raise _trouble(e) from None
    for c in changes:
        print(c.describe())
    counts = {k: sum(1 for c in changes if c.kind == k) for k in ("added", "removed",
                                                                 "changed")}
    ui.info(f"{ra} -> {rb}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if changes else 0


def cmd_image_verify(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.names import ImageRef
    from imageserver.verify import verify

    try:
        with ui.step(f"verify {a.ref}") as update:
            r = verify(state, ImageRef.parse(a.ref), update)
    except (SyscloneError, OSError) as e:
        raise _trouble(e) from None
    for d in r.damage:
        print(f"damaged: {d}")
    if r.damage:
        ui.info(f"{r.ref}: damaged: its records cannot be read")
        return 1
    if not r.manifest_ok:
        print(f"manifest of {r.ref} does not match the hash recorded with the version")
    if r.writable:
        print(f"{r.ref} is stored as a read-only btrfs snapshot but is writable now: "
              "someone turned its read-only flag off")
    for c in r.changes:
        print(c.describe())
    if r.ok:
        ui.info(f"{r.ref}: all {r.entries:,} paths match the manifest")
        return 0
    ui.info(f"{r.ref}: {len(r.changes)} difference(s) from what was stored")
    return 1


def cmd_image_chroot(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.chroot import chroot_image

    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    r = chroot_image(state, a.name, command, ui.info)
    if r.sealed is None:
        ui.info(f"image {a.name}: nothing changed, no new version")
    else:
        ui.info(f"image {a.name} version {r.sealed.version}: {r.changes} path(s) changed, "
                f"{r.sealed.shared:,} files shared with the previous version")
    return 0


def cmd_image_copy(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.copyimage import copy_image
    from imageserver.names import ImageRef

    s = copy_image(state, ImageRef.parse(a.src), a.dest)
    ui.info(f"image {a.dest} version {s.version}: a copy of {s.info.source}")
    return 0


def cmd_image_rename(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.store import ImageStore

    ImageStore(state).rename(a.old, a.new)
    ui.info(f"image {a.old} is now {a.new}")
    return 0


def add_image_actions(isub: Any, add: Add) -> None:
    add_capture(isub, add)
    p = add(isub, "versions", cmd_image_versions,
            "list the stored versions of an image (* marks the current one)")
    p.add_argument("name")
    p = add(isub, "rollback", cmd_image_rollback,
            "make a stored version current again; new installs get it at once")
    p.add_argument("name")
    p.add_argument("version")
    p = add(isub, "prune", cmd_image_prune,
            "delete old versions, keeping the newest K and the current one")
    p.add_argument("name")
    p.add_argument("--keep", type=int, metavar="K", help="versions to keep (required)")
    p = add(isub, "diff", cmd_image_diff,
            "what differs between two images or versions (NAME or NAME@N): added, removed "
            "and changed paths with what changed; exit status 0 if none, 1 if any, 2 on "
            "error (an unknown image, a bad reference, a damaged manifest)")
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--ignore-times", action="store_true", help="leave mtime-only changes out")
    p = add(isub, "verify", cmd_image_verify,
            "re-hash a stored version against its manifest and name every difference; "
            "exit status 0 if none, 1 if any or if its records are damaged, 2 on error "
            "(an unknown image, a bad reference)")
    p.add_argument("ref", metavar="NAME[@N]")
    p = add(isub, "chroot", cmd_image_chroot,
            "run a command (default: a shell) in a private copy of an image with /proc, "
            "/sys, /dev and /run mounted; if it succeeds and changed something, the copy "
            "becomes a new version")
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD",
                   help="the command and its arguments")
    p = add(isub, "copy", cmd_image_copy,
            "copy an image (or one version) to another name, as a new version there "
            "(si_cpimage)")
    p.add_argument("src", metavar="SRC[@N]")
    p.add_argument("dest")
    p = add(isub, "rename", cmd_image_rename,
            "rename an image with all its versions (si_mvimage)")
    p.add_argument("old")
    p.add_argument("new")


# ----------------------------------------------------------------- client ---

def cmd_client_prepare(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.prepare.golden import PrepareError, check_args, prepare

    problem = check_args(a)
    if problem:
        raise ConfigError(problem)
    try:
        return prepare(a)
    except PrepareError as e:
        raise ConfigError(str(e)) from None


def add_client_commands(sub: Any, add: Add) -> None:
    from imageserver.prepare import SCRIPT_PATH
    from imageserver.prepare.golden import PREPARE_HELP, add_prepare_arguments

    c = sub.add_parser("client", help="run on a golden client (si_prepareclient)",
                       description="Commands for a golden client.  Without sysclone "
                                   "installed there, the image server serves the same "
                                   f"code: curl -fsS http://SERVER:8181{SCRIPT_PATH} | "
                                   "python3 - prepare --server SERVER")
    csub = c.add_subparsers(dest="client_command", metavar="ACTION", required=True)
    p = add(csub, "prepare", cmd_client_prepare, PREPARE_HELP)
    add_prepare_arguments(p)
    from sysclone.inventorycli import add_inventory_command

    add_inventory_command(csub, add)
