"""sysclone updateclient: bring an installed machine to a version of its image
(SystemImager's si_updateclient), roll it back, or reinstall it.

This one file is all a client needs besides Python 3.9+ and rsync; the image
server serves it (GET /v1/client/updateclient.py):

    curl -fsS http://SERVER:8181/v1/client/updateclient.py \\
        | python3 - --server SERVER [--image NAME[@N]] [--dry-run]
    python3 updateclient.py --rollback
    python3 updateclient.py --autoinstall --server SERVER --image NAME [--kexec]

An update, step by step:

  ask        the server names the image version (NAME@N: the current one, or
             the one asked), its overrides and the files the install wrote
  compare    rsync's itemized dry run against it: only what differs moves;
             excluded paths are never touched (defaults below, this
             script's own file when it runs from one, then
             /etc/sysclone/updateclient.exclude, then --exclude)
  keep       a rollback point: a btrfs snapshot when / is a btrfs subvolume,
             an LVM snapshot when / is a plain logical volume (ext4 or xfs)
             whose volume group has room for the update's copy-on-write,
             else a copy of every file the update will replace or delete
  fetch      the changed files into a staging directory (the old ones are
             the delta basis); if the server goes away here, nothing of
             the system has changed
  apply      the staged files into place, and the deletions: local only
  boot       when a kernel changed: initrds made with the system's own tool
             (a generic initramfs-tools one by the image server, natively,
             from the image and this machine's own initrd files; on this
             machine when the server cannot, or with --local-initrd), the
             boot loader's configuration rewritten
  check      health: every kernel has an initrd, the boot loader names it,
             no systemd unit failed that had not, and the configured
             commands pass; a failure puts the rollback point back
  report     to the image server's monitor

`--rollback` puts the last rollback point back on request.  `--dry-run`
lists what would change and stops.  Exit status: 0 done, 1 error (nothing
changed, or the system was put back), 2 bad usage, 3 the health check
failed and the update was rolled back.

Standard library only, Python 3.9: it runs on the clients, not the server.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

# glob, hashlib, shlex, shutil and tempfile are imported where they are used,
# and neither urllib.parse nor the idna codec is needed: a no-op update is
# mostly this script's start and one rsync, measured against plain rsync.

ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root",
       "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
STATE_DIR = "var/lib/sysclone/updateclient"  # below the root being updated
EXCLUDE_FILE = "etc/sysclone/updateclient.exclude"
HEALTH_FILE = "etc/sysclone/updateclient.health"
DEFAULT_PORT = 8181
RSYNC_FLAGS = ["-aHAXS", "--numeric-ids"]

# (rsync pattern, anchored at / unless it is a bare name; why it is never synced)
DEFAULT_EXCLUDES = (
    ("/proc/**", "kernel view"), ("/sys/**", "kernel view"), ("/dev/**", "devices"),
    ("/run/**", "runtime state"), ("/tmp/**", "temporary files"),
    ("/var/tmp/**", "temporary files"),
    # The directory itself, at the top of every filesystem (/, a separate
    # /boot...): mkfs made it, no image has it, and --delete would remove it.
    ("lost+found/", "fsck's"),
    ("/var/log/**", "the machine's own logs"), ("/home/**", "users' data"),
    ("/var/lib/sysclone", "updateclient's rollback point and staging"),
    ("/etc/sysclone", "this machine's updateclient settings"),
    ("/etc/ssh/ssh_host_*", "the machine's SSH identity"),
    ("/etc/machine-id", "the machine's identity"),
    ("/var/lib/dbus/machine-id", "the machine's identity"),
    ("/var/lib/systemd/random-seed", "the machine's entropy"),
    ("/var/lib/systemd/timers/", "when this machine's timers last ran"),
    ("/var/lib/systemd/backlight/", "this machine's hardware state"),
    ("/var/lib/systemd/rfkill/", "this machine's hardware state"),
    ("/var/lib/systemd/coredump/", "this machine's crash dumps"),
    ("/var/lib/systemd/pstore/", "this machine's crash records"),
    ("/etc/fstab", "the install wrote it for this machine's disks"),
    ("/etc/crypttab", "the install wrote it for this machine's disks"),
    ("/etc/mdadm/mdadm.conf", "the install wrote it for this machine's disks"),
    ("/etc/hostname", "the machine's name"), ("/etc/hosts", "the machine's name"),
    ("/etc/resolv.conf", "the machine's network"),
    ("/etc/network/interfaces", "the machine's network"),
    ("/etc/network/interfaces.d/**", "the machine's network"),
    ("/etc/systemd/network/**", "the machine's network"),
    ("/etc/NetworkManager/system-connections/**", "the machine's network"),
    ("/etc/netplan/**", "the machine's network"),
    ("/etc/sysconfig/network-scripts/ifcfg-*", "the machine's network"),
    ("/etc/initramfs-tools/conf.d/resume", "the install wrote it for this machine's swap"),
    ("/var/lib/dhcp/**", "the machine's leases"),
    # lvcreate/lvremove (this script's own LVM rollback points too) keep
    # the group's metadata history here; vgcfgrestore needs it.
    ("/etc/lvm/backup/**", "the machine's volume group metadata"),
    ("/etc/lvm/archive/**", "the machine's volume group metadata"),
    ("/boot/efi/**", "the EFI system partition: the boot loader's, not the image's"),
    ("/boot/grub/**", "the boot loader's, refreshed when a kernel changes"),
    ("/boot/grub2/**", "the boot loader's, refreshed when a kernel changes"),
    ("/boot/loader/**", "the boot loader's, refreshed when a kernel changes"),
    ("/boot/initrd.img-*", "built for this machine; rebuilt when a kernel changes"),
    ("/boot/initramfs-*", "built for this machine; rebuilt when a kernel changes"),
    ("/boot/initrd-*", "built for this machine; rebuilt when a kernel changes"),
)
# Files of the boot state, saved with the rollback point when a kernel changes.
BOOT_STATE = ("boot/initrd.img-*", "boot/initramfs-*", "boot/initrd-*", "boot/grub/grub.cfg",
              "boot/grub/grubenv", "boot/grub2/grub.cfg", "boot/grub2/grubenv",
              "boot/loader/entries/*")
_KERNEL_PATH = re.compile(r"^(boot/(vmlinuz|vmlinux|bzImage)|(usr/)?lib/modules/[^/]+(/|$))")
# Filesystems whose contents are never the image's (mounted on a live system).
PSEUDO_FS = frozenset((
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "securityfs", "efivarfs",
    "debugfs", "tracefs", "configfs", "cgroup", "cgroup2", "pstore", "hugetlbfs", "mqueue",
    "binfmt_misc", "autofs", "bpf", "fusectl", "rpc_pipefs", "nsfs", "selinuxfs", "squashfs",
    "overlay", "fuse", "iso9660", "udf", "nfs", "nfs4", "cifs", "smb3", "sshfs", "9p",
    "virtiofs", "ceph", "glusterfs"))


class UpdateError(Exception):
    """One line for the user, and a hint."""

    def __init__(self, message: str, hint: str = "", status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def say(text: str) -> None:
    print(f"updateclient: {text}", flush=True)


# ---------------------------------------------------------------- commands ---

def run(argv: list, *, check: bool = True, input: str | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    # A command chrooted into the system (in_root) is named by its tool.
    name = argv[2] if argv[0] == "chroot" and len(argv) > 2 else argv[0]
    try:
        p = subprocess.run([str(a) for a in argv], input=input, capture_output=True,
                           text=True, env=ENV, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except FileNotFoundError:
        raise UpdateError(f"{argv[0]} is not installed on this machine") from None
    except subprocess.TimeoutExpired:
        raise UpdateError(f"{name} did not finish in {timeout:.0f}s") from None
    if check and p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise UpdateError(f"{name} failed with exit code {p.returncode}: "
                          + ("; ".join(tail) or "no output"))
    return p


def in_root(root: str, argv: list) -> list:
    """A command of the system being updated: chrooted unless it is this one."""
    return list(argv) if root == "/" else ["chroot", root, *argv]


@contextmanager
def system_mounts(root: str) -> Iterator[None]:
    """/proc, /sys and /dev inside a root that is not the running one, for
    its own tools (update-initramfs, update-grub); unmounted after."""
    if root == "/":
        yield
        return
    done = []
    try:
        for fs, args in (("proc", ["-t", "proc", "proc"]), ("sys", ["-t", "sysfs", "sysfs"]),
                         ("dev", ["--bind", "/dev"])):
            target = os.path.join(root, fs)
            os.makedirs(target, exist_ok=True)
            run(["mount", *args, target])
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            run(["umount", "-l", target], check=False)


# ------------------------------------------------------------------ server ---

# Value types are named tuples and plain classes, not dataclasses: the
# dataclasses module (inspect, ast, dis...) and building the classes cost
# 15-20 ms at every start, a few per cent of a no-op update.
class Server(namedtuple("Server", "host port", defaults=(DEFAULT_PORT,))):
    __slots__ = ()
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                timeout: float = 60) -> tuple[int, bytes]:
        """One HTTP/1.1 exchange on its own connection.  (urllib brings in
        http.client, email and ssl: a third of a no-op update's time.)"""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            # An ASCII name as bytes: no idna codec (and stringprep) to import.
            host = self.host.encode() if self.host.isascii() else self.host
            # (typeshed says str; getaddrinfo takes bytes too)
            with socket.create_connection((host, self.port), timeout=timeout) as s:  # type: ignore[arg-type]
                s.sendall(head.encode() + b"\r\n" + (body or b""))
                chunks = []
                while True:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as e:
            raise UpdateError(f"image server {self.host}:{self.port} is unreachable: "
                              f"{e.strerror or e}",
                              "check --server and --port, and that `sysclone serve` runs") \
                from None
        header, _, content = b"".join(chunks).partition(b"\r\n\r\n")
        try:
            status = int(header.split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise UpdateError(f"image server {self.host}:{self.port} did not answer HTTP") \
                from None
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                content = content[:int(value)]
        return status, content

    def get(self, path: str, query: dict | None = None, timeout: float = 60) -> bytes:
        q = "?" + _urlencode({k: v for k, v in (query or {}).items() if v}) if query else ""
        status, body = self.request("GET", path + q, timeout=timeout)
        if status != 200:
            try:
                err = json.loads(body)
                msg, hint = err.get("message") or f"HTTP {status}", err.get("hint") or ""
            except ValueError:
                msg, hint = f"HTTP {status} for {path}", ""
            raise UpdateError(f"image server: {msg}", hint)
        return body

    def post(self, path: str, obj: dict, timeout: float = 60) -> bytes:
        """POST `obj` as JSON; the answer's body, or the server's error."""
        status, body = self.request("POST", path, json.dumps(obj).encode(), timeout=timeout)
        if status != 200:
            try:
                err = json.loads(body)
                msg = err.get("message") or f"HTTP {status}"
            except ValueError:
                msg = f"HTTP {status} for {path}"
            raise UpdateError(f"image server: {msg}")
        return body

    def get_json(self, path: str, query: dict | None = None) -> dict:
        data = json.loads(self.get(path, query))
        if not isinstance(data, dict):
            raise UpdateError(f"image server: {path} did not answer an object")
        return data

    def report(self, event: dict) -> None:
        """Best effort: the update is done whether the monitor hears of it or not."""
        body = json.dumps({"ts": round(time.time(), 3), **event}).encode()
        try:
            status, _ = self.request("POST", "/v1/events", body, timeout=10)
        except UpdateError as e:
            status, why = 0, str(e)
        else:
            why = f"HTTP {status}"
        if status != 200:
            print(f"updateclient: warning: could not report to the monitor: {why}",
                  file=sys.stderr)


_URL_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def _urlencode(query: dict) -> str:
    """application/x-www-form-urlencoded, as urllib.parse.urlencode writes it."""
    def quote(text: str) -> str:
        return "".join(chr(b) if b in _URL_SAFE else "+" if b == 0x20 else f"%{b:02X}"
                       for b in str(text).encode())
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())


def rsync_url(server: Server, port: int, module: str) -> str:
    host = f"[{server.host}]" if ":" in server.host else server.host
    return f"rsync://{host}:{port}/{module}/"


# ------------------------------------------------------------------- plan ---

class Change(namedtuple("Change", "path item link", defaults=(None,))):
    __slots__ = ()
    path: str  # relative to the root, no leading slash; "." is the root itself
    item: str  # rsync's itemize string: >f.st......, cd+++++++++, *deleting
    link: str | None  # a hard link's other name (=> ...)

    @property
    def kind(self) -> str:
        if self.item.startswith("*deleting"):
            return "deleted"
        if "+++++++" in self.item:
            return "created"
        return "changed"


MARKS = {"created": "+", "changed": "*", "deleted": "-"}


class Plan:
    def __init__(self, changes: list, transfer_bytes: int = 0) -> None:
        self.changes = changes
        self.transfer_bytes = transfer_bytes

    def paths(self, *kinds: str) -> list:
        return [c.path for c in self.changes if c.kind in kinds]

    def transfer(self) -> list:
        """What comes from the server: new and changed paths, and the other
        names of their hard links (rsync links only names it is given)."""
        out = self.paths("created", "changed")
        out += [c.link for c in self.changes if c.link and c.kind != "deleted"]
        return list(dict.fromkeys(out))

    @property
    def kernel_changed(self) -> bool:
        return any(_KERNEL_PATH.match(c.path) for c in self.changes)


def unescape(name: str) -> str:
    """rsync writes unprintable bytes as \\#ooo."""
    if "\\#" not in name:
        return name
    raw = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]),
                 name.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def parse_itemized(text: str) -> list:
    """rsync's `%i %n%L` lines into changes (other lines are ignored)."""
    out = []
    for line in text.splitlines():
        if len(line) < 13 or line[11] != " ":
            continue
        item, rest = line[:11], line[12:]
        if item.startswith("*deleting"):
            out.append(Change(unescape(rest.rstrip("/")) or ".", "*deleting"))
            continue
        if item[0] not in "<>ch." or item[1] not in "fdLDS":
            continue
        link = None
        if item[1] == "L" and " -> " in rest:
            rest = rest.split(" -> ", 1)[0]
        elif item[0] == "h" and " => " in rest:
            rest, link = rest.split(" => ", 1)
        path = unescape(rest.rstrip("/")) or "."
        out.append(Change("." if path == "./" else path, item,
                          unescape(link) if link else None))
    return out


