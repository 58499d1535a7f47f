"""updateclient for real: the served script, run by Python 3.9 against an
image server on loopback (rsync daemon + API), updates a client tree from
image version 1 to 2 -- files added, changed, removed, re-linked, a kernel
replaced (the tree's own initrd and GRUB tools, chrooted) -- then rolls
back on request, rolls back by itself when the health check fails, and
stays on version 1 when the server goes away mid-update.  Every result is
checked file by file with rsync's own itemized checksum comparison against
the stored version, not with the code under test; the machine's own files
(logs, host keys, fstab, what the install wrote) are checked to be
untouched.  The rollback point is a copy, or a btrfs snapshot on a btrfs
root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imageserver.capture import CaptureOptions, capture
from imageserver.names import ImageRef
from imageserver.serve import Running, ServeConfig, free_port, serving
from imageserver.sources import LocalSource
from imageserver.store import ImageStore
from imageserver.updateclient import SCRIPT, SCRIPT_PATH, ZIPAPP_PATH
from sysclone.paths import StateRoot
from tests.integration.capturekit import PY39
from tests.verify import itemized_differences, sh

PYTHON = str(PY39 / "bin/python3") if (PY39 / "bin/python3").exists() else sys.executable
OLD, NEW = "1.0-test", "2.0-test"
# What the client keeps as its own, for the independent comparison: the
# machine's files (below) and the boot state updateclient manages itself.
KEEP = ("/var/log/**", "/home/**", "/etc/ssh/ssh_host_*", "/etc/fstab", "/etc/hostname",
        "/etc/machine-id",
        "/etc/network/interfaces.d/**", "/boot/grub/**", "/boot/initrd.img-*",
        "/var/lib/sysclone", "/etc/sysclone", "/proc/**", "/sys/**", "/dev/**", "lost+found/")
LOCAL = {"etc/fstab": "UUID=local / ext4 defaults 0 1\n", "etc/hostname": "client1\n",
         "var/log/app.log": "the machine's log\n", "home/u/notes": "users' data\n",
         "etc/ssh/ssh_host_ed25519_key": "host key\n",
         "etc/network/interfaces.d/enp0s2": "auto enp0s2\niface enp0s2 inet dhcp\n"}

UPDATE_INITRAMFS = """#!/bin/sh
# stands for initramfs-tools: -c|-u -k KVER
while [ $# -gt 0 ]; do [ "$1" = -k ] && k=$2; shift; done
echo "initrd of $k, built on this machine" > /boot/initrd.img-$k
# what it read of the system: the fstab, and the settings it kept
for f in /etc/fstab /etc/initramfs-tools/conf.d/*; do
    [ -f "$f" ] && while IFS= read -r line; do echo "$line"; done < "$f"
done >> /boot/initrd.img-$k
true
"""
UPDATE_GRUB = """#!/bin/sh
: > /boot/grub/grub.cfg
for f in /boot/vmlinuz-*; do
    echo "linux $f" >> /boot/grub/grub.cfg
    echo "initrd /boot/initrd.img-${f#/boot/vmlinuz-}" >> /boot/grub/grub.cfg
done
"""


def _shell(root: Path) -> None:
    """dash and its libraries, as /bin/sh: the tree's own tools run in it."""
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    shutil.copy2("/usr/bin/dash", root / "usr/bin/sh")
    for line in sh("ldd", "/usr/bin/dash").splitlines():
        path = next((w for w in line.split() if w.startswith("/")), None)
        if path:
            dest = root / path.lstrip("/").replace("lib/", "usr/lib/", 1) \
                if not path.startswith("/usr/") else root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(path), dest)


def golden(root: Path, version: int, big: bool = False) -> Path:
    _shell(root)
    for rel, text in (("usr/sbin/update-initramfs", UPDATE_INITRAMFS),
                      ("usr/sbin/update-grub", UPDATE_GRUB)):
        (root / rel).write_text(text)
        (root / rel).chmod(0o755)
    kver = OLD if version == 1 else NEW
    files = {"etc/fstab": "# the golden client's\n", "etc/hostname": "golden\n",
             "etc/motd": f"motd of version {version}\n",
             "usr/share/app/data.txt": "app data\n", "usr/bin/tool": "#!/bin/sh\n",
             f"boot/vmlinuz-{kver}": f"kernel {kver}\n" * 100,
             f"lib/modules/{kver}/modules.dep": f"modules of {kver}\n"}
    if version == 1:
        files["etc/issue.net"] = "removed in version 2\n"
    else:
        files["usr/share/app/new.txt"] = "added in version 2\n"
        files["usr/share/newdir/readme"] = "a new directory\n"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "usr/bin/tool").chmod(0o755 if version == 1 else 0o750)
    (root / "usr/bin/tool-link").symlink_to("tool" if version == 1 else "../share/app")
    # what every system has, if empty in an image
    for d in ("var/lib", "var/log", "home", "proc", "sys", "dev", "boot/grub", "etc/ssh",
              "etc/network/interfaces.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "usr/share/hl").mkdir()
    (root / "usr/share/hl/a").write_text(f"linked, version {version}\n")
    os.link(root / "usr/share/hl/a", root / "usr/share/hl/b")
    if big:
        (root / "usr/share/big.bin").write_bytes(os.urandom(24 << 20))
    # Versions are made on different days: rsync's quick check (size and
    # time), which updateclient uses like every rsync user, tells them apart.
    day = 1_600_000_000 + version * 86400
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.utime(p, (day, day))
    return root


@dataclass
class Lab:
    state: StateRoot
    server: Running
    client: Path

    def tree(self, version: int) -> Path:
        return ImageStore(self.state).tree(ImageRef("web", version))

    def update(self, *args: str, check: bool = False, wait: bool = True
               ) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
        argv = [PYTHON, str(SCRIPT), "--server", "127.0.0.1", "--port",
                str(self.server.api.port), "--root", str(self.client), "--hostname", "client1",
                "--no-report", "--json", *args]
        if not wait:
            return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def differences(self, version: int) -> dict[str, str]:
        return itemized_differences(self.tree(version), self.client,
                                    tuple(f"--exclude={p}" for p in KEEP))

    def assert_local_files_untouched(self) -> None:
        for rel, text in LOCAL.items():
            assert (self.client / rel).read_text() == text, rel
        for d in ("lost+found", "boot/lost+found"):
            assert (self.client / d).is_dir(), d


def install_client(client: Path, v1: Path) -> None:
    """The client as an install left it: the image, plus its own files."""
    sh("rsync", "-aHAXS", "--numeric-ids", f"{v1}/", f"{client}/")
    for rel, text in LOCAL.items():
        (client / rel).parent.mkdir(parents=True, exist_ok=True)
        (client / rel).write_text(text)
    (client / f"boot/initrd.img-{OLD}").write_text("the initrd the install made\n")
    # mkfs's, empty, on / and on a separate /boot: in no image
    for d in ("lost+found", "boot/lost+found"):
        (client / d).mkdir(mode=0o700)
    (client / "boot/grub").mkdir(parents=True, exist_ok=True)
    (client / "boot/grub/grub.cfg").write_text(f"linux /boot/vmlinuz-{OLD}\n"
                                               f"initrd /boot/initrd.img-{OLD}\n")


@pytest.fixture
def lab(tmp_path: Path, root_only: None, request: pytest.FixtureRequest) -> Iterator[Lab]:
    big = bool(getattr(request, "param", False))
    state = StateRoot(tmp_path / "state", tmp_path / "cache")
    for v in (1, 2):
        src = golden(tmp_path / f"golden{v}", v, big=big and v == 2)
        capture(state, CaptureOptions("web", LocalSource(src)))
    client = getattr(request.node, "client_root", None) or tmp_path / "client"
    client.mkdir(exist_ok=True)
    install_client(client, ImageStore(state).tree(ImageRef("web", 1)))
    state.logs.mkdir(parents=True, exist_ok=True)
    (state.logs / "client1.jsonl").write_text(json.dumps(
        {"kind": "done", "hostname": "client1", "image": "web", "timings": {"finish": 1.0},
         "written": ["/etc/fstab", "/etc/hostname", "/etc/network/interfaces.d/enp0s2"]}) + "\n")
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port())
    with serving(state, cfg) as srv:
        yield Lab(state, srv, client)


def test_dry_run_changes_nothing(lab: Lab) -> None:
    def compare() -> str:  # updateclient's own lock aside
        return sh("rsync", "-aHAXn", "--omit-dir-times", "--checksum", "-i", "--delete",
                  "--exclude=/var/lib/sysclone", f"{lab.client}/", f"{lab.tree(1)}/")

    before = compare()
    r = lab.update("--image", "web@2", "--dry-run", check=True)
    assert "- /etc/issue.net" in r.stdout and "+ /usr/share/app/new.txt" in r.stdout
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["dry_run"] and result["kernel_changed"]
    assert compare() == before
    assert not (lab.client / "var/lib/sysclone/updateclient/rollback").exists()


def test_update_then_rollback(lab: Lab) -> None:
    assert lab.differences(2)  # not there yet
    r = lab.update("--image", "web@2", check=True)
    result = json.loads(r.stdout.splitlines()[-1])
    assert result["image"] == "web@2" and result["kernel_changed"]
    # The image server built it (initramfs-tools, MODULES=most by default),
    # from version 2 and the machine's own fstab, which the install wrote.
    assert "boot: initrd for 2.0-test built by the image server" in r.stdout, r.stdout
    assert "boot: update-grub" in r.stdout
    assert "UUID=local" in (lab.client / f"boot/initrd.img-{NEW}").read_text()
    # file by file, version 2, but what the machine keeps
    assert lab.differences(2) == {}
    lab.assert_local_files_untouched()
    c = lab.client
    assert (c / "usr/share/hl/a").stat().st_ino == (c / "usr/share/hl/b").stat().st_ino
    # the boot state: an initrd for the new kernel only, and GRUB names it
    assert (c / f"boot/initrd.img-{NEW}").read_text().startswith("initrd of 2.0-test")
    assert not (c / f"boot/initrd.img-{OLD}").exists()
    assert f"linux /boot/vmlinuz-{NEW}" in (c / "boot/grub/grub.cfg").read_text()
    # a second run has nothing to do
    again = lab.update("--image", "web@2", "--dry-run", check=True).stdout
    assert json.loads(again.splitlines()[-1])["changes"] == 0, again

    r = lab.update("--rollback", check=True)
    assert lab.differences(1) == {}
    lab.assert_local_files_untouched()
    assert (c / f"boot/initrd.img-{OLD}").read_text() == "the initrd the install made\n"
    assert not (c / f"boot/initrd.img-{NEW}").exists()
    assert (c / "boot/grub/grub.cfg").read_text() == (f"linux /boot/vmlinuz-{OLD}\n"
                                                      f"initrd /boot/initrd.img-{OLD}\n")
    r = lab.update("--rollback")
    assert r.returncode == 1 and "rolled back already" in r.stderr


@pytest.mark.parametrize("served", [SCRIPT_PATH, ZIPAPP_PATH])
def test_the_script_run_from_the_machine_survives_the_update(lab: Lab, served: str) -> None:
    """`python3 /root/updateclient.py` (or the zipapp, .pyz), as the image
    server serves it: the update would delete that file (no image has it);
    it keeps it, and --rollback runs from it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{lab.server.api.port}{served}",
                                timeout=30) as resp:
        body = resp.read()
    mine = lab.client / "root" / Path(served).name
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(body)
    base = [PYTHON, str(mine), "--server", "127.0.0.1", "--port", str(lab.server.api.port),
            "--root", str(lab.client), "--hostname", "client1", "--no-report"]
    r = subprocess.run([*base, "--image", "web@2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "updated to web@2" in r.stdout, r.stdout
    assert mine.read_bytes() == body
    r = subprocess.run([*base, "--rollback"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert mine.read_bytes() == body


def test_the_initrd_is_built_here_when_asked_or_when_not_generic(lab: Lab) -> None:
    """--local-initrd builds it on the machine; and a MODULES=dep setting
    the machine keeps as its own (excluded from updates) makes the server
    refuse, and the machine build it."""
    r = lab.update("--image", "web@2", "--local-initrd", check=True)
    assert "boot: initrd for 2.0-test built on this machine" in r.stdout, r.stdout
    assert "UUID=local" in (lab.client / f"boot/initrd.img-{NEW}").read_text()
    lab.update("--rollback", check=True)

    conf = lab.client / "etc/initramfs-tools/conf.d/local"
    conf.parent.mkdir(parents=True)
    conf.write_text("MODULES=dep\n")
    r = lab.update("--image", "web@2", "--exclude", "/etc/initramfs-tools/conf.d/local",
                   check=True)
    assert "does not build a generic initrd" in r.stdout, r.stdout
    assert "boot: initrd for 2.0-test built on this machine" in r.stdout, r.stdout
    assert "MODULES=dep" in (lab.client / f"boot/initrd.img-{NEW}").read_text()


def test_a_failed_health_check_rolls_back(lab: Lab) -> None:
    (lab.client / "etc/sysclone").mkdir(parents=True)
    (lab.client / "etc/sysclone/updateclient.health").write_text("# site checks\ntrue\n")
    r = lab.update("--image", "web@2", "--health-check", "test -e /usr/share/nothing")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "health check failed: `test -e /usr/share/nothing` exited with 1" in r.stderr
    assert "rolled back" in r.stdout
    assert lab.differences(1) == {}
    lab.assert_local_files_untouched()
    assert (lab.client / f"boot/initrd.img-{OLD}").read_text() == \
        "the initrd the install made\n"


def test_an_unknown_version_is_refused_before_anything(lab: Lab) -> None:
    r = lab.update("--image", "web@7")
    assert r.returncode == 1
    assert "image server: image web has no version 7 (its versions: 1, 2)" in r.stderr
    assert lab.differences(1) == {}


def test_an_unreachable_server(lab: Lab) -> None:
    r = lab.update("--image", "web@2", "--port", str(free_port()))
    assert r.returncode == 1 and "is unreachable" in r.stderr


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(p.name))
    return out


@pytest.mark.parametrize("lab", [True], indirect=True)
def test_the_server_going_away_mid_update_leaves_version_1(lab: Lab) -> None:
    proc = lab.update("--image", "web@2", "--bwlimit", "2000", wait=False)
    assert isinstance(proc, subprocess.Popen)
    stage = lab.client / "var/lib/sysclone/updateclient/stage"
    deadline = time.monotonic() + 60
    while not any(f.stat().st_size > (1 << 20) for f in stage.rglob("*") if f.is_file()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the fetch never started"
        time.sleep(0.1)
    # the rsync daemon and the connection it forked, by their process ids
    daemon = lab.server.rsyncd.proc
    assert daemon is not None
    for pid in _children(daemon.pid):
        os.kill(pid, signal.SIGKILL)
    lab.server.rsyncd.stop()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "fetching the update failed" in err and "nothing on this machine has changed" in err
    assert lab.differences(1) == {}
    lab.assert_local_files_untouched()
    assert not stage.exists()


@pytest.fixture
def btrfs_root(tmp_path: Path, root_only: None, request: pytest.FixtureRequest
               ) -> Iterator[Path]:
    img = tmp_path / "btrfs.img"
    with img.open("wb") as f:
        f.truncate(512 << 20)
    sh("mkfs.btrfs", "-q", str(img))
    mnt = tmp_path / "btrfs"
    mnt.mkdir()
    sh("mount", "-o", "loop", str(img), str(mnt))
    sh("btrfs", "subvolume", "create", str(mnt / "root"))
    request.node.client_root = mnt / "root"
    try:
        yield mnt / "root"
    finally:
        sh("umount", "-l", str(mnt), check=False)


def test_btrfs_root_rolls_back_from_a_snapshot(btrfs_root: Path, lab: Lab) -> None:
    assert lab.client == btrfs_root
    lab.update("--image", "web@2", check=True)
    point = json.loads((btrfs_root / "var/lib/sysclone/updateclient/rollback/point.json")
                       .read_text())
    assert point["method"] == "btrfs"
    assert "snapshot" in sh("btrfs", "subvolume", "list", str(btrfs_root))
    assert not (btrfs_root / "var/lib/sysclone/updateclient/rollback/tree").exists()
    assert lab.differences(2) == {}
    lab.update("--rollback", check=True)
    assert lab.differences(1) == {}
    lab.assert_local_files_untouched()


def test_overrides_of_cluster_xml_come_with_the_update(lab: Lab) -> None:
    """The client's overrides, as the server chooses them (cluster.xml: its
    own, its group's, the global one), served as rsync modules override.NAME
    by the real daemon and kept by the update; the first listed wins."""
    (lab.state.scripts).mkdir(parents=True, exist_ok=True)
    (lab.state.scripts / "cluster.xml").write_text(
        "<xml><name>all</name><override>site</override>"
        "<group><name>web</name><override>webgroup</override><node>client1</node></group>"
        "</xml>")
    files = {"client1": {"etc/motd": "client1's own\n"},
             "webgroup": {"etc/motd": "the group's\n", "etc/group-only": "group\n"},
             "site": {"etc/group-only": "the site's\n", "etc/site-only": "site\n"}}
    for name, content in files.items():
        for rel, text in content.items():
            p = lab.state.overrides / name / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    lab.server.rsyncd.refresh()  # as the server's store watcher would within a second
    lab.update("--image", "web@2", check=True)
    c = lab.client
    assert (c / "etc/motd").read_text() == "client1's own\n"
    assert (c / "etc/group-only").read_text() == "group\n"
    assert (c / "etc/site-only").read_text() == "site\n"
    # A second run keeps them: what the machine has from an override is
    # neither put back to the image's nor deleted as not in the image.
    again = lab.update("--image", "web@2", "--dry-run", check=True).stdout
    assert json.loads(again.splitlines()[-1])["changes"] == 0, again
