"""The installed system's API filesystems for chrooted tools
(agent.chroot): kernel calls, recorded by the unit tests' fake libc, made
in order and undone in reverse, even when the chrooted work fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import chroot
from sysclone.errors import SyscloneError
from tests.conftest import FakeCommands


def test_mounted_in_order_and_given_back_in_reverse(tmp_path: Path,
                                                    fake_commands: FakeCommands) -> None:
    with chroot.chroot_target(tmp_path, efi=True) as root:
        assert root == tmp_path
        made = list(fake_commands.calls)
    assert made == [
        ["mount(2)", "/dev", f"{tmp_path}/dev", "", "0x1000", ""],
        ["mount(2)", "/dev/pts", f"{tmp_path}/dev/pts", "", "0x1000", ""],
        ["mount(2)", "proc", f"{tmp_path}/proc", "proc", "0x0", ""],
        ["mount(2)", "sysfs", f"{tmp_path}/sys", "sysfs", "0x0", ""],
        ["mount(2)", "tmpfs", f"{tmp_path}/run", "tmpfs", "0x0", "mode=0755"],
        ["mount(2)", "tmpfs", f"{tmp_path}/tmp", "tmpfs", "0x0", "mode=1777"],
        ["mount(2)", "efivarfs", f"{tmp_path}/sys/firmware/efi/efivars", "efivarfs", "0x0",
         ""]]
    assert fake_commands.calls[len(made):] == [
        ["umount2(2)", c[2], "0"] for c in reversed(made)]
    assert (tmp_path / "dev/pts").is_dir() and (tmp_path / "tmp").is_dir()


def test_given_back_when_the_chrooted_work_fails(tmp_path: Path,
                                                 fake_commands: FakeCommands) -> None:
    with pytest.raises(RuntimeError), chroot.chroot_target(tmp_path, efi=False):
        raise RuntimeError("update-grub failed")
    unmounted = [c for c in fake_commands.calls if c[0] == "umount2(2)"]
    assert [c[1] for c in unmounted] == [f"{tmp_path}/{d}" for d in
                                         ("tmp", "run", "sys", "proc", "dev/pts", "dev")]


class Refusing:
    """A libc whose mount(2) and umount2(2) fail as the kernel says."""

    def __init__(self, errno: int, lazy_ok: bool = True) -> None:
        self.errno = errno
        self.lazy_ok = lazy_ok
        self.umounts: list[int] = []

    def mount(self, *a: object) -> int:
        import ctypes
        ctypes.set_errno(self.errno)
        return -1

    def umount2(self, target: bytes, flags: int) -> int:
        import ctypes
        self.umounts.append(flags)
        if flags == chroot.MNT_DETACH and self.lazy_ok:
            return 0
        ctypes.set_errno(self.errno)
        return -1


def test_the_kernels_reason_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chroot, "_libc", lambda: Refusing(1))
    with pytest.raises(SyscloneError, match=rf"^mounting proc on {tmp_path}/proc failed: "
                                            r"Operation not permitted$"):
        chroot.kernel_mount("proc", tmp_path / "proc", "proc")


def test_a_busy_mount_is_detached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libc = Refusing(16)
    monkeypatch.setattr(chroot, "_libc", lambda: libc)
    monkeypatch.setattr(chroot, "kernel_mount", lambda *a, **k: None)
    with chroot.kernel_mounted("tmpfs", tmp_path / "run", "tmpfs"):
        pass
    assert libc.umounts == [0, chroot.MNT_DETACH]
