"""sysclone client: make a golden client ready to be captured (si_prepareclient).

This one file is all a golden client needs besides Python 3.9+ and rsync:
the image server serves it (GET /v1/client/prepare.py, or as a zipapp at
/v1/client/sysclone-client.pyz), so nothing of sysclone is installed there:

    curl -fsS http://SERVER:8181/v1/client/prepare.py | python3 - prepare --server SERVER

`prepare` records what the server needs to know about this machine (its
disks, mounts, RAID, LVM and loaded modules: the "facts") and starts a
one-shot rsync daemon that exports `/` read-only to that one server, behind
a random secret it prints.  The daemon stops by itself after the first
completed capture, or after --timeout seconds (default one hour): the golden
client is never left serving its root filesystem, secrets included.

Standard library only, and nothing newer than Python 3.9: the image server
imports FACTS, fact_script(), parse_fact_stream() and skipped_mounts() from
here so that agentless (SSH) captures read exactly the same facts.  For the
same reason this file runs its few commands with subprocess itself instead
of sysclone.run, which does not exist on a golden client.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection

LVM_IN_USE = "lsblk -nro TYPE 2>/dev/null | grep -qx lvm || exit 0; "

# What the server needs to know, as (name, POSIX shell snippet).  Every one
# is optional: a missing tool just leaves its fact empty.  Only read-only
# commands; JSON output where the tool has it, so nothing is scraped.
FACTS = (
    ("hostname", "cat /proc/sys/kernel/hostname"),
    ("uname", "uname -srm"),
    ("os-release", "cat /etc/os-release"),
    ("firmware", "if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi"),
    ("rsync", "rsync --version"),
    ("lsblk", "lsblk -J -b -O"),
    # No SIZE/USED columns: they statfs() every mount and hang on a dead NFS server.
    ("findmnt", "findmnt -J -l -o TARGET,SOURCE,FSTYPE,OPTIONS,FSROOT,MAJ:MIN"),
    ("sfdisk", "lsblk -dnp -o NAME,TYPE | while read -r dev type; do "
               "case $type in disk|loop) sfdisk -J \"$dev\" 2>/dev/null;; esac; done; true"),
    ("blkid", "blkid -o export"),
    ("mdstat", "cat /proc/mdstat"),
    ("mdadm", "[ ! -e /proc/mdstat ] || mdadm --detail --scan --verbose"),
    # LVM's tools take a while to start: only asked when a volume is in use.
    ("lvm-pvs", LVM_IN_USE + "pvs --reportformat json --units b --nosuffix "
                "-o pv_name,vg_name,pv_size,dev_size"),
    ("lvm-vgs", LVM_IN_USE + "vgs --reportformat json --units b --nosuffix "
                "-o vg_name,vg_size,vg_extent_size,max_lv,max_pv"),
    ("lvm-lvs", LVM_IN_USE + "lvs --reportformat json --units b --nosuffix "
                "-o lv_name,vg_name,lv_size,lv_path,segtype,stripes"),
    ("swaps", "cat /proc/swaps"),
    ("fstab", "cat /etc/fstab"),
    ("modules", "cat /proc/modules"),
    ("modaliases", "cat /sys/bus/*/devices/*/modalias 2>/dev/null | sort -u"),
)
FACT_ERR_MAX = 4096

# Filesystems whose contents are never part of an image: kernel views,
# memory, network shares, removable media, container layers.  Their mount
# points stay (as empty directories) so the clone can mount them again.
PSEUDO_FS = frozenset((
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "securityfs", "efivarfs",
    "debugfs", "tracefs", "configfs", "cgroup", "cgroup2", "pstore", "hugetlbfs", "mqueue",
    "binfmt_misc", "autofs", "bpf", "fusectl", "rpc_pipefs", "nsfs", "selinuxfs",
    "squashfs", "overlay", "aufs", "zram", "fuse", "iso9660", "udf", "nfs", "nfs4", "nfsd",
    "cifs", "smb3", "smbfs", "sshfs", "9p", "virtiofs", "ceph", "glusterfs", "lustre",
    "gfs2", "ocfs2", "afs", "davfs", "vboxsf",
))
LC_ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
          "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
          "LVM_SUPPRESS_FD_WARNINGS": "1"}

USER = "sysclone"  # the rsync user name (not a system account)
DEFAULT_MODULE = "sysclone"
DEFAULT_PORT = 873
DEFAULT_TIMEOUT = 3600


class PrepareError(Exception):
    """Why the export cannot start: one line for the user."""


# --- facts ------------------------------------------------------------------
def fact_script(nonce: str, names: Collection[str] | None = None) -> str:
    """One POSIX sh script printing every fact (or those `names`) between
    marker lines; the nonce keeps a fact's output from faking a marker."""
    out = ["export LANG=C.UTF-8 LC_ALL=C.UTF-8 LVM_SUPPRESS_FD_WARNINGS=1",
           "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           # No writable /tmp (a read-only root): run the facts all the same.
           't=$(mktemp 2>/dev/null) || t=/dev/null']
    for name, snippet in FACTS:
        if names is not None and name not in names:
            continue
        out += [f"printf '@@{nonce} out {name}\\n'",
                f"( {snippet} ) 2>\"$t\" </dev/null",
                "rc=$?",
                f"printf '\\n@@{nonce} err {name} %s\\n' \"$rc\"",
                f"head -c {FACT_ERR_MAX} \"$t\"",
                f"printf '\\n@@{nonce} end {name}\\n'"]
    out.append('[ "$t" = /dev/null ] || rm -f "$t"')
    return "\n".join(out) + "\n"


