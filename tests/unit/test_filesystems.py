"""mkfs command lines per filesystem type, and formatting/mounting a plan
through the command fakes."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from agent.disks import Disk
from agent.filesystems import make_filesystems, mkfs_argv, mount_all, mount_fstype
from agent.plan import MKFS_TOOLS, FsPlan
from agent.planner import make_plan
from agent.storage.model import FsEntry
from tests.conftest import FakeCommands, FakeResult

UUID = "0f3c5d2e-8a41-4b7c-9e2d-5b6a7c8d9e01"
FAT_ID = "1A2B-3C4D"


def fs_plan(fs: str, device: str = "/dev/vda2", uuid: str = UUID, mkfs_opts: str | None = None,
            mountpoint: str | None = "/") -> FsPlan:
    entry = FsEntry(line=10, real_dev=device, mountpoint=mountpoint or "swap", fs=fs,
                    mkfs_opts=mkfs_opts)
    return FsPlan(entry, device, fs, uuid, mountpoint, 10 << 30, 0)


@pytest.mark.parametrize(("fs", "uuid", "argv"), [
    ("ext4", UUID, ["mke2fs", "-F", "-q", "-t", "ext4", "-U", UUID, "-E",
                    "lazy_itable_init=0,lazy_journal_init=0", "/dev/vda2"]),
    ("ext3", UUID, ["mke2fs", "-F", "-q", "-t", "ext3", "-U", UUID, "-E",
                    "lazy_itable_init=0,lazy_journal_init=0", "/dev/vda2"]),
    ("ext2", UUID, ["mke2fs", "-F", "-q", "-t", "ext2", "-U", UUID, "-E",
                    "lazy_itable_init=0,lazy_journal_init=0", "/dev/vda2"]),
    ("xfs", UUID, ["mkfs.xfs", "-f", "-q", "-m", f"uuid={UUID}", "/dev/vda2"]),
    ("btrfs", UUID, ["mkfs.btrfs", "-f", "-q", "-U", UUID, "/dev/vda2"]),
    ("vfat", FAT_ID, ["mkfs.fat", "-i", "1A2B3C4D", "/dev/vda2"]),
    ("fat", FAT_ID, ["mkfs.fat", "-i", "1A2B3C4D", "/dev/vda2"]),
    ("msdos", FAT_ID, ["mkfs.fat", "-i", "1A2B3C4D", "/dev/vda2"]),
    ("fat16", FAT_ID, ["mkfs.fat", "-F", "16", "-i", "1A2B3C4D", "/dev/vda2"]),
    ("fat32", FAT_ID, ["mkfs.fat", "-F", "32", "-i", "1A2B3C4D", "/dev/vda2"]),
    ("swap", UUID, ["mkswap", "-U", UUID, "/dev/vda2"]),
])
def test_mkfs_argv(fs: str, uuid: str, argv: list[str]) -> None:
    assert mkfs_argv(fs_plan(fs, uuid=uuid)) == argv


def test_mkfs_opts_go_before_the_device() -> None:
    f = fs_plan("ext4", mkfs_opts="-L 'root fs' -O ^metadata_csum")
    assert mkfs_argv(f)[-5:] == ["-L", "root fs", "-O", "^metadata_csum", "/dev/vda2"]
    assert mkfs_argv(fs_plan("xfs", mkfs_opts="-L data"))[-3:] == ["-L", "data", "/dev/vda2"]


def test_every_filesystem_the_plan_accepts_has_an_mkfs() -> None:
    # The plan checks the boot environment for MKFS_TOOLS[fs]: that must be
    # the tool actually run.
    for fs, tool in MKFS_TOOLS.items():
        assert mkfs_argv(fs_plan(fs, uuid=FAT_ID if tool == "mkfs.fat" else UUID))[0] == tool


def test_no_mkfs_for_unknown_filesystems() -> None:
    with pytest.raises(ValueError, match="no mkfs for jfs"):
        mkfs_argv(fs_plan("jfs"))


@pytest.mark.parametrize(("fs", "mount"), [("fat32", "vfat"), ("fat16", "vfat"), ("fat", "vfat"),
                                           ("msdos", "vfat"), ("vfat", "vfat"), ("xfs", "xfs"),
                                           ("ext4", "ext4")])
def test_mount_fstype(fs: str, mount: str) -> None:
    assert mount_fstype(fs) == mount


def uefi_plan() -> tuple[FsPlan, ...]:
    p = make_plan(instructions={"image": {"name": "debian12"}}, server="10.0.0.2",
                  hostname="node07", targets=[Disk("nvme0n1", 32 << 30)], fw="uefi",
                  ram_bytes=2 << 30, have_tool=lambda tool: True)
    return p.filesystems


def test_make_filesystems_of_a_plan(fake_commands: FakeCommands) -> None:
    fake_commands.add(["mke2fs"], "")
    fake_commands.add(["mkfs.fat"], "mkfs.fat 4.2 (2021-01-31)\n")
    fake_commands.add(["mkswap"], "Setting up swapspace version 1, size = 2 GiB\n")
    filesystems = uefi_plan()
    make_filesystems(filesystems)
    # Two at a time: in any order.
    calls = {c[-1]: c for c in fake_commands.calls}
    assert len(fake_commands.calls) == 3
    assert [calls[d][0] for d in ("/dev/nvme0n1p2", "/dev/nvme0n1p1", "/dev/nvme0n1p3")] == \
        ["mke2fs", "mkfs.fat", "mkswap"]
    by_dev = {f.device: f for f in filesystems}
    assert calls["/dev/nvme0n1p1"][1:3] == ["-i", by_dev["/dev/nvme0n1p1"].uuid.replace("-", "")]
    assert calls["/dev/nvme0n1p3"][1:3] == ["-U", by_dev["/dev/nvme0n1p3"].uuid]


def test_mkfs_runs_two_at_a_time_and_none_starts_after_a_failure(
        fake_commands: FakeCommands) -> None:
    import threading

    from sysclone.errors import CommandError

    running: list[int] = []
    most = [0]
    lock = threading.Lock()
    both = threading.Barrier(2, timeout=5)

    def mke2fs(argv: list[str]) -> FakeResult:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        both.wait()  # the first two meet: they run side by side
        with lock:
            running.pop()
        return FakeResult(returncode=1, stderr="bad superblock")
    fake_commands.add(["mke2fs"], mke2fs)
    fs = uefi_plan()
    ext4 = next(f for f in fs if f.fs == "ext4")
    four = (ext4, replace(ext4, device="/dev/x2"), replace(ext4, device="/dev/x3"),
            replace(ext4, device="/dev/x4"))
    with pytest.raises(CommandError):
        make_filesystems(four)
    assert most[0] == 2
    assert len(fake_commands.calls) == 2  # both failed; the other two never started


def test_mount_all_parents_first_unmount_in_reverse(fake_commands: FakeCommands,
                                                    tmp_path: Path) -> None:
    fake_commands.add(["mount"], "")
    fake_commands.add(["umount"], "")
    root = tmp_path / "sysroot"
    plan = make_plan(instructions={"image": {"name": "debian12"}}, server="10.0.0.2",
                     hostname="node07", targets=[Disk("vda", 32 << 30)], fw="uefi",
                     ram_bytes=2 << 30, have_tool=lambda tool: True)
    with ExitStack() as stack:
        mount_all(plan.mounts, root, stack)
        assert fake_commands.calls == [
            ["mount", "-t", "ext4", "/dev/vda2", str(root)],
            ["mount", "-t", "vfat", "/dev/vda1", str(root / "boot/efi")],
        ]
        assert (root / "boot/efi").is_dir()
    assert fake_commands.calls[2:] == [["umount", str(root / "boot/efi")], ["umount", str(root)]]


def test_swap_is_on_for_the_install_and_off_once(fake_commands: FakeCommands) -> None:
    from agent.filesystems import use_swap

    fake_commands.add(["swapon"], "")
    fake_commands.add(["swapoff"], "")
    plans = (fs_plan("ext4"), fs_plan("swap", "/dev/vda3", mountpoint=None),
             fs_plan("swap", "/dev/vdb3", mountpoint=None))
    with ExitStack() as stack:
        on = use_swap(plans, stack)
        assert on.devices == ["/dev/vda3", "/dev/vdb3"]
        assert fake_commands.calls == [["swapon", "/dev/vda3"], ["swapon", "/dev/vdb3"]]
        on.off()  # a failed install
    # ... and the stack's own callback (on failure paths) does not repeat it.
    assert fake_commands.calls[2:] == [["swapoff", "/dev/vda3"], ["swapoff", "/dev/vdb3"]]


def test_swap_stays_on_after_a_successful_install(fake_commands: FakeCommands) -> None:
    """The finish phase keeps swap on: the stack's callback then has nothing
    to take off (swapoff at 128 MiB livelocked bringing pages back in)."""
    from agent.filesystems import use_swap

    fake_commands.add(["swapon"], "")
    plans = (fs_plan("ext4"), fs_plan("swap", "/dev/vda3", mountpoint=None))
    with ExitStack() as stack:
        on = use_swap(plans, stack)
        assert on.keep() == ["/dev/vda3"]
        assert on.keep() == []
    assert fake_commands.calls == [["swapon", "/dev/vda3"]]


def test_no_swap_in_the_layout(fake_commands: FakeCommands) -> None:
    from agent.filesystems import use_swap

    with ExitStack() as stack:
        assert use_swap((fs_plan("ext4"),), stack).devices == []
    assert fake_commands.calls == []