_TRANSFER = re.compile(r"^Total transferred file size: ([\d,.]+)", re.M)
_SENT = re.compile(r"^Total bytes sent: ([\d,.]+)", re.M)
_RECEIVED = re.compile(r"^Total bytes received: ([\d,.]+)", re.M)


def _number(rx: re.Pattern, text: str) -> int:
    m = rx.search(text)
    return int(re.sub(r"[,.]", "", m.group(1))) if m else 0


class Wire:
    """Bytes rsync moved over the network, both ways."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    def add(self, stats: str) -> None:
        self.sent += _number(_SENT, stats)
        self.received += _number(_RECEIVED, stats)


def filter_args(excludes: list) -> list:
    return [f"--exclude={p}" for p in excludes]


def compare(url: str, root: str, excludes: list, *, delete: bool, wire: Wire,
            bwlimit: int | None = None) -> Plan:
    """What syncing `url` onto `root` would change (nothing moves)."""
    argv = ["rsync", *RSYNC_FLAGS, "--dry-run", "--stats", "--out-format=%i %n%L",
            *filter_args(excludes)]
    if delete:
        argv.append("--delete")
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    p = run([*argv, url, root.rstrip("/") + "/"], check=False, timeout=3600)
    if p.returncode not in (0, 24):  # 24: files vanished meanwhile
        raise UpdateError(f"rsync from {url} failed: " + _rsync_error(p))
    wire.add(p.stdout)
    return Plan(parse_itemized(p.stdout), _number(_TRANSFER, p.stdout))


def _rsync_error(p: subprocess.CompletedProcess) -> str:
    lines = [x for x in (p.stderr or p.stdout).strip().splitlines() if x.strip()]
    return "; ".join(lines[-2:]) or f"exit code {p.returncode}"


def excludes_for(root: str, written: list, extra: list, extra_files: list) -> list:
    """Every exclude pattern, defaults first, then what the install wrote,
    the machine's exclude file, --exclude-from and --exclude."""
    out = [p for p, _ in DEFAULT_EXCLUDES]
    out += [_literal(w) for w in written if w.startswith("/")]
    for f in [os.path.join(root, EXCLUDE_FILE), *extra_files]:
        if os.path.isfile(f):
            with open(f, encoding="utf-8", errors="replace") as fh:
                out += [line.strip() for line in fh
                        if line.strip() and not line.lstrip().startswith("#")]
        elif f in extra_files:
            raise UpdateError(f"--exclude-from {f}: no such file")
    out += list(extra)
    if root == "/":
        # The mount point too: what shows there is the mounted filesystem's
        # root (/proc is 0555 and dated from boot), not the image's
        # directory underneath, whose attributes cannot be set through it.
        out += [_literal(m.rstrip("/")) for m in skipped_mounts()]
    mine = own_script(root)
    if mine:  # the copy being run: --rollback needs it later
        out.append(_literal(mine))
    for p in out:
        if "\n" in p or "\r" in p:
            raise UpdateError(f"exclude pattern {p!r} has a line break")
    return list(dict.fromkeys(out))


