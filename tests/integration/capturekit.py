"""What the capture integration tests share: a tree full of awkward content,
a golden client on loopback (a chroot with its own mounts, running sshd or
`client prepare`), independent ways to compare trees (rsync's itemized
checksum dry run, getfattr, getfacl, stat), and a fingerprint of the store.

The golden client is a directory made a mount point, with the host's /usr
and /etc bound read-only (so sshd, rsync and python run in it), /proc,
/sys, /dev, a tmpfs /run and /tmp, a separate ext4 /boot on a loop device
and the awkward tree in /data.  Seen from inside, it is a machine whose
real filesystems are / and /boot and whose other mounts a capture skips.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

LONG = "d" * 200
NS_MTIME = 1_234_567_890_123_456_789  # 2009, with nanoseconds
PY39 = Path("/root/.pyenv/versions/3.9.18")
REPO = Path(__file__).resolve().parents[2]


def sh(*argv: str | os.PathLike[str], check: bool = True, input: str | None = None) -> str:
    r = subprocess.run([os.fspath(a) for a in argv], capture_output=True, text=True,
                       input=input, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"{argv}: {r.returncode}: {r.stderr or r.stdout}")
    return r.stdout


def capture_process(root: Path, name: str, source: Path) -> subprocess.Popen[str]:
    """`sysclone image capture NAME --from SOURCE` in a process of its own,
    for a test to interrupt.  Ctrl-C as at a terminal: a test run started as
    a background job (`cmd &` in a script) inherits SIGINT ignored, and a
    Python started so never raises KeyboardInterrupt -- the capture then,
    rightly, goes on."""
    return subprocess.Popen(
        [sys.executable, "-m", "sysclone.cli", "--root", str(root), "image", "capture", name,
         "--from", str(source)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


# --- content ------------------------------------------------------------------
def flip_a_byte(path: Path, offset: int = 1000) -> None:
    """One bit of a file's content flipped, its times put back: only a
    content hash can tell."""
    st = os.lstat(path)
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def make_versioned_tree(root: Path) -> None:
    """The awkward tree plus 24 MiB of blobs: a 1 MiB change is then about
    the 4 % the version tests measure against."""
    make_awkward_tree(root)
    (root / "blobs").mkdir()
    for i in range(24):
        (root / f"blobs/b{i:02}").write_bytes(os.urandom(1 << 20))


def make_awkward_tree(root: Path) -> dict[str, bytes]:
    """Everything a capture must keep; returns notable paths (bytes, relative)."""
    root.mkdir(parents=True, exist_ok=True)
    r = os.fsencode(root)
    (root / "plain").write_text("plain file\n")
    (root / "empty").write_bytes(b"")
    (root / "with space and  two").write_text("spaces\n")
    os.open(r + b"/new\nline", os.O_CREAT | os.O_WRONLY, 0o644)
    fd = os.open(r + b"/latin1-\xe9t\xe9-\xff\xfe", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"not utf-8 name\n")
    os.close(fd)
    # hard links, inside one directory and across two
    (root / "hl").mkdir()
    (root / "hl/a").write_text("linked\n")
    os.link(root / "hl/a", root / "hl/b")
    os.link(root / "hl/a", root / "hard-elsewhere")
    # sparse: 64 MiB with 4 KiB of data in the middle
    with (root / "sparse").open("wb") as f:
        f.truncate(64 << 20)
        f.seek(32 << 20)
        f.write(os.urandom(4096))
    # devices, FIFO, socket
    os.mknod(root / "null-dev", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loop-dev", 0o660 | stat.S_IFBLK, os.makedev(7, 200))
    os.mkfifo(root / "fifo", 0o640)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        s = socket.socket(socket.AF_UNIX)
        s.bind("socket")  # relative: AF_UNIX paths are short
        s.close()
    finally:
        os.chdir(cwd)
    # owners with no names, odd modes
    (root / "owned").write_text("numeric owner\n")
    os.chown(root / "owned", 12345, 54321)
    (root / "setuid").write_text("#!/bin/sh\n")
    os.chmod(root / "setuid", 0o4755)
    (root / "sticky").mkdir(mode=0o1777)
    os.chmod(root / "sticky", 0o1777)
    (root / "nomode").write_text("mode 000\n")
    os.chmod(root / "nomode", 0)
    (root / "readonly-dir").mkdir()
    (root / "readonly-dir/inside").write_text("x\n")
    os.chmod(root / "readonly-dir", 0o500)
    # xattrs (user, trusted, binary values), a file capability, ACLs
    (root / "xattr").write_text("xattrs\n")
    os.setxattr(root / "xattr", "user.comment", b"hello")
    os.setxattr(root / "xattr", "user.binary", b"\x00\x01\xff")
    os.setxattr(root / "xattr", "trusted.sysclone", b"root only")
    (root / "ping").write_bytes(b"\x7fELF fake binary\n")
    sh("setcap", "cap_net_raw+ep", root / "ping")
    (root / "acl").write_text("acl\n")
    sh("setfacl", "-m", "u:12345:rwx,g:54321:r-x", root / "acl")
    (root / "acl-dir").mkdir()
    sh("setfacl", "-d", "-m", "u:12345:rwx", root / "acl-dir")
    # symlinks: relative, absolute, dangling
    (root / "link-rel").symlink_to("plain")
    (root / "link-abs").symlink_to("/etc/hostname")
    (root / "link-dangling").symlink_to("does/not/exist")
    # a very long path (about 3000 bytes below the tree)
    deep = root / "deep"
    for _ in range(14):
        deep = deep / LONG
    deep.mkdir(parents=True)
    (deep / ("f" * 200)).write_text("deep\n")
    # nanosecond times, on a file, a directory and a symlink
    (root / "ns").mkdir()
    (root / "ns/file").write_text("ns\n")
    (root / "ns/link").symlink_to("file")
    os.utime(root / "ns/file", ns=(NS_MTIME, NS_MTIME))
    os.utime(root / "ns/link", ns=(NS_MTIME + 1, NS_MTIME + 1), follow_symlinks=False)
    os.utime(root / "ns", ns=(NS_MTIME + 2, NS_MTIME + 2))
    return {"sparse": b"sparse", "hardlinks": b"hl/a", "deep": os.fsencode(deep)[len(r):]}


# --- independent comparison -----------------------------------------------------
# Every attribute, times to the nanosecond: what itemized() compares, and
# how a copy to be compared with it is pulled.  With rsync's default window
# a directory's time is set only when the second differs, so a tree made
# and pulled within one second (a fast machine) kept the mkdir's
# nanoseconds (RsyncProject/rsync#802).  The capture pulls the same way.
PULL_EXACT = ("-aHAXS", "--numeric-ids", "--modify-window=-1")


def itemized(src: Path, dst: Path, *extra: str) -> list[str]:
    """What rsync would change to make dst equal src, by content checksum,
    with every attribute: empty when nothing differs."""
    out = sh("rsync", "-n", "-i", *PULL_EXACT, "--checksum", "--delete", *extra,
             f"{src}/", f"{dst}/")
    return [line for line in out.splitlines() if line.strip()]


def getfattr_dump(root: Path) -> str:
    return sh_in(root, "getfattr", "-R", "-P", "-h", "-d", "-m", "-", "-e", "hex", ".")


def getfacl_dump(root: Path) -> str:
    return sh_in(root, "getfacl", "-R", "-P", "-n", ".")


def stat_dump(root: Path) -> str:
    """Type, mode, owner, size, nanosecond mtime, link count, device number
    and sparseness of every path, by find(1)."""
    out = sh_in(root, "find", ".", "-printf", r"%p\0%y %m %U %G %s %T@ %n %S\0").split("\0")
    return "\n".join(sorted(f"{p!r} {a}" for p, a in zip(out[0::2], out[1::2], strict=False)))


def sh_in(cwd: Path, *argv: str) -> str:
    r = subprocess.run(argv, cwd=cwd, capture_output=True, check=False)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode("utf-8", "surrogateescape")
    return lines


def device_numbers(path: Path) -> str:
    return sh("stat", "-c", "%F %t:%T", path).strip()


def fingerprint(top: Path) -> str:
    """Everything below `top`: names, types, modes, owners, sizes, times,
    link targets and file contents.  Equal before and after = untouched."""
    h = hashlib.sha256()
    if not top.exists():
        return "absent"
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            h.update(f"{os.path.relpath(p, top)!r} {st.st_mode} {st.st_uid} {st.st_gid} "
                     f"{st.st_size} {st.st_mtime_ns} {st.st_nlink}".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode) and st.st_size < 1 << 20:
                h.update(Path(p).read_bytes())
    return h.hexdigest()


# --- a golden client on loopback ------------------------------------------------
@dataclass(frozen=True)
class Golden:
    root: Path  # its "/"
    data: Path  # the awkward tree, at /data
    boot: Path  # a filesystem of its own, at /boot


def _mount(stack: ExitStack, *argv: str | os.PathLike[str]) -> None:
    target = Path(argv[-1])
    sh("mount", *argv)
    stack.callback(lambda: sh("umount", "-l", target, check=False))


@contextmanager
def golden_client(base: Path) -> Iterator[Golden]:
    root = base / "golden"
    root.mkdir(parents=True)
    with ExitStack() as stack:
        # The root must be a mount point of its own, as a real / is.
        _mount(stack, "--bind", root, root)
        sh("mount", "--make-private", root)
        for d in ("usr", "etc", "proc", "sys", "dev", "run", "tmp", "root", "boot", "data",
                  "var/tmp", "var/lib"):
            (root / d).mkdir(parents=True, exist_ok=True)
        for link, to in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("lib64", "usr/lib64")):
            (root / link).symlink_to(to)
        for d in ("usr", "etc"):
            _mount(stack, "--bind", f"/{d}", root / d)
            sh("mount", "-o", "remount,bind,ro", root / d)
        _mount(stack, "-t", "proc", "proc", root / "proc")
        _mount(stack, "-t", "sysfs", "sysfs", root / "sys")
        _mount(stack, "--bind", "/dev", root / "dev")
        _mount(stack, "-t", "tmpfs", "-o", "mode=0755", "tmpfs", root / "run")
        _mount(stack, "-t", "tmpfs", "-o", "mode=1777", "tmpfs", root / "tmp")
        (root / "tmp/scratch").write_text("a tmpfs: never captured\n")
        (root / "var/tmp/old").write_text("excluded by default\n")
        (root / "var/lib/state").write_text("kept\n")
        # /boot: a real filesystem of its own, which the capture must cross into
        img = base / "boot.img"
        with img.open("wb") as f:
            f.truncate(64 << 20)
        sh("mkfs.ext4", "-q", "-L", "boot", img)
        loop = sh("losetup", "--find", "--show", img).strip()
        stack.callback(lambda: sh("losetup", "-d", loop, check=False))
        _mount(stack, loop, root / "boot")
        (root / "boot/vmlinuz-test").write_bytes(os.urandom(1 << 16))
        (root / "boot/grub").mkdir()
        (root / "boot/grub/grub.cfg").write_text("set timeout=1\n")
        os.link(root / "boot/grub/grub.cfg", root / "boot/grub/grub.cfg.bak")
        make_awkward_tree(root / "data")
        if PY39.is_dir():
            target = root / str(PY39).lstrip("/")
            target.mkdir(parents=True)
            _mount(stack, "--bind", PY39, target)
        yield Golden(root, root / "data", root / "boot")


@dataclass(frozen=True)
class Sshd:
    port: int
    key: Path  # the image server's client key, authorized for root
    other_key: Path  # a key sshd does not accept

    def source_args(self, style: str = "url") -> list[str]:
        base = ["--ssh-key", str(self.key), "--ssh-option", "StrictHostKeyChecking=no",
                "--ssh-option", "UserKnownHostsFile=/dev/null"]
        if style == "url":
            return ["--from", f"ssh://root@127.0.0.1:{self.port}", *base]
        return ["--from", "root@127.0.0.1", "--ssh-option", f"Port={self.port}", *base]


@contextmanager
def sshd(golden: Golden, keys: Path) -> Iterator[Sshd]:
    """sshd chrooted into the golden client, on a free loopback port, with a
    generated host key and one authorized client key."""
    keys.mkdir(parents=True, exist_ok=True)
    key, other = keys / "id_server", keys / "id_other"
    for k in (key, other):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k)
    run = golden.root / "run/sshtest"
    run.mkdir(parents=True)
    (golden.root / "run/sshd").mkdir(mode=0o755)
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", run / "hostkey")
    (run / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    port = free_port()
    (run / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey /run/sshtest/hostkey\n"
        "AuthorizedKeysFile /run/sshtest/authorized_keys\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nUseDNS no\nPidFile /run/sshtest/sshd.pid\n")
    with (keys / "sshd.log").open("w") as log:
        proc = subprocess.Popen(["chroot", str(golden.root), "/usr/sbin/sshd", "-D", "-e",
                                 "-f", "/run/sshtest/sshd_config"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_port(port)
            yield Sshd(port, key, other)
        finally:
            proc.terminate()
            proc.wait(10)
