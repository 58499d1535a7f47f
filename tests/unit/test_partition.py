"""Partitioning: the parent disk of a partition, waiting for device nodes
(fake partx/udevadm, tmp files standing for the nodes), and partition tables
written by libparted into a disk image file, read back byte by byte."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from agent import partition
from agent.disks import Disk
from agent.partition import PartitionError, settle, write_table
from agent.plan import DiskPlan, InstallPlan
from agent.planner import make_plan
from agent.storage.geometry import plan_partitions
from tests.conftest import FakeCommands, FakeResult
from tests.unit.agentfakes import FakeClock

GiB = 1 << 30


# -- settle ----------------------------------------------------------------------------------

@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(partition, "time", c)
    return c


def test_settle_when_the_nodes_are_there(fake_commands: FakeCommands, clock: FakeClock,
                                         tmp_path: Path) -> None:
    fake_commands.add(["partx"], "")
    fake_commands.add(["udevadm", "settle"], "")
    nodes = [tmp_path / "vda1", tmp_path / "vda2", tmp_path / "nvme0n1p1"]
    for n in nodes:
        n.touch()
    settle(["/dev/nvme0n1", "/dev/vda"], [str(n) for n in nodes])
    assert fake_commands.calls == [["partx", "-u", "/dev/nvme0n1"], ["partx", "-u", "/dev/vda"],
                                   ["udevadm", "settle", "--timeout=30"]]
    assert clock.sleeps == []


def test_settle_waits_for_late_nodes(fake_commands: FakeCommands, clock: FakeClock,
                                     tmp_path: Path) -> None:
    nodes = [tmp_path / "vda1", tmp_path / "vda2"]
    adds: list[int] = []

    def partx_add(argv: list[str]) -> FakeResult:
        adds.append(1)
        if len(adds) == 3:  # the kernel catches up on the third try
            for n in nodes:
                n.touch()
        return FakeResult()

    fake_commands.add(["partx", "-u"], FakeResult(stderr="partx: /dev/vda: failed to update",
                                                  returncode=1))  # check=False: not fatal
    fake_commands.add(["partx", "-a"], partx_add)
    fake_commands.add(["udevadm", "settle"], FakeResult(returncode=1))
    settle(["/dev/vda"], [str(n) for n in nodes], timeout=10)
    assert fake_commands.calls[:2] == [["partx", "-u", "/dev/vda"],
                                       ["udevadm", "settle", "--timeout=10"]]
    assert fake_commands.calls[2:] == [["partx", "-a", "/dev/vda"]] * 3 + [
        ["udevadm", "settle", "--timeout=10"]]  # udev finishes with the late nodes
    assert clock.sleeps == [0.2] * 3


def test_settle_gives_up_naming_the_missing_nodes(fake_commands: FakeCommands,
                                                  clock: FakeClock, tmp_path: Path) -> None:
    fake_commands.add(["partx"], "")
    fake_commands.add(["udevadm", "settle"], "")
    (tmp_path / "sdb1").touch()
    with pytest.raises(PartitionError) as e:
        settle(["/dev/sdb"], [str(tmp_path / "sdb1"), str(tmp_path / "sdb2"),
                              str(tmp_path / "sdb3")], timeout=1.0)
    assert e.value.message == ("partition device nodes did not appear: "
                               f"{tmp_path}/sdb2, {tmp_path}/sdb3")
    assert fake_commands.calls.count(["partx", "-a", "/dev/sdb"]) == 5
    assert sum(clock.sleeps) == pytest.approx(1.0)


# -- write_table on a disk image -------------------------------------------------------------

class ImageDisk(Disk):
    """A Disk whose device is a file (libparted handles both the same)."""

    @property
    def path(self) -> str:
        return self.name


def on_image(tmp_path: Path, p: InstallPlan) -> DiskPlan:
    """The plan's first disk, with a sparse file of its size as the device."""
    d = p.disks[0]
    img = tmp_path / "disk.img"
    with img.open("wb") as f:
        f.truncate(d.disk.size)
    return DiskPlan(ImageDisk(str(img), d.disk.size), d.label, d.partitions)


def image_plan(size: int, fw: str = "bios", **kw: object) -> InstallPlan:
    return make_plan(instructions={"image": {"name": "x"}, **kw}, server="10.0.0.2",
                     hostname="node07", targets=[Disk("vda", size)], fw=fw,
                     ram_bytes=GiB, have_tool=lambda tool: True)


def swap_devices(p: InstallPlan) -> set[str]:
    return {f.device for f in p.filesystems if f.fs == "swap"}