# The file this script runs from, when it runs as one (python3
# updateclient.py), not imported by sysclone nor read from a pipe.
SCRIPT_FILE: str | None = None


def own_script(root: str) -> str | None:
    """The running script's path in the system being updated ("/root/
    updateclient.py"), if it lies there: an update must not delete the
    copy a later --rollback runs from."""
    if not SCRIPT_FILE:
        return None
    top = os.path.realpath(root)
    path = os.path.realpath(SCRIPT_FILE)
    if path == top or not path.startswith(top.rstrip("/") + "/"):
        return None
    return "/" + os.path.relpath(path, top)


def _literal(path: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)


def skipped_mounts() -> list:
    """Mount points of the running system whose contents are not its own:
    pseudo and network filesystems (their mount point itself is kept)."""
    out: list = []
    try:
        with open("/proc/self/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, fstype = left.split(), right.split()[0] if right else ""
        if len(fields) < 5:
            continue
        target = fields[4].encode().decode("unicode_escape")
        if target != "/" and fstype.split(".")[0] in PSEUDO_FS:
            out.append(target)
    return out


# --------------------------------------------------------- rollback point ---

class RollbackPoint:
    """What puts the system back: the saved old files (or a snapshot of the
    whole root), the paths the update created, and what it was."""

    FIELDS = ("directory", "method", "saved", "created", "boot_before", "kernel_changed",
              "image", "time", "rolled_back", "snapshot", "fstype", "prefix", "elsewhere")

    def __init__(self, directory: str, method: str = "copy", saved: list | None = None,
                 created: list | None = None, boot_before: list | None = None,
                 kernel_changed: bool = False, image: str = "", time: float = 0.0,
                 rolled_back: bool = False, snapshot: str = "", fstype: str = "",
                 prefix: str = "", elsewhere: list | None = None) -> None:
        self.directory = directory  # ROOT/var/lib/sysclone/updateclient/rollback
        self.method = method  # copy | btrfs | lvm
        self.saved = saved or []  # paths that existed and will change
        self.created = created or []  # paths the update creates
        self.boot_before = boot_before or []  # boot-state files before
        self.kernel_changed = kernel_changed
        self.image = image
        self.time = time
        self.rolled_back = rolled_back
        # lvm: the snapshot volume (VG/LV), its filesystem, and where the
        # system's root lies inside that filesystem ("" when it is its root)
        self.snapshot = snapshot
        self.fstype = fstype
        self.prefix = prefix
        # btrfs/lvm: the saved paths on other filesystems than the
        # snapshot's (a separate /boot), kept as copies beside it
        self.elsewhere = elsewhere or []

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RollbackPoint) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return f"RollbackPoint({self.__dict__!r})"

    @property
    def source(self) -> str:
        if self.method == "copy":
            return self.tree
        return os.path.join(self.directory, "snapshot", self.prefix)

    @property
    def tree(self) -> str:
        """Where the copies are."""
        return os.path.join(self.directory, "tree")

    @property
    def copied(self) -> list:
        """The saved paths kept as copies in `tree`."""
        return self.saved if self.method == "copy" else self.elsewhere

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1, sort_keys=True)

    @classmethod
    def load(cls, directory: str) -> RollbackPoint:
        meta = os.path.join(directory, "point.json")
        if not os.path.isfile(meta):
            raise UpdateError("there is no rollback point on this machine",
                              "one is taken by each update")
        with open(meta) as f:
            data = json.load(f)
        point = cls(**{k: v for k, v in data.items() if k in cls.FIELDS})
        point.directory = directory
        return point

    def save(self) -> None:
        tmp = os.path.join(self.directory, ".point.json.tmp")
        with open(tmp, "w") as f:
            f.write(self.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.directory, "point.json"))


def _existing(root: str, paths: list) -> list:
    return [p for p in paths if os.path.lexists(os.path.join(root, p))]


def boot_state(root: str) -> list:
    import glob

    out = []
    for pattern in BOOT_STATE:
        out += [os.path.relpath(p, root) for p in glob.glob(os.path.join(root, pattern))]
    return sorted(set(out))


def _files_from(paths: list, directory: str) -> str:
    path = os.path.join(directory, "files.list")
    with open(path, "wb") as f:
        for p in paths:
            f.write(p.encode("utf-8", "surrogateescape") + b"\0")
    return path


def _local_copy(src_root: str, dest_root: str, paths: list, work: str) -> None:
    """rsync the listed paths (and their parent directories) between two
    local trees, attributes, ACLs, xattrs and hard links kept."""
    if not paths:
        return
    lst = _files_from(paths, work)
    # --ignore-times: every listed file is copied, even one whose size and
    # time happen to match (the list says it differs).
    p = run(["rsync", *RSYNC_FLAGS, "--ignore-times", "--from0", f"--files-from={lst}",
             src_root.rstrip("/") + "/", dest_root.rstrip("/") + "/"], check=False,
            timeout=7200)
    if p.returncode != 0:
        raise UpdateError(f"local copy {src_root} -> {dest_root} failed: {_rsync_error(p)}")


def _is_btrfs_subvolume(root: str) -> bool:
    try:
        st = os.stat(root)
    except OSError:
        return False
    if st.st_ino != 256:  # the root directory of a btrfs subvolume
        return False
    p = run(["stat", "-f", "-c", "%T", root], check=False)
    return p.stdout.strip() == "btrfs"


def _on_root_filesystem(root: str, paths: list) -> list:
    """Those of `paths` (existing ones) on the filesystem of `root` itself,
    not on one mounted below it (a separate /boot, a nested btrfs
    subvolume: each has a device of its own)."""
    dev = os.stat(root).st_dev
    return [p for p in paths if os.lstat(os.path.join(root, p)).st_dev == dev]


SYS = "/sys"
LVM_SNAPSHOT = "{lv}-sysclone-rollback"
# Mounting a snapshot of a mounted filesystem: its journal is left alone
# (ext4 noload, xfs norecovery), and xfs takes the duplicate UUID.
SNAPSHOT_MOUNT = {"ext2/ext3": "ro,noload", "ext4": "ro,noload", "xfs": "ro,nouuid,norecovery"}


class LvmOrigin(namedtuple("LvmOrigin", "vg lv vg_free fstype mountpoint")):
    __slots__ = ()
    vg: str
    lv: str
    vg_free: int  # bytes
    fstype: str  # as stat -f names it
    mountpoint: str


def _mountpoint(path: str) -> str:
    path = os.path.realpath(path)
    dev = os.stat(path).st_dev
    while path != "/" and os.stat(os.path.dirname(path)).st_dev == dev:
        path = os.path.dirname(path)
    return path


def lvm_origin(root: str) -> LvmOrigin | None:
    """The plain LVM logical volume (not a snapshot, thin or cached one)
    holding `root`, with its filesystem, when a snapshot of it can be
    mounted back; else None."""
    st = os.stat(root)
    dm = os.path.join(SYS, "dev/block", f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}", "dm")
    try:
        with open(os.path.join(dm, "uuid")) as f:
            if not f.read().startswith("LVM-"):
                return None
        with open(os.path.join(dm, "name")) as f:
            name = f.read().strip()
    except OSError:
        return None
    p = run(["lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|",
             "-o", "vg_name,lv_name,lv_attr,vg_free", f"/dev/mapper/{name}"], check=False)
    fields = [x.strip() for x in p.stdout.strip().split("|")]
    if p.returncode != 0 or len(fields) != 4 or not fields[3].isdigit():
        return None
    vg, lv, attr, free = fields
    # lv_attr's first letter: "-" a plain volume, "o" the origin of a snapshot.
    if not attr or attr[0] not in "-o":
        return None
    fstype = run(["stat", "-f", "-c", "%T", root], check=False).stdout.strip()
    if fstype not in SNAPSHOT_MOUNT:
        return None
    return LvmOrigin(vg, lv, int(free), fstype, _mountpoint(root))


