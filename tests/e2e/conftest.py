"""End-to-end fixtures: a golden image, a boot environment and a running
image server, shared by the whole session (they take minutes to make)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bootenv.standard import build_bootenv
from ci.qemu import Vm, VmSpec
from imageserver.bootstrap import BootstrapSpec, bootstrap_image
from imageserver.serve import Running, ServeConfig, free_port, serving
from imageserver.store import ImageStore
from kernels.aptsources import find_debian_mirror
from sysclone.demo import install_append, pxe_vm
from sysclone.paths import StateRoot
from sysclone.ui import Ui

IMAGE = "golden"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
    # The slow machines run only when asked for (SYSCLONE_E2E=full: all of
    # them; SYSCLONE_MATRIX=full: the hardware matrix), so that CI stays
    # under an hour on two cores: deselected, not skipped (CI fails on skips).
    full = os.environ.get("SYSCLONE_E2E") == "full"
    wanted = {"e2e_full": full, "matrix_full": full or os.environ.get("SYSCLONE_MATRIX") == "full"}
    slow = [i for i in items if any(i.get_closest_marker(m) and not on
                                    for m, on in wanted.items())]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [i for i in items if i not in slow]


@pytest.fixture(scope="session")
def e2e_state(tmp_path_factory: pytest.TempPathFactory) -> StateRoot:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, loop devices)")
    root = tmp_path_factory.mktemp("e2e-state")
    cache = os.environ.get("SYSCLONE_CACHE") or str(root / "cache")
    return StateRoot.from_options(root, cache)


@pytest.fixture(scope="session")
def golden(e2e_state: StateRoot) -> Path:
    """The golden image, debootstrapped (or unpacked from the cache)."""
    if not ImageStore(e2e_state).exists(IMAGE):
        bootstrap_image(e2e_state, IMAGE, BootstrapSpec(mirror=find_debian_mirror().uri))
    return ImageStore(e2e_state).path(IMAGE)


@pytest.fixture(scope="session")
def bootenv(e2e_state: StateRoot) -> Path:
    result = build_bootenv(e2e_state, Ui(quiet=True))
    return result.kernel.parent


@dataclass
class Installer:
    """A running image server plus a way to PXE-boot VMs against it."""

    state: StateRoot
    bootenv: Path
    server: Running
    events: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def boot(self, name: str, disk: Path, append: str, memory: int = 512,
             more_disks: tuple[Path, ...] = (), bootenv: Path | None = None) -> Iterator[Vm]:
        spec = pxe_vm(self.state, name, bootenv or self.bootenv, disk, append,
                      memory_mib=memory, more_disks=more_disks)
        with Vm(spec) as vm:
            yield vm

    @contextmanager
    def boot_uefi(self, name: str, disks: tuple[Path, ...], append: str,
                  memory: int = 512) -> Iterator[Vm]:
        """Start the boot environment straight from the firmware (OVMF, a
        fresh NVRAM kept as NAME.OVMF_VARS.fd): QEMU's direct kernel boot,
        as a UEFI machine booting it from any medium would."""
        spec = VmSpec(name=name, workdir=self.state.vms, memory_mib=memory, disks=disks,
                      firmware="uefi", kernel=self.bootenv / "kernel",
                      initrd=self.bootenv / "initrd.img", append=append)
        with Vm(spec) as vm:
            yield vm

    def append(self, hostname: str, image: str = IMAGE, *, http_port: int | None = None,
               extra: str = "") -> str:
        cfg = self.server.config
        return install_append(hostname, image, http_port or cfg.http_port, cfg.rsync_port,
                              "poweroff", extra)

    def events_of(self, hostname: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("hostname") == hostname]


@pytest.fixture(scope="session")
def installer(e2e_state: StateRoot, golden: Path, bootenv: Path) -> Iterator[Installer]:
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port())
    with serving(e2e_state, cfg) as srv:
        inst = Installer(e2e_state, bootenv, srv)
        srv.monitor.subscribe(inst.events.append)
        yield inst


def sysclone(state: StateRoot, *args: str, check: bool = True,
             timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """The sysclone command, run as a user runs it."""
    exe = Path(sys.executable).parent / "sysclone"
    r = subprocess.run([str(exe), "--root", str(state.root), "--cache", str(state.cache_dir),
                        *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"sysclone {' '.join(args)} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="session")
def ssh_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sysclone-e2e",
                    "-f", str(key)], check=True)
    return key


# A golden client's initramfs-tools setting, as a real machine has it: resume
# from its own swap partition, whose UUID no clone will ever have.
OLD_SWAP_UUID = "5e7a9c11-0b1d-4f2e-8a3c-d4e5f6a7b8c9"
SSH_IMAGE = "golden-ssh"
# "Python 3.9+ and rsync" for `client prepare`: a whole Python (python3),
# not python3-minimal, which lacks json and http.
SSH_PACKAGES = ("openssh-server", "rsync", "python3")


@pytest.fixture(scope="session")
def golden_ssh(e2e_state: StateRoot, golden: Path, ssh_key: Path) -> str:
    """A golden image that can be captured: sshd, rsync and Python for
    `client prepare`, the test's key for root, and an initrd built to resume
    from a swap partition that no clone has (as every real golden client's
    is).  Made the way an admin would: `image bootstrap`, then `image chroot`
    (which records the change as a new version)."""
    from imageserver.bootstrap import DEFAULT_PACKAGES

    if not ImageStore(e2e_state).exists(SSH_IMAGE):
        bootstrap_image(e2e_state, SSH_IMAGE, BootstrapSpec(
            mirror=find_debian_mirror().uri, packages=(*DEFAULT_PACKAGES, *SSH_PACKAGES)))
    pub = ssh_key.with_suffix(".pub").read_text().strip()
    script = (
        "set -e; install -d -m 700 /root/.ssh; "
        f"echo '{pub}' > /root/.ssh/authorized_keys; chmod 600 /root/.ssh/authorized_keys; "
        f"echo RESUME=UUID={OLD_SWAP_UUID} > /etc/initramfs-tools/conf.d/resume; "
        "update-initramfs -u -k all")
    sysclone(e2e_state, "image", "chroot", SSH_IMAGE, "--", "sh", "-c", script)
    return SSH_IMAGE