GPT_TYPES = {
    "21686148-6449-6e6f-744e-656564454649": "BIOS boot",
    "0fc63daf-8483-4772-8e79-3d69d8477de4": "Linux filesystem",
    "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f": "Linux swap",
    "c12a7328-f81f-11d2-ba4b-00a0c93ec93b": "EFI System",
}


def read_gpt(img: Path) -> list[tuple[int, int, str, str]]:
    """(first LBA, last LBA, type, name) of each used GPT entry."""
    with img.open("rb") as f:
        data = f.read(34 * 512)
    assert data[512:520] == b"EFI PART"
    entries_lba, count, size = struct.unpack_from("<QII", data, 512 + 72)
    out = []
    for i in range(count):
        e = data[entries_lba * 512 + i * size:][:size]
        if e[:16] == bytes(16):
            continue
        first, last = struct.unpack_from("<QQ", e, 32)
        name = e[56:128].decode("utf-16-le").rstrip("\0")
        out.append((first, last, GPT_TYPES[str(uuid.UUID(bytes_le=e[:16]))], name))
    return out


def test_gpt_table_as_planned(tmp_path: Path) -> None:
    p = image_plan(4 * GiB)
    write_table(on_image(tmp_path, p), swap_devices(p))
    planned = p.disks[0].partitions
    assert read_gpt(tmp_path / "disk.img") == [
        (planned[0].start_sector, planned[0].last_sector, "BIOS boot", "BIOS boot"),
        (planned[1].start_sector, planned[1].last_sector, "Linux filesystem", "root"),
        (planned[2].start_sector, planned[2].last_sector, "Linux swap", "swap"),
    ]
    assert planned[0].start_sector == 2048


def test_gpt_esp(tmp_path: Path) -> None:
    p = image_plan(4 * GiB, fw="uefi")
    write_table(on_image(tmp_path, p), swap_devices(p))
    assert [(t, n) for _, _, t, n in read_gpt(tmp_path / "disk.img")] == [
        ("EFI System", "EFI System"), ("Linux filesystem", "root"), ("Linux swap", "swap")]


def read_msdos(img: Path) -> list[tuple[int, int, int, int, bool]]:
    """(number, type, start sector, sectors, active) of primary partitions
    and, through the chain of extended boot records, logical ones."""
    with img.open("rb") as f:
        data = f.read(512)
    assert data[510:512] == b"\x55\xaa"
    out = []
    extended = None
    for i in range(4):
        status, ptype, start, count = struct.unpack_from("<B3xB3xII", data, 446 + 16 * i)
        if ptype:
            out.append((i + 1, ptype, start, count, status == 0x80))
            if ptype in (0x05, 0x0F):
                extended = start
    number = 5
    ebr = extended
    with img.open("rb") as f:
        while ebr is not None:
            f.seek(ebr * 512)
            rec = f.read(512)
            _, ptype, start, count = struct.unpack_from("<B3xB3xII", rec, 446)
            out.append((number, ptype, ebr + start, count, False))
            _, ntype, nstart, _ = struct.unpack_from("<B3xB3xII", rec, 462)
            ebr = extended + nstart if ntype else None
            number += 1
    return out


def test_msdos_logical_partitions_get_their_numbers(tmp_path: Path, compat: Path) -> None:
    layout = {"format": "systemimager-xml", "name": "disk-layout-complex.xml",
              "text": (compat / "disk-layout-complex.xml").read_text()}
    p = image_plan(20 * GiB, layout=layout)
    write_table(on_image(tmp_path, p), swap_devices(p))
    got = read_msdos(tmp_path / "disk.img")
    planned = {pp.number: pp for pp in p.disks[0].partitions}
    assert [g[0] for g in got] == [1, 2, 3, 4, 5, 6, 7]
    for number, ptype, start, count, active in got:
        if number == 4:
            assert ptype in (0x05, 0x0F)  # extended
            continue
        pp = planned[number]
        assert (start, count) == (pp.start_sector, pp.size_sectors), number
        assert ptype == (0x82 if number == 2 else 0x83), number
        assert active == (number == 1), number  # flags="boot"


def test_sector_size_mismatch_is_refused(tmp_path: Path) -> None:
    p = image_plan(2 * GiB)
    d = on_image(tmp_path, p)
    planned_4k = tuple(plan_partitions(p.layout.disks[0], 2 * GiB, sector_size=4096))
    with pytest.raises(PartitionError, match="planned with 4096-byte sectors, the disk has 512"):
        write_table(DiskPlan(d.disk, d.label, planned_4k), set())