def snapshot_bytes(plan: Plan, saved: int) -> int:
    """Copy-on-write room for the update: every block written to the
    volume while the snapshot lives is copied first -- the staged files,
    the files they replace, the new ones -- twice over, plus room for the
    system's own writes until the health check.  Whole MiB: lvcreate
    refuses a size that is not a multiple of 512 bytes."""
    mib = 1 << 20
    return -(-(2 * (plan.transfer_bytes + saved) + 256 * mib) // mib) * mib


def _take_lvm_snapshot(root: str, point: RollbackPoint, origin: LvmOrigin, size: int) -> None:
    name = LVM_SNAPSHOT.format(lv=origin.lv)
    run(["lvcreate", "--snapshot", "--name", name, "--size", f"{size}b",
         f"{origin.vg}/{origin.lv}"])
    point.method, point.snapshot, point.fstype = "lvm", f"{origin.vg}/{name}", origin.fstype
    rel = os.path.relpath(os.path.realpath(root), origin.mountpoint)
    point.prefix = "" if rel == "." else rel


def take_rollback_point(root: str, plan: Plan, image: str) -> RollbackPoint:
    """Before anything changes: keep what the update will replace or
    delete.  A btrfs snapshot when the root is a subvolume holding every
    path concerned (free and instant); an LVM snapshot when it is a plain
    logical volume whose group has the copy-on-write room for the update;
    else copies of those files.  With a snapshot, the paths on another
    filesystem (a separate /boot) are kept as copies beside it."""
    import shutil
    directory = os.path.join(root, STATE_DIR, "rollback")
    drop_rollback_point(directory)
    os.makedirs(directory, mode=0o700)
    changing = plan.paths("changed", "deleted")
    point = RollbackPoint(directory, created=plan.paths("created"),
                          kernel_changed=plan.kernel_changed, image=image, time=time.time())
    if point.kernel_changed:
        point.boot_before = boot_state(root)
    point.saved = _existing(root, changing + point.boot_before)
    here = set(_on_root_filesystem(root, point.saved))
    elsewhere = [p for p in point.saved if p not in here]
    need_here = sum(_size(os.path.join(root, p)) for p in here)
    subvolume = _is_btrfs_subvolume(root)
    origin = lvm_origin(root) if not subvolume else None
    if subvolume:
        run(["btrfs", "subvolume", "snapshot", "-r", root, os.path.join(directory, "snapshot")])
        point.method, point.elsewhere = "btrfs", elsewhere
    elif origin is not None and origin.vg_free >= snapshot_bytes(plan, need_here):
        _take_lvm_snapshot(root, point, origin, snapshot_bytes(plan, need_here))
        point.elsewhere = elsewhere
    need = sum(_size(os.path.join(root, p)) for p in point.copied)
    free = shutil.disk_usage(directory).free
    if need > free - (64 << 20):
        point.save()  # what drop_rollback_point needs to remove a snapshot
        drop_rollback_point(directory)
        raise UpdateError(f"not enough space for the rollback point: {need >> 20} MiB "
                          f"needed, {free >> 20} MiB free in {directory}",
                          "free some space; nothing was changed")
    if point.copied:
        os.makedirs(point.tree)
        _local_copy(root, point.tree, point.copied, directory)
    point.save()
    return point


def _size(path: str) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if not os.path.isdir(path) or os.path.islink(path) else 0


def drop_rollback_point(directory: str) -> None:
    import shutil
    snap = os.path.join(directory, "snapshot")
    try:
        point: RollbackPoint | None = RollbackPoint.load(directory)
    except (UpdateError, OSError, ValueError, TypeError):
        point = None
    if point is not None and point.method == "lvm" and point.snapshot:
        if os.path.ismount(snap):
            run(["umount", snap], check=False)
        run(["lvremove", "--yes", point.snapshot], check=False)
    elif os.path.isdir(snap):
        run(["btrfs", "subvolume", "delete", snap], check=False)
    if os.path.lexists(directory):
        shutil.rmtree(directory)


@contextmanager
def _snapshot_mounted(point: RollbackPoint) -> Iterator[None]:
    """An LVM rollback point's snapshot, mounted read-only where
    point.source reads it; unmounted after, even on failure."""
    if point.method != "lvm":
        yield
        return
    p = run(["lvs", "--noheadings", "-o", "lv_attr", point.snapshot], check=False)
    attr = p.stdout.strip()
    # The fifth letter of lv_attr: "I" for a snapshot that ran out of room.
    if p.returncode != 0 or len(attr) < 5 or attr[4] == "I":
        raise UpdateError(f"the rollback point's LVM snapshot {point.snapshot} is gone or ran "
                          "out of room: nothing can be put back from it",
                          "restore from a backup or reinstall (updateclient --autoinstall)")
    mnt = os.path.join(point.directory, "snapshot")
    os.makedirs(mnt, exist_ok=True)
    run(["mount", "-o", SNAPSHOT_MOUNT.get(point.fstype, "ro"), f"/dev/{point.snapshot}", mnt])
    try:
        yield
    finally:
        run(["umount", mnt], check=False)


def remove_paths(root: str, paths: list) -> list:
    """Delete paths (deepest first); a directory still holding excluded
    files stays.  Returns what could not be removed."""
    kept = []
    for p in sorted(set(paths), key=lambda x: (-x.count("/"), x), reverse=False):
        full = os.path.join(root, p)
        if p in (".", "") or not os.path.lexists(full):
            continue
        try:
            if os.path.isdir(full) and not os.path.islink(full):
                os.rmdir(full)
            else:
                os.unlink(full)
        except OSError:
            kept.append(p)
    return kept


def restore(root: str, point: RollbackPoint) -> None:
    """Put the rollback point back: what the update created goes, the
    saved files come back (boot state included)."""
    import shutil
    created = list(point.created)
    if point.kernel_changed:
        before = set(point.boot_before)
        created += [p for p in boot_state(root) if p not in before]
    import tempfile

    work = tempfile.mkdtemp(prefix="updateclient.")
    try:
        # An LVM snapshot that ran out of room is refused before anything
        # is removed.
        with _snapshot_mounted(point):
            remove_paths(root, created)
            if point.method != "copy":
                copied = set(point.copied)
                _local_copy(point.source, root, [p for p in point.saved if p not in copied],
                            work)
            if point.copied:
                _local_copy(point.tree, root, point.copied, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    point.rolled_back = True
    point.save()
    if point.method == "lvm" and point.snapshot:
        # Spent: a snapshot left in place copies every later write to the
        # volume until it fills up and turns invalid.
        run(["lvremove", "--yes", point.snapshot], check=False)


# ------------------------------------------------------------ fetch, apply ---

def fetch(url: str, root: str, stage: str, paths: list, excludes: list, wire: Wire,
          bwlimit: int | None = None) -> None:
    """The changed files into `stage`, the old ones as delta basis."""
    import shutil
    if os.path.lexists(stage):
        shutil.rmtree(stage)
    os.makedirs(stage, mode=0o700)
    if not paths:
        return
    lst = _files_from(paths, os.path.dirname(stage))
    argv = ["rsync", *RSYNC_FLAGS, "--stats", "--from0", f"--files-from={lst}",
            f"--copy-dest={root.rstrip('/') or '/'}", *filter_args(excludes)]
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    p = run([*argv, url, stage + "/"], check=False, timeout=24 * 3600)
    if p.returncode != 0:
        raise UpdateError(f"fetching the update failed: {_rsync_error(p)}",
                          "nothing on this machine has changed; try again")
    wire.add(p.stdout)


def apply(stage: str, root: str, plan: Plan) -> list:
    """The deletions, then the staged files into place (last, so that the
    directories end with the image's times).  Local only."""
    kept = remove_paths(root, plan.paths("deleted"))
    _local_copy(stage, root, plan.transfer(), os.path.dirname(stage))
    return kept


@contextmanager
def dir_times_kept(root: str, dirs: list) -> Iterator[None]:
    """Put back the times of `dirs` after the block (the boot refresh adds
    and removes initrds: /boot keeps the image's time)."""
    times = {}
    for d in dirs:
        try:
            st = os.lstat(os.path.join(root, d))
        except OSError:
            continue
        times[d] = (st.st_atime_ns, st.st_mtime_ns)
    try:
        yield
    finally:
        for d, t in times.items():
            with suppress(OSError):
                os.utime(os.path.join(root, d), ns=t, follow_symlinks=False)


# ------------------------------------------------------------------- boot ---

def kernels(root: str) -> dict:
    """kver -> (size, mtime) of each /boot/vmlinuz-<kver>."""
    out = {}
    boot = os.path.join(root, "boot")
    for name in sorted(os.listdir(boot)) if os.path.isdir(boot) else ():
        m = re.match(r"^vmlinuz-(.+)$", name)
        if m and os.path.isfile(os.path.join(boot, name)):
            st = os.stat(os.path.join(boot, name))
            out[m.group(1)] = [st.st_size, int(st.st_mtime)]
    return out


def _have(root: str, tool: str) -> bool:
    return any(os.access(os.path.join(root, d.lstrip("/"), tool), os.X_OK)
               for d in ENV["PATH"].split(":"))


def initrd_paths(root: str, kver: str) -> list:
    return [os.path.join(root, "boot", n.format(kver)) for n in
            ("initrd.img-{}", "initramfs-{}.img", "initrd-{}", "initramfs-{}")]


# ------------------------------------------------------- server-built initrd ---

# What a server-built initrd may bring back, as the agent takes it
# (agent.configure.initrd.RESULT_DIRS).
INITRD_RESULT_DIRS = ("boot/", "var/lib/initramfs-tools/")
MAX_INITRD_FILES = 64
MAX_INITRD_FILE_BYTES = 256 * 1024


def _pattern_matches(pattern: str, rel: str) -> bool:
    """Whether an rsync exclude pattern may cover `rel` (relative to /) or
    one of its parents.  A close reading of rsync's rules, erring towards
    "covers": a file wrongly taken for the machine's own is only sent to
    the server along with the rest."""
    import fnmatch

    pat = re.sub(r"\\(.)", r"[\1]", pattern).rstrip("/")  # \* is a literal *
    for suffix in ("/***", "/**", "/*"):
        pat = pat.removesuffix(suffix)
    parts = rel.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    if pat.startswith("/"):
        return any(fnmatch.fnmatchcase(c, pat[1:]) for c in candidates)
    if "/" not in pat:
        return any(fnmatch.fnmatchcase(p, pat) for p in parts)
    return any(fnmatch.fnmatchcase(c, pat) or fnmatch.fnmatchcase(c, "*/" + pat)
               for c in candidates)


def initrd_files(root: str, inputs: list, excludes: list) -> dict | None:
    """rel -> text of the files the initrd tool reads (`inputs`: paths and
    directories ending in /, relative to /) that this machine keeps as its
    own -- every file an exclude pattern covers (the install wrote it, or
    the admin protects it): the server overlays them on the image, whose
    copy is what the update synced everywhere else.  None when they cannot
    be sent (too many, too big, not text): then the initrd is built here."""
    if not inputs:
        return None
    found = []
    for entry in inputs:
        top = os.path.join(root, entry.rstrip("/"))
        if entry.endswith("/") and os.path.isdir(top) and not os.path.islink(top):
            for dirpath, dirs, names in os.walk(top):
                dirs.sort()
                found += [os.path.relpath(os.path.join(dirpath, n), root) for n in sorted(names)]
        elif os.path.lexists(top):
            found.append(entry)
    files: dict = {}
    for rel in found:
        if not any(_pattern_matches(p, rel) for p in excludes):
            continue
        path = os.path.join(root, rel)
        if os.path.islink(path) or not os.path.isfile(path):
            return None
        if os.path.getsize(path) > MAX_INITRD_FILE_BYTES or len(files) >= MAX_INITRD_FILES:
            return None
        try:
            with open(path, encoding="utf-8") as f:
                files[rel] = f.read()
        except (OSError, UnicodeDecodeError):
            return None
    return files


class ServerInitrd(namedtuple("ServerInitrd", "server module overrides files")):
    """The image server builds a generic initrd (initramfs-tools with
    MODULES=most) for this machine with the image's own tool, natively:
    what update-initramfs would make here, without minutes of forks on a
    small or emulated machine.  It refuses a configuration that is not
    generic; then, or when it cannot be reached, the initrd is built here."""

    __slots__ = ()
    server: Server
    module: str  # NAME@N: the version the machine was just brought to
    overrides: tuple
    files: dict  # rel -> text: the machine's own initrd inputs

    def build(self, root: str, kver: str) -> list | None:
        """The files written (relative), or None: build it here instead."""
        body = {"module": self.module, "kver": kver, "tool": "initramfs-tools",
                "files": self.files, "overrides": list(self.overrides)}
        try:
            data = self.server.post("/v1/initrd", body, timeout=1800)
            return unpack_initrd(data, root, kver)
        except UpdateError as e:
            say(f"boot: the image server did not build the initrd for {kver} ({e}); "
                "building it here")
            return None


def unpack_initrd(data: bytes, root: str, kver: str) -> list:
    """Write a server-built initrd's files into the system.  Only regular
    files for this kernel under /boot and initramfs-tools' records are
    taken: the answer comes over the network."""
    import io
    import shutil
    import tarfile

    written = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            for m in members:
                parts = m.name.split("/")
                if (not m.isreg() or m.name.startswith("/") or ".." in parts
                        or not m.name.startswith(INITRD_RESULT_DIRS) or kver not in m.name):
                    raise UpdateError(f"the image server's initrd holds an unexpected entry "
                                      f"{m.name!r}")
            for m in members:
                src = tar.extractfile(m)
                if src is None:  # not a regular file after all
                    raise UpdateError(f"the image server's initrd entry {m.name!r} is unreadable")
                dest = os.path.join(root, m.name)
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                tmp = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.sysclone")
                with open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, m.mode & 0o7777)
                os.replace(tmp, dest)
                written.append(m.name)
    except tarfile.TarError as e:
        raise UpdateError(f"the image server's initrd is not a tar archive: {e}") from None
    if not any(w.startswith("boot/") for w in written):
        raise UpdateError(f"the image server sent no initrd for {kver}")
    return written


def refresh_boot(root: str, before: dict, remote: ServerInitrd | None = None) -> list:
    """Initrds for the kernels that changed (initramfs-tools' built by the
    image server when `remote` is given and it can), none left for the
    kernels that went, and the boot loader's configuration; what was done."""
    after = kernels(root)
    done = []
    for kver in before:
        if kver not in after:
            for p in initrd_paths(root, kver):
                if os.path.lexists(p):
                    os.unlink(p)
                    done.append(f"removed {os.path.relpath(p, root)}")
    changed = [k for k, v in after.items() if before.get(k) != v]
    with system_mounts(root):
        for kver in changed:
            if _have(root, "update-initramfs") and remote is not None \
                    and remote.build(root, kver) is not None:
                done.append(f"initrd for {kver} built by the image server")
                continue
            if _have(root, "update-initramfs"):
                exists = os.path.exists(os.path.join(root, f"boot/initrd.img-{kver}"))
                run(in_root(root, ["update-initramfs", "-u" if exists else "-c", "-k", kver]),
                    timeout=3600)
            elif _have(root, "dracut"):
                run(in_root(root, ["dracut", "-f", "--kver", kver]), timeout=3600)
            elif _have(root, "mkinitcpio"):
                run(in_root(root, ["mkinitcpio", "-P"]), timeout=3600)
            else:
                raise UpdateError(f"kernel {kver} changed, and this machine has no initrd tool "
                                  "(update-initramfs, dracut, mkinitcpio)")
            done.append(f"initrd for {kver} built on this machine")
        if _have(root, "update-grub"):
            run(in_root(root, ["update-grub"]), timeout=600)
            done.append("update-grub")
        elif _have(root, "grub-mkconfig") and os.path.isdir(os.path.join(root, "boot/grub")):
            run(in_root(root, ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]), timeout=600)
            done.append("grub-mkconfig")
        elif _have(root, "grub2-mkconfig") and os.path.isdir(os.path.join(root, "boot/grub2")):
            run(in_root(root, ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"]), timeout=600)
            done.append("grub2-mkconfig")
        elif _have(root, "kernel-install"):
            for kver in changed:
                run(in_root(root, ["kernel-install", "add", kver, f"/boot/vmlinuz-{kver}"]),
                    timeout=600)
            done.append("kernel-install")
    return done


# ----------------------------------------------------------------- health ---

BOOT_CONFIGS = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg")
LOADER_ENTRIES = ("boot/loader/entries", "boot/efi/loader/entries", "efi/loader/entries")


def failed_units(root: str) -> set | None:
    """Failed systemd units of the running system (None: not one that
    runs systemd, or not the root being updated)."""
    if root != "/" or not os.path.isdir("/run/systemd/system"):
        return None
    p = run(["systemctl", "list-units", "--state=failed", "--no-legend", "--plain"],
            check=False, timeout=60)
    return {line.split()[0] for line in p.stdout.splitlines() if line.split()}


def boot_configs(root: str) -> dict:
    out = {}
    for rel in BOOT_CONFIGS:
        p = os.path.join(root, rel)
        if os.path.isfile(p):
            with open(p, errors="replace") as f:
                out[rel] = f.read()
    for d in LOADER_ENTRIES:
        full = os.path.join(root, d)
        for name in sorted(os.listdir(full)) if os.path.isdir(full) else ():
            with open(os.path.join(full, name), errors="replace") as f:
                out[f"{d}/{name}"] = f.read()
    return out


def health_problems(root: str, commands: list, failed_before: set | None) -> list:
    problems = []
    found = kernels(root)
    configs = boot_configs(root)
    if found and not configs:
        problems.append("no boot loader configuration (looked for "
                        + ", ".join((*BOOT_CONFIGS, *LOADER_ENTRIES)) + ")")
    for kver in found:
        initrds = [p for p in initrd_paths(root, kver)
                   if os.path.isfile(p) and os.path.getsize(p) > 0]
        if not initrds:
            problems.append(f"kernel {kver} has no initrd")
        if configs and not any(f"vmlinuz-{kver}" in text for text in configs.values()):
            problems.append(f"the boot loader configuration does not name kernel {kver}")
        elif initrds and configs and not any(os.path.basename(initrds[0]) in text
                                             for text in configs.values()):
            problems.append(f"the boot loader configuration does not name "
                            f"{os.path.basename(initrds[0])}")
    if failed_before is not None:
        now = failed_units(root) or set()
        new = sorted(now - failed_before)
        if new:
            problems.append("systemd units failed: " + ", ".join(new))
    for cmd in commands:
        p = run(in_root(root, ["/bin/sh", "-c", cmd]), check=False, timeout=600)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            problems.append(f"`{cmd}` exited with {p.returncode}: {tail[0]}")
    return problems


def health_commands(root: str, given: list) -> list:
    out = []
    f = os.path.join(root, HEALTH_FILE)
    if os.path.isfile(f):
        with open(f, encoding="utf-8", errors="replace") as fh:
            out += [line.strip() for line in fh
                    if line.strip() and not line.lstrip().startswith("#")]
    return out + list(given)


# -------------------------------------------------------------- the flows ---

def hostname_of(root: str, given: str | None) -> str | None:
    if given:
        return given
    if root == "/":
        return socket.gethostname().split(".")[0] or None
    try:
        with open(os.path.join(root, "etc/hostname")) as f:
            return f.read().strip().split(".")[0] or None
    except OSError:
        return None


@contextmanager
def locked(root: str) -> Iterator[str]:
    state = os.path.join(root, STATE_DIR)
    os.makedirs(state, mode=0o700, exist_ok=True)
    with open(os.path.join(state, "lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateError("another updateclient runs on this machine") from None
        yield state


def _check_root(root: str) -> str:
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise UpdateError(f"the system's root {root}: no such directory")
    if os.geteuid() != 0:
        raise UpdateError("run as root (every file of the system may change)")
    return root


def update(a: argparse.Namespace) -> dict:
    root = _check_root(a.system_root)
    if not a.server:
        raise UpdateError("--server SERVER is required: the image server to update from")
    server = Server(a.server, a.port)
    host = hostname_of(root, a.hostname)
    t0 = time.monotonic()
    with locked(root) as state:
        # ask
        answer = server.get_json("/v1/update", {"hostname": host, "image": a.image})
        img = answer["image"]
        version = f"{img['name']}@{img['version']}" if img.get("version") else img["name"]
        url = rsync_url(server, int(img["rsync_port"]), str(img["module"]))
        excludes = excludes_for(root, list(answer.get("written") or ()), a.exclude,
                                a.exclude_from)
        # compare (the overrides win over the image, and are never deleted from)
        wire = Wire()
        plan = compare(url, root, excludes, delete=True, wire=wire, bwlimit=a.bwlimit)
        # Each override is the server's rsync module override.NAME, listed
        # most important first.
        overrides = [rsync_url(server, int(img["rsync_port"]), "override." + o)
                     for o in answer.get("overrides") or ()]
        own = with_overrides(plan, overrides, root, state, excludes, wire, a.bwlimit)
        image_paths = own.pop("")
        result = {"image": version, "changes": len(plan.changes),
                  "created": len(plan.paths("created")), "changed": len(plan.paths("changed")),
                  "deleted": len(plan.paths("deleted")), "kernel_changed": plan.kernel_changed,
                  "bytes_sent": wire.sent, "bytes_received": wire.received}
        if a.dry_run:
            for c in plan.changes:
                print(f"{MARKS[c.kind]} /{c.path.lstrip('.') if c.path == '.' else c.path}")
            say(f"dry run: {len(plan.changes)} changes to reach {version}; nothing was changed")
            return {**result, "dry_run": True, "seconds": round(time.monotonic() - t0, 3)}
        if not plan.changes:
            say(f"up to date with {version}")
            _finish(server, host, version, result, a, "up to date")
            return {**result, "seconds": round(time.monotonic() - t0, 3)}
        say(f"{len(plan.changes)} changes to reach {version} "
            f"({plan.transfer_bytes / 2**20:.1f} MiB of files)")
        failed_before = failed_units(root)
        kernels_before = kernels(root)
        # keep
        point = take_rollback_point(root, plan, version)
        say(f"rollback point taken ({point.method}, {len(point.saved)} paths)")
        import shutil

        # fetch: the machine is untouched until every file has arrived
        stage = os.path.join(state, "stage")
        try:
            fetch(url, root, stage, image_paths, excludes, wire, a.bwlimit)
            for o, paths in own.items():
                if paths:
                    fetch_over(o, stage, paths, wire, a.bwlimit)
        except UpdateError:
            shutil.rmtree(stage, ignore_errors=True)
            drop_rollback_point(point.directory)
            raise
        # apply
        try:
            kept = apply(stage, root, plan)
        except BaseException:
            say("applying failed: putting the rollback point back")
            restore(root, point)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        for p in kept:
            say(f"warning: /{p} holds files this machine keeps (excluded); left in place")
        # boot
        if kernels(root) != kernels_before:
            remote = None
            files = initrd_files(root, list(answer.get("initrd_inputs") or ()), excludes)
            if a.local_initrd:
                say("boot: initrds are built on this machine (--local-initrd)")
            elif files is not None:
                remote = ServerInitrd(server, version, tuple(answer.get("overrides") or ()),
                                      files)
            try:
                with dir_times_kept(root, ["boot"]):
                    steps = refresh_boot(root, kernels_before, remote)
                for step in steps:
                    say(f"boot: {step}")
            except UpdateError as e:
                _roll_back_after(root, point, f"refreshing boot failed: {e}")
                raise UpdateError(f"refreshing the boot files failed: {e.message}; the update "
                                  "was rolled back", status=3) from None
        # check
        problems = [] if a.no_health_check else health_problems(
            root, health_commands(root, a.health_check), failed_before)
        if problems:
            _roll_back_after(root, point, "; ".join(problems))
            server.report({"kind": "update-failed", "hostname": host, "image": img["name"],
                           "image_version": img.get("version"),
                           "message": "health check failed: " + "; ".join(problems)
                                      + "; rolled back"})
            raise UpdateError("health check failed: " + "; ".join(problems),
                              "the update was rolled back", status=3)
        result.update(bytes_sent=wire.sent, bytes_received=wire.received,
                      seconds=round(time.monotonic() - t0, 3))
        _finish(server, host, version, result, a, f"updated to {version}")
        say(f"updated to {version} in {result['seconds']:.1f}s"
            + ("; reboot into the new kernel" if plan.kernel_changed else ""))
        return result


def with_overrides(plan: Plan, overrides: list, root: str, state: str, excludes: list,
                   wire: Wire, bwlimit: int | None) -> dict:
    """Add the overrides' changes to the image's `plan`, each path from the
    most important override that holds it; the image's own changes (its
    deletions too) to any path an override holds are dropped: it keeps
    what the install copied from the override.  Returns what to fetch from
    where: the image's paths under "", each override's under its URL."""
    empty = os.path.join(state, "empty")
    os.makedirs(empty, mode=0o700, exist_ok=True)
    owned: dict = {}  # path -> the override that gives it
    extras = []
    for o in overrides:  # most important first
        # Every path it holds, not only those that differ here: one the
        # machine has from it already must not go back to the image's.
        held = {c.path for c in compare(o, empty, excludes, delete=False, wire=wire,
                                        bwlimit=bwlimit).changes if c.path != "."}
        mine = {p for p in held if p not in owned}
        owned.update(dict.fromkeys(mine, o))
        extra = compare(o, root, excludes, delete=False, wire=wire, bwlimit=bwlimit)
        extra.changes = [c for c in extra.changes if c.path in mine]
        extras.append((o, extra))
    plan.changes = [c for c in plan.changes if c.path not in owned]
    fetch_from = {"": plan.transfer()}
    for o, extra in extras:
        plan.changes += extra.changes
        plan.transfer_bytes += extra.transfer_bytes
        fetch_from[o] = extra.transfer()
    return fetch_from


def fetch_over(url: str, stage: str, paths: list, wire: Wire, bwlimit: int | None) -> None:
    """An override's files over the staged image files: the override wins."""
    lst = _files_from(paths, os.path.dirname(stage))
    argv = ["rsync", *RSYNC_FLAGS, "--stats", "--from0", f"--files-from={lst}",
            "--ignore-missing-args"]
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    p = run([*argv, url, stage + "/"], check=False, timeout=24 * 3600)
    if p.returncode != 0:
        raise UpdateError(f"fetching override {url} failed: {_rsync_error(p)}",
                          "nothing on this machine has changed; try again")
    wire.add(p.stdout)


def _roll_back_after(root: str, point: RollbackPoint, why: str) -> None:
    """Put the rollback point back.  With a kernel change, the initrds and
    boot loader configuration saved with it come back too: nothing to
    rebuild."""
    say(f"{why}: rolling back")
    restore(root, point)
    say("rolled back to the state before the update")


def _finish(server: Server, host: str | None, version: str, result: dict,
            a: argparse.Namespace, message: str) -> None:
    name, _, number = version.partition("@")
    state = os.path.join(a.system_root, STATE_DIR, "last.json")
    with open(state + ".tmp", "w") as f:
        json.dump({"image": version, "time": time.time(), **result}, f, indent=1)
    os.replace(state + ".tmp", state)
    if not a.no_report:
        server.report({"kind": "updated", "hostname": host, "image": name,
                       "image_version": int(number) if number else None, "message": message,
                       "changes": result.get("changes")})


def rollback(a: argparse.Namespace) -> dict:
    root = _check_root(a.system_root)
    # Refused before the lock: a machine with nothing to roll back gets no
    # state directory either.
    RollbackPoint.load(os.path.join(root, STATE_DIR, "rollback"))
    with locked(root):
        point = RollbackPoint.load(os.path.join(root, STATE_DIR, "rollback"))
        if point.rolled_back:
            raise UpdateError("the last update was rolled back already",
                              "update again to take a new rollback point")
        before = kernels(root)
        restore(root, point)
        if point.kernel_changed and kernels(root) != before:
            # The saved initrds and boot loader configuration came back with
            # the kernels: nothing to rebuild, only to check.
            say("kernels rolled back with their initrds and boot configuration")
        problems = [] if a.no_health_check else health_problems(root, [], None)
        say(f"rolled back the update to {point.image}"
            + (f"; warning: {'; '.join(problems)}" if problems else ""))
        if a.server and not a.no_report:
            Server(a.server, a.port).report({
                "kind": "rolled-back", "hostname": hostname_of(root, a.hostname),
                "message": f"rolled back the update to {point.image}"})
        return {"rolled_back": point.image, "paths": len(point.saved) + len(point.created),
                "problems": problems}


# ------------------------------------------------------------ autoinstall ---

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _host_name_ok(name: str) -> bool:
    """RFC 1123, as the installer checks host and domain names (this file
    cannot import agent.params.kinds.is_hostname: the same rule, kept in
    step by tests/unit/test_updateclient_autoinstall.py)."""
    name = name[:-1] if name.endswith(".") else name
    labels = name.split(".")
    return 0 < len(name) <= 253 and not all(p.isdigit() for p in labels) \
        and all(_LABEL.fullmatch(p) for p in labels)


def _ipv4(text: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def check_install_words(server: Server, host: str | None, net: dict) -> None:
    """What the installer would refuse at its start, found before this
    machine reboots into it (it would stop there, at a shell): the host
    name, the search domain and a static network it cannot use."""
    if host is not None and not _host_name_ok(host):
        raise UpdateError(f"this machine's host name {host!r} is not one the installer takes "
                          "(RFC 1123: letters, digits and '-')", "give --hostname NAME")
    if net.get("method") != "static" or not net.get("address"):
        return
    if net.get("domain") and not _host_name_ok(str(net["domain"])):
        raise UpdateError(f"this machine's search domain {net['domain']!r} is not one the "
                          "installer takes (RFC 1123)",
                          "give the network with --append si.ip-address=... si.netmask=... "
                          "si.domainname=...")
    import ipaddress

    iface = ipaddress.ip_interface(str(net["address"]))
    gateway = net.get("gateway")
    if gateway and (ipaddress.ip_address(gateway) not in iface.network
                    or iface.network.prefixlen == 32):
        raise UpdateError(f"this machine's default route via {gateway} is not inside its "
                          f"network {iface.network}, which the installer needs",
                          "give the install network with --append si.ip-address=... "
                          "si.netmask=... si.gateway=...")
    if not _ipv4(server.host) and not [d for d in net.get("dns") or () if _ipv4(d)]:
        raise UpdateError(f"the image server {server.host!r} is a name, and this machine has "
                          "no IPv4 DNS server for the installer to look it up",
                          "give --server as an IP address")


def cmdline_params(server: Server, image: str, host: str | None, net: dict,
                   extra: list, console: list) -> list:
    """The agent's install parameters for this machine, from its live
    network: DHCP when it got its address so, else the same static one
    (its IPv4 DNS servers: the install network is IPv4 only)."""
    words = [f"IMAGESERVER={server.host}", f"si.server-port={server.port}",
             f"IMAGENAME={image}", "si.post-action=reboot"]
    if host:
        words.append(f"HOSTNAME={host}")
    if net.get("mac"):
        words.append("BOOTIF=01-" + str(net["mac"]).lower().replace(":", "-"))
    if net.get("method") == "static" and net.get("address"):
        address, _, prefix = str(net["address"]).partition("/")
        words += [f"si.ip-address={address}", f"si.netmask={prefix or '24'}"]
        if net.get("gateway"):
            words.append(f"si.gateway={net['gateway']}")
        dns = [d for d in net.get("dns") or () if _ipv4(d)]
        if dns:
            words.append("si.dns-servers=" + ",".join(dns))
        if net.get("domain"):
            words.append(f"si.domainname={net['domain']}")
    return [*console, *words, *extra]


def live_network() -> dict:
    """The interface of the default route, from iproute2 (this file's own
    reader; `sysclone updateclient` uses pyroute2 and D-Bus instead)."""
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "default"]).stdout or "[]")
    if not routes:
        raise UpdateError("this machine has no default route: cannot tell its install network",
                          "pass the network with --append si.ip-address=... or fix the route")
    dev, gateway = routes[0].get("dev"), routes[0].get("gateway")
    links = json.loads(run(["ip", "-j", "-4", "addr", "show", "dev", dev]).stdout or "[]")
    info = links[0] if links else {}
    addr: dict = next((a for a in info.get("addr_info") or () if a.get("family") == "inet"),
                      {})
    dynamic = bool(addr.get("dynamic")) or addr.get("valid_life_time") not in (None, 4294967295)
    dns: list = []
    domain = None
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                w = line.split()
                if len(w) >= 2 and w[0] == "nameserver" and not w[1].startswith("127."):
                    dns.append(w[1])
                elif len(w) >= 2 and w[0] in ("search", "domain"):
                    domain = w[1]
    except OSError:
        pass
    return {"interface": dev, "mac": info.get("address"), "method":
            "dhcp" if dynamic else "static",
            "address": f"{addr.get('local')}/{addr.get('prefixlen')}" if addr else None,
            "gateway": gateway, "dns": dns, "domain": domain}


def _console_words() -> list:
    """console= of the running kernel: the installer speaks where this does."""
    try:
        with open("/proc/cmdline") as f:
            return [w for w in f.read().split() if w.startswith("console=")]
    except OSError:
        return []


def _download(server: Server, name: str, dest: str, sha256: str | None) -> None:
    """One file of the boot environment, checked against the manifest's
    sha256 before it is written (a manifest without one is refused: an
    unchecked installer is not booted)."""
    if not sha256:
        raise UpdateError(f"the boot environment's manifest gives no sha256 for {name}",
                          "rebuild the boot environment on the server, then try again")
    data = server.get(f"/v1/bootenv/{name}", timeout=600)
    import hashlib

    if hashlib.sha256(data).hexdigest() != sha256:
        raise UpdateError(f"the boot environment's {name} does not match its manifest",
                          "rebuild it on the server, then try again")
    tmp = dest + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)


GRUB_SCRIPT = "etc/grub.d/42_sysclone_autoinstall"
ENTRY_ID = "sysclone-autoinstall"


def grub_entry(root: str, kernel: str, initrd: str, cmdline: list) -> str:
    """A menu entry for the boot environment in /boot/sysclone, with the
    paths as GRUB sees them (a separate /boot is its own filesystem)."""
    rel = run(in_root(root, ["grub-mkrelpath", kernel])).stdout.strip()
    rel_initrd = run(in_root(root, ["grub-mkrelpath", initrd])).stdout.strip()
    uuid = run(in_root(root, ["grub-probe", "--target=fs_uuid", kernel])).stdout.strip()
    import shlex

    args = " ".join(shlex.quote(w) for w in cmdline)
    return (f"menuentry 'sysclone autoinstall' --id {ENTRY_ID} {{\n"
            f"    search --no-floppy --fs-uuid --set=root {uuid}\n"
            f"    linux {rel} {args}\n"
            f"    initrd {rel_initrd}\n"
            "}\n")


def autoinstall(a: argparse.Namespace, network: dict | None = None,
                check: Callable[[str], None] | None = None) -> dict:
    """Reinstall this machine at its next boot: the boot environment into
    /boot/sysclone, a one-shot entry (grub-reboot), or kexec straight into
    it.  No media, no network boot, the firmware's boot order untouched.
    `check` (sysclone updateclient: the installer's own parser) gets the
    install parameters before anything is written."""
    root = _check_root(a.system_root)
    if not a.server or not a.image:
        raise UpdateError("--autoinstall needs --server SERVER and --image NAME")
    if not a.kexec and not os.path.isdir(os.path.join(root, "etc/grub.d")):
        raise UpdateError("this machine does not boot with GRUB (no /etc/grub.d): no one-shot "
                          "boot entry can be added", "use --kexec")
    server = Server(a.server, a.port)
    host = hostname_of(root, a.hostname)
    # The server knows the image (a wrong name stops here, before anything).
    answer = server.get_json("/v1/update", {"hostname": host, "image": a.image})
    manifest = json.loads(server.get("/v1/bootenv/manifest.json"))
    net = network if network is not None else live_network()
    check_install_words(server, host, net)
    words = cmdline_params(server, a.image, host, net, list(a.append), _console_words())
    if check is not None:
        check(" ".join(words))
    target = os.path.join(root, "boot/sysclone")
    os.makedirs(target, exist_ok=True)
    kernel, initrd = os.path.join(target, "kernel"), os.path.join(target, "initrd.img")
    _download(server, "kernel", kernel, (manifest.get("kernel") or {}).get("sha256"))
    _download(server, "initrd.img", initrd, (manifest.get("initrd") or {}).get("sha256"))
    with open(os.path.join(target, "cmdline"), "w") as f:
        f.write(" ".join(words) + "\n")
    say(f"boot environment in /boot/sysclone; install parameters: {' '.join(words)}")
    img = answer["image"]
    result = {"image": img["name"], "cmdline": words, "method": "kexec" if a.kexec else "grub"}
    if a.kexec:
        # The running kernel loads the files where they are (under --root
        # too). -s: the kernel checks their signature itself (lockdown,
        # Secure Boot); a kernel without kexec_file_load takes plain -l.
        load = ["kexec", "-s", "-l", kernel, f"--initrd={initrd}",
                "--command-line=" + " ".join(words)]
        if run(load, check=False).returncode != 0:
            run(["kexec", "-l", *load[3:]])
        say("kexec loaded")
        if not a.no_reboot:
            _report_autoinstall(server, host, a, img)
            run(["systemctl", "kexec"], check=False) if _systemd_runs() else run(["kexec", "-e"])
        return result
    script = os.path.join(root, GRUB_SCRIPT)
    # The system's own GRUB tools, with /proc, /sys and /dev when they run
    # in a root that is not this one.
    with system_mounts(root):
        entry = grub_entry(root, "/boot/sysclone/kernel", "/boot/sysclone/initrd.img", words)
        with open(script, "w") as f:
            f.write("#!/bin/sh\n# sysclone updateclient --autoinstall: removed once written\n"
                    "exec tail -n +4 \"$0\"\n" + entry)
        os.chmod(script, 0o755)
        try:
            run(in_root(root, ["update-grub"]), timeout=600)
        finally:
            # The entry stays in grub.cfg until the next update-grub: one-shot.
            os.unlink(script)
        run(in_root(root, ["grub-reboot", ENTRY_ID]))
    say("next boot: the sysclone installer (grub-reboot), once")
    if not a.no_reboot:
        _report_autoinstall(server, host, a, img)
        run(["systemctl", "reboot"], check=False) if _systemd_runs() else run(["reboot"])
    return result


def _systemd_runs() -> bool:
    """Whether systemd is this machine's init (sd_booted())."""
    return os.path.isdir("/run/systemd/system")


def _report_autoinstall(server: Server, host: str | None, a: argparse.Namespace,
                        img: dict) -> None:
    if not a.no_report:
        server.report({"kind": "info", "hostname": host,
                       "message": f"rebooting into a reinstall with image {img['name']}"})


# ------------------------------------------------------------------- main ---

def add_arguments(ap: argparse.ArgumentParser, root_flag: str = "--root") -> None:
    """The options, shared with `sysclone updateclient` (where --root names
    sysclone's state directory, so the system root is --system-root)."""
    ap.add_argument("--server", "-server", help="the image server (host name or address)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT,
                    help=f"its HTTP port (default {DEFAULT_PORT})")
    ap.add_argument("--image", "-image", help="NAME or NAME@N (default: the image this "
                                              "machine has)")
    ap.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                    help="never touch these paths (rsync pattern; repeatable)")
    ap.add_argument("--exclude-from", action="append", default=[], metavar="FILE")
    ap.add_argument("--dry-run", "-dry-run", action="store_true",
                    help="list what would change, change nothing")
    ap.add_argument("--rollback", action="store_true",
                    help="put back the state before the last update")
    ap.add_argument("--health-check", action="append", default=[], metavar="COMMAND",
                    help="a command that must succeed after the update (repeatable; also "
                         f"/{HEALTH_FILE}); a failure rolls the update back")
    ap.add_argument("--no-health-check", action="store_true",
                    help="skip the health check (the update is not rolled back)")
    ap.add_argument("--bwlimit", type=int, metavar="KBPS", help="rsync's bandwidth limit")
    ap.add_argument("--local-initrd", action="store_true",
                    help="when a kernel changed, build its initrd on this machine even where "
                         "the image server could (initramfs-tools with MODULES=most: the "
                         "server builds it natively, from the image and this machine's own "
                         "initrd files)")
    ap.add_argument("--hostname", help="this machine's name for the server (default: its own)")
    ap.add_argument(root_flag, dest="system_root", default="/",
                    help="the system to update (default: /)")
    ap.add_argument("--autoinstall", "-autoinstall", action="store_true",
                    help="reinstall this machine with --image at its next boot")
    ap.add_argument("--kexec", action="store_true", help="with --autoinstall: kexec into the "
                                                         "installer instead of rebooting")
    ap.add_argument("--append", action="append", default=[], metavar="WORD",
                    help="with --autoinstall: more install parameters (repeatable)")
    ap.add_argument("--no-reboot", action="store_true",
                    help="with --autoinstall: prepare, do not reboot")
    ap.add_argument("--no-report", action="store_true", help="do not tell the monitor")
    ap.add_argument("--json", action="store_true", help="print the result as JSON at the end")