def parse_fact_stream(text: str, nonce: str) -> dict:
    """The facts printed by fact_script(): {name: {"rc", "out", "err"}}."""
    facts: dict = {}
    name = part = None
    buf: list = []
    rc = 0
    tag = f"@@{nonce} "
    for line in text.split("\n"):
        if line.startswith(tag):
            words = line[len(tag):].split(" ")
            if words[0] == "out" and len(words) == 2:
                name, part, buf = words[1], "out", []
                continue
            if words[0] == "err" and len(words) == 3 and name == words[1]:
                out = "\n".join(buf)
                rc = int(words[2]) if words[2].lstrip("-").isdigit() else -1
                part, buf = "err", []
                facts[name] = {"rc": rc, "out": out, "err": ""}
                continue
            if words[0] == "end" and len(words) == 2 and name == words[1]:
                facts[name]["err"] = "\n".join(buf).strip()
                name = part = None
                continue
        if part is not None:
            buf.append(line)
    return facts


def collect_facts() -> dict:
    """The same facts, read on this machine."""
    facts = {}
    for name, snippet in FACTS:
        p = subprocess.run(["/bin/sh", "-c", snippet], stdin=subprocess.DEVNULL,
                           capture_output=True, env=LC_ENV,
                           check=False)
        facts[name] = {"rc": p.returncode,
                       "out": p.stdout.decode("utf-8", "replace").rstrip("\n"),
                       "err": p.stderr.decode("utf-8", "replace")[:FACT_ERR_MAX].strip()}
    return facts


def is_bind(m: dict) -> bool:
    """A mount of a directory inside a filesystem rather than its root --
    except a btrfs subvolume mounted as such (subvol=/@home), which is its
    own tree."""
    fsroot = m.get("fsroot") or "/"
    if fsroot == "/":
        return False
    opts = (m.get("options") or "").split(",")
    return not (m.get("fstype") == "btrfs" and f"subvol={fsroot}" in opts)


def skipped_mounts(findmnt_json: str) -> list:
    """Mount points whose contents a capture leaves out, with the reason:
    pseudo and network filesystems, bind mounts (their data is captured
    where it really lives) and second mounts of the same tree."""
    try:
        mounts = json.loads(findmnt_json or "{}").get("filesystems") or []
    except ValueError:
        return []
    out = []
    seen = set()
    for m in mounts:
        target = m.get("target") or ""
        fstype = (m.get("fstype") or "").split(".")[0]  # fuse.sshfs -> fuse
        key = (m.get("maj:min"), m.get("fsroot") or "/")
        if not target.startswith("/"):
            continue
        if target == "/":
            seen.add(key)
            continue
        if fstype in PSEUDO_FS:
            out.append((target, f"{m.get('fstype')} filesystem"))
        elif is_bind(m):
            out.append((target, f"bind mount of {m.get('source')}"))
        elif key in seen:
            out.append((target, f"second mount of {m.get('source')}"))
        else:
            seen.add(key)
    return out


