"""The golden-client loop, end to end in QEMU: a VM installed from an image
that names an old swap for resume (so the agent must regenerate its initrd:
the image server builds it, natively), booted from its own disk, captured
over SSH into a new image, and that capture installed on a second blank VM,
which boots; then the same golden VM captured again through
`client prepare` + rsync:// with a secret.  Checked without trusting the
code under test: the initrd's resume setting read with cpio and zstd,
rsync's itemized checksum dry run between the VM's disk and the capture,
the recorded layout parsed against the VM's disk, and each boot."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.markers import DONE_MARKER
from agent.storage.sixml import parse_layout
from ci.qemu import Vm, VmSpec, blank_disk
from imageserver.names import ImageRef
from imageserver.serve import free_port
from imageserver.store import ImageStore
from sysclone.demo import INSTALL_FAILED
from tests.e2e.conftest import OLD_SWAP_UUID, Installer, sysclone
from tests.e2e.test_install_vm import attached, mounted_disk
from tests.verify import blkid_uuid, initrd_member, itemized_differences, sh

GOLDEN = "e2e-golden1"
CLONE = "e2e-clone1"
CAPTURED = "captured"
INSTALL_TIMEOUT = 2400
# What changes on a running or shutting-down system after a capture, and
# so between the capture and the disk read afterwards: not capture faults.
VOLATILE = ("var/log/", "var/lib/systemd/", "var/lib/dhcp/", "var/tmp/", "tmp/",
            "var/cache/", "var/lib/private/", "var/lib/logrotate/", "root/.bash_history")


def install(installer: Installer, hostname: str, image: str) -> Path:
    disk = blank_disk(installer.state.vms / f"{hostname}.img", 4 << 30)
    with installer.boot(f"{hostname}-install", disk, installer.append(hostname, image)) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0
    return disk


@contextmanager
def running(installer: Installer, name: str, disk: Path,
            forwards: tuple[tuple[int, int], ...] = ()) -> Iterator[Vm]:
    """Boot an installed disk to its login prompt; power it off afterwards."""
    spec = VmSpec(name=name, workdir=installer.state.vms, disks=(disk,), boot="c",
                  forwards=forwards)
    with Vm(spec) as vm:
        vm.wait_for(r"login:", 900)
        try:
            yield vm
        finally:
            vm.powerdown(300)


def ssh(key: Path, port: int, command: str, timeout: float = 120) -> str:
    return sh("ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
              "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", f"ConnectTimeout={int(timeout)}", "root@127.0.0.1", command)


def wait_for_ssh(key: Path, port: int, deadline: float = 180) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            ssh(key, port, "true", timeout=20)
            return
        except AssertionError:
            if time.monotonic() > end:
                raise
            time.sleep(3)


@pytest.fixture(scope="module")
def golden_disk(installer: Installer, golden_ssh: str) -> Path:
    return install(installer, GOLDEN, golden_ssh)


@pytest.fixture(scope="module")
def ssh_capture(installer: Installer, golden_disk: Path, ssh_key: Path) -> Path:
    """Boot the golden VM and capture it over SSH; returns the captured tree."""
    port = free_port()
    with running(installer, f"{GOLDEN}-boot", golden_disk, forwards=((port, 22),)):
        wait_for_ssh(ssh_key, port)
        sysclone(installer.state, "image", "capture", CAPTURED,
                 "--from", f"ssh://root@127.0.0.1:{port}", "--ssh-key", str(ssh_key),
                 "--ssh-option", "StrictHostKeyChecking=no",
                 "--ssh-option", "UserKnownHostsFile=/dev/null")
    return ImageStore(installer.state).tree(_ref(f"{CAPTURED}@1"))


def _ref(text: str) -> ImageRef:
    return ImageRef.parse(text)


# Mount points of the pseudo filesystems a live client shows: captured as
# the client shows them while mounted (procfs's root is 0555), which is not
# what is under them on the disk.  Documented in `image capture --help`.
PSEUDO_MOUNTS = ("proc", "sys", "dev", "run")


def _differences(tree: Path, disk: Path, where: Path, excludes: Path) -> dict[str, str]:
    with mounted_disk(disk, 2, where) as root:
        diffs = itemized_differences(tree, root, extra=(
            "--modify-window=-1", f"--filter=merge {excludes}"))
    return {p: c for p, c in diffs.items() if not p.startswith(VOLATILE)
            and not (p in PSEUDO_MOUNTS and c.startswith(".d"))}


def test_an_old_resume_device_makes_the_server_build_the_initrd(
        installer: Installer, golden_disk: Path, tmp_path: Path) -> None:
    ev = [e for e in installer.events_of(GOLDEN) if e.get("kind") == "initrd"]
    assert len(ev) == 1 and ev[0]["action"] == "regenerate" and ev[0]["where"] == "server", ev
    assert any(OLD_SWAP_UUID in r for r in ev[0]["reasons"]), ev
    built = [e for e in installer.events_of(GOLDEN) if e.get("kind") == "initrd-built"]
    assert [e["where"] for e in built] == ["server"], built
    with attached(golden_disk, 3) as dev:
        swap = blkid_uuid(f"{dev}p3")
    with mounted_disk(golden_disk, 2, tmp_path / "root") as root:
        initrd = next((root / "boot").glob("initrd.img-*"))
        resume = initrd_member(initrd, "conf/conf.d/resume")
    assert resume is not None and resume.strip() == f"RESUME=UUID={swap}", resume
    assert OLD_SWAP_UUID not in resume


def test_ssh_capture_equals_the_golden_disk(installer: Installer, golden_disk: Path,
                                           ssh_capture: Path, tmp_path: Path) -> None:
    vdir = ssh_capture.parent
    diffs = _differences(ssh_capture, golden_disk, tmp_path / "root", vdir / "excludes")
    # lost+found is the filesystem's, not the client's; machine-id is left
    # empty on purpose (each clone makes its own).
    diffs.pop("lost+found", None)
    diffs.pop("etc/machine-id", None)
    assert not diffs, diffs


def test_capture_recorded_the_golden_disk_layout(installer: Installer, golden_disk: Path,
                                                 ssh_capture: Path) -> None:
    layout = parse_layout((ssh_capture.parent / "layout.xml").read_text(), "captured")
    assert len(layout.disks) == 1
    parts = layout.disks[0].partitions
    table = json.loads(sh("sfdisk", "-J", str(golden_disk)))["partitiontable"]
    assert layout.disks[0].label.value == table["label"] == "gpt"
    assert len(parts) == len(table["partitions"]) == 3
    mounts = {e.mountpoint for e in layout.fstab() if e.mountpoint}
    assert "/" in mounts and "swap" in {e.fs for e in layout.fstab()}


def test_the_capture_installs_and_boots(installer: Installer, ssh_capture: Path) -> None:
    disk = install(installer, CLONE, CAPTURED)
    ev = [e for e in installer.events_of(CLONE) if e.get("kind") == "done"]
    assert ev and ev[-1]["image"] == CAPTURED and ev[-1]["image_version"] == 1
    spec = VmSpec(name=f"{CLONE}-boot", workdir=installer.state.vms, disks=(disk,), boot="c")
    with Vm(spec) as vm:
        _, prompt = vm.wait_for(r"login:", 900)
        assert prompt.strip().startswith(f"{CLONE} login:")
        vm.powerdown(300)


def test_prepare_and_rsync_capture_with_a_secret(installer: Installer, golden_disk: Path,
                                                 ssh_capture: Path, ssh_key: Path,
                                                 tmp_path: Path) -> None:
    """SystemImager's prepareclient way: the client exports / once, read-only,
    to the server only, behind a secret; the server pulls a new version."""
    secret = "e2e-" + "s3cr3t" * 4
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret + "\n")
    ssh_port, rsync_port = free_port(), free_port()
    http = installer.server.config.http_port
    with running(installer, f"{GOLDEN}-prepare", golden_disk,
                 forwards=((ssh_port, 22), (rsync_port, 873))):
        wait_for_ssh(ssh_key, ssh_port)
        # The served script, fetched with the client's own Python (no curl
        # in a minimal image), run in the background with its secret.
        ssh(ssh_key, ssh_port,
            f"echo '{secret}' > /root/prepare.secret && chmod 600 /root/prepare.secret && "
            "python3 -c 'import urllib.request,sys; sys.stdout.buffer.write(urllib.request."
            f"urlopen(\"http://10.0.2.2:{http}/v1/client/prepare.py\").read())' > /root/prepare.py"
            " && (setsid python3 /root/prepare.py prepare --server 10.0.2.2 "
            "--secret-file /root/prepare.secret > /root/prepare.log 2>&1 &)")
        for _ in range(60):
            if "secret" in ssh(ssh_key, ssh_port, "cat /root/prepare.log"):
                break
            time.sleep(2)
        bad = tmp_path / "bad"
        bad.write_text("not-the-secret-at-all\n")
        r = sysclone(installer.state, "image", "capture", CAPTURED,
                     "--from", f"rsync://127.0.0.1:{rsync_port}/sysclone",
                     "--secret-file", str(bad), check=False)
        # One error line (after the step's own "==> capture" line), no traceback.
        errors = [ln for ln in r.stderr.splitlines() if not ln.startswith("==> ")]
        assert r.returncode == 1 and len(errors) == 1, r.stderr
        assert "refused the secret; nothing was stored" in errors[0], r.stderr
        sysclone(installer.state, "image", "capture", CAPTURED,
                 "--from", f"rsync://127.0.0.1:{rsync_port}/sysclone",
                 "--secret-file", str(secret_file))
        # One capture, then the export stops by itself.
        for _ in range(30):
            if "rsync" not in ssh(ssh_key, ssh_port, "ps -eo comm"):
                break
            time.sleep(2)
        else:
            raise AssertionError("the export did not stop after the capture")
    versions = sysclone(installer.state, "image", "versions", CAPTURED).stdout.splitlines()
    # VERSION CREATED ...: 1 over SSH, then 2 -- current (*) -- from the export
    rows = [row.split() for row in versions[1:]]
    assert [r[0] for r in rows] == ["1", "2"] and rows[1][1] == "*" and "*" not in rows[0], \
        versions
    assert f"@127.0.0.1:{rsync_port}/sysclone" in versions[2], versions
    second = ImageStore(installer.state).tree(_ref(f"{CAPTURED}@2"))
    diffs = _differences(second, golden_disk, tmp_path / "root", second.parent / "excludes")
    diffs.pop("lost+found", None)
    diffs.pop("etc/machine-id", None)
    # The prepare run itself left its files in /root.
    diffs = {p: c for p, c in diffs.items() if not p.startswith("root/prepare")}
    assert not diffs, diffs