DESCRIPTION = ("Bring this machine to a version of its image, roll it back, or reinstall it "
               "(SystemImager's si_updateclient).")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="updateclient", description=DESCRIPTION)
    add_arguments(ap)
    return ap


def check_args(a: argparse.Namespace) -> str:
    if not 0 < a.port < 65536:
        return "--port must be 1-65535"
    if a.server and (a.server.startswith("-") or any(c.isspace() for c in a.server)):
        return f"--server {a.server!r} is not a host"
    if a.image and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}(@[1-9][0-9]*)?",
                                    a.image):
        return f"--image {a.image!r} is not NAME or NAME@N"
    if a.bwlimit is not None and a.bwlimit <= 0:
        return "--bwlimit must be positive"
    if sum(map(bool, (a.rollback, a.autoinstall, a.dry_run))) > 1:
        return "--rollback, --autoinstall and --dry-run go alone"
    if a.local_initrd and (a.rollback or a.autoinstall or a.dry_run):
        return "--local-initrd goes with an update (it builds the new kernel's initrd)"
    if (a.kexec or a.append or a.no_reboot) and not a.autoinstall:
        return "--kexec, --append and --no-reboot go with --autoinstall"
    for w in a.append:
        if any(c.isspace() for c in w) or not w:
            return f"--append {w!r}: one word each"
    return ""


def main(argv: list | None = None, network: dict | None = None) -> int:
    return run_parsed(build_parser().parse_args(argv), network)


def dispatch(a: argparse.Namespace, network: dict | None = None,
             check: Callable[[str], None] | None = None) -> dict:
    """Do what the (checked) options ask; `network` (sysclone updateclient)
    replaces the iproute2 reading of the live network for --autoinstall,
    and `check` checks its install parameters as the installer will."""
    if a.rollback:
        return rollback(a)
    if a.autoinstall:
        return autoinstall(a, network, check)
    return update(a)


def run_parsed(a: argparse.Namespace, network: dict | None = None) -> int:
    problem = check_args(a)
    if problem:
        print(f"updateclient: {problem}", file=sys.stderr)
        return 2
    try:
        result = dispatch(a, network)
    except UpdateError as e:
        print(f"updateclient: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("updateclient: interrupted", file=sys.stderr)
        return 130
    if a.json:
        print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    if os.path.isfile(__file__):
        SCRIPT_FILE = os.path.abspath(__file__)
    sys.exit(main())