def rsync_escape(path: str) -> str:
    """A literal path inside an rsync pattern that also has wildcards."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in path)


def mount_rules(skipped: list) -> list:
    """Filter rules keeping each skipped mount point but none of its contents."""
    rules = []
    for target, _why in skipped:
        if "\n" in target or "\r" in target:
            raise ValueError(f"mount point {target!r} has a line break; cannot exclude it")
        rules.append("- " + rsync_escape(target.rstrip("/")) + "/**")
    return rules


# --- the one-shot daemon ------------------------------------------------------
def server_addresses(server: str) -> list:
    """The image server's IP addresses: the only hosts the daemon serves."""
    try:
        infos = socket.getaddrinfo(server, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise PrepareError(f"cannot resolve --server {server!r}: {e}") from None
    out = []
    for info in infos:
        addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if addr.is_unspecified or addr.is_multicast:
            raise PrepareError(f"--server {server!r} is not one host")
        if str(addr) not in out:
            out.append(str(addr))
    return out


def local_address(server_ip: str) -> str:
    """This machine's address on the route to the server (for the printed URL)."""
    fam = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        try:
            s.connect((server_ip, 9))
            return str(s.getsockname()[0])
        except OSError:
            return socket.gethostname()


def render_rsyncd(work: str, port: int, module: str, hosts: list, address: str) -> str:
    """One read-only module for `/` and one for the facts, both behind the
    secret, both served to the image server only."""
    lines = [
        "# sysclone client prepare: one-shot export of / to the image server",
        f"port = {port}",
        f"pid file = {work}/rsyncd.pid",
        f"lock file = {work}/rsyncd.lock",
        "uid = root", "gid = root", "use chroot = yes", "numeric ids = yes",
        "read only = yes", "write only = no", "max connections = 4",
        "timeout = 600", "reverse lookup = no", "transfer logging = no",
        f"hosts allow = {' '.join(hosts)}", "hosts deny = *",
        f"auth users = {USER}:ro", f"secrets file = {work}/secrets", "strict modes = yes",
        "refuse options = delete remove-source-files",
        # Listed to the server only (hosts allow); with "list = no" rsync
        # answers a host it refuses with "unknown module", which misleads.
        "list = yes",
        "dont compress = *",
    ]
    if address:
        lines.insert(1, f"address = {address}")
    lines += ["", f"[{module}]", "    path = /", "    comment = golden client root (read-only)",
              f"    exclude from = {work}/exclude",
              f"    post-xfer exec = /bin/sh {work}/post-xfer",
              "", f"[{module}-facts]", f"    path = {work}/facts",
              "    comment = what the image server needs to know about this machine", ""]
    return "\n".join(lines)


# The transfer statuses after which the image server keeps the capture
# (imageserver.transfer): 0, and 24, files that vanished while being read,
# which a live system's always may.  Any other leaves the export waiting.
CAPTURED = ("0", "24")

POST_XFER = """#!/bin/sh
# Run by rsyncd after each transfer of the root module: tell `prepare`
# how it ended, so it stops the daemon after the first complete capture.
echo "${RSYNC_EXIT_STATUS:-?} ${RSYNC_HOST_ADDR:-?}" >> '%s/transfers'
"""


def _write(path: str, text: str, mode: int = 0o600) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _die_with_parent() -> None:
    """In the daemon, before exec: if this script dies (even by SIGKILL),
    the kernel stops the export too (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def prepare(a: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise PrepareError("run as root (the export must read every file)")
    if shutil.which("rsync", path=LC_ENV["PATH"]) is None:
        raise PrepareError("rsync is not installed on this machine")
    hosts = server_addresses(a.server)
    if a.secret_file:
        with open(a.secret_file) as f:
            secret = f.read().strip()
        if len(secret) < 16 or any(c.isspace() for c in secret):
            raise PrepareError("the secret must be one word of at least 16 characters")
    else:
        secret = secrets.token_urlsafe(24)
    # A closed SSH session (SIGHUP) or a kill (SIGTERM) stops the export
    # like Ctrl-C does: never a daemon left serving / behind.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    work = tempfile.mkdtemp(prefix="sysclone-prepare.")  # 0700, root's
    try:
        facts = collect_facts()
        os.mkdir(os.path.join(work, "facts"), 0o700)
        _write(os.path.join(work, "facts", "facts.json"), json.dumps(facts, indent=1))
        rules = ["- /proc/**", "- /sys/**", "- /dev/**", "- /run/**", f"- {work}/**"]
        rules += mount_rules(skipped_mounts(facts["findmnt"]["out"]))
        _write(os.path.join(work, "exclude"), "\n".join(rules) + "\n")
        _write(os.path.join(work, "secrets"), f"{USER}:{secret}\n")
        _write(os.path.join(work, "post-xfer"), POST_XFER % work, 0o700)
        conf = os.path.join(work, "rsyncd.conf")
        _write(conf, render_rsyncd(work, a.port, a.module, hosts, a.address))
        proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}"],
                                stdin=subprocess.DEVNULL, env=LC_ENV,
                                preexec_fn=_die_with_parent)
        try:
            return _serve(a, proc, work, hosts, secret)
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _serve(a: argparse.Namespace, proc: subprocess.Popen, work: str, hosts: list,
           secret: str) -> int:
    me = local_address(hosts[0])
    host = f"[{me}]" if ":" in me else me
    url = f"rsync://{host}:{a.port}/{a.module}"
    print(f"sysclone prepare: exporting / read-only to {', '.join(hosts)} as {url}", flush=True)
    print(f"secret: {secret}", flush=True)
    print("on the image server:\n"
          f"  sysclone image capture NAME --from {url} --secret-file FILE_WITH_THE_SECRET\n"
          f"the export stops after one capture, or in {a.timeout} s", flush=True)
    done = os.path.join(work, "transfers")
    deadline = time.monotonic() + a.timeout
    seen = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            print(f"sysclone prepare: rsync daemon exited ({proc.returncode})", file=sys.stderr)
            return 1
        if os.path.exists(done):
            with open(done) as f:
                lines = f.read().splitlines()
            for line in lines[seen:]:
                status, _, addr = line.partition(" ")
                if status in CAPTURED:
                    print(f"sysclone prepare: captured by {addr}; export stopped", flush=True)
                    return 0
                print(f"sysclone prepare: a transfer to {addr} failed (rsync status {status}); "
                      "still waiting", flush=True)
            seen = len(lines)
        time.sleep(0.2)
    print(f"sysclone prepare: nobody captured this machine in {a.timeout} s; export stopped",
          file=sys.stderr)
    return 1


def facts_main(a: argparse.Namespace) -> int:
    json.dump(collect_facts(), sys.stdout, indent=1)
    print()
    return 0


PREPARE_HELP = ("Record this machine's disk layout and modules and export / once, read-only "
                "and behind a random secret, to the image server only (SystemImager's "
                "si_prepareclient).  Stops after one capture or the timeout.")


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", help="the image server (host name or address); required")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port to listen on (default {DEFAULT_PORT})")
    p.add_argument("--address", default="", help="local address to listen on (default: all)")
    p.add_argument("--module", default=DEFAULT_MODULE,
                   help=f"rsync module name (default {DEFAULT_MODULE})")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                   help=f"seconds before the export stops anyway (default {DEFAULT_TIMEOUT})")
    p.add_argument("--secret-file", help="use the secret in this file instead of a random one")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sysclone-client",
                                 description="Golden client side of a sysclone capture.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("prepare", help="export / once, read-only, to the image server",
                       description=PREPARE_HELP)
    add_prepare_arguments(p)
    p.set_defaults(fn=run_prepare)
    f = sub.add_parser("facts", help="print the facts the server reads (JSON)",
                       description="Print the disk, mount and module facts (JSON).")
    f.set_defaults(fn=facts_main)
    return ap


def check_args(a: argparse.Namespace) -> str:
    """What is wrong with prepare's options ("" if nothing)."""
    if not 0 < a.port < 65536:
        return "--port must be 1-65535"
    if a.timeout <= 0:
        return "--timeout must be positive"
    if not a.module or not a.module.replace("-", "").replace("_", "").isalnum() \
            or not a.module.isascii() or len(a.module) > 64:
        return "--module must be letters, digits, '-' and '_'"
    if not a.server:
        return "--server SERVER is required: the image server the export is for"
    if a.server.startswith("-") or any(c.isspace() for c in a.server):
        return f"--server {a.server!r} is not a host"
    return ""


def run_prepare(a: argparse.Namespace) -> int:
    problem = check_args(a)
    if problem:
        print(f"sysclone prepare: {problem}", file=sys.stderr)
        return 2
    try:
        return prepare(a)
    except PrepareError as e:
        print(f"sysclone prepare: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sysclone prepare: interrupted; export stopped", file=sys.stderr)
        return 130


def main(argv: list | None = None) -> int:
    a = build_parser().parse_args(argv)
    return int(a.fn(a))


if __name__ == "__main__":
    sys.exit(main())
