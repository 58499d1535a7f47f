"""Disk selectors: which machine disk each layout disk is, refused when a
selector matches none or several; and the WWN and by-path facts they read."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.disks import Disk, Probe
from agent.storage.model import Disk as LayoutDisk
from agent.storage.model import DiskSelector, LabelType, Layout
from agent.storage.selectors import (
    Candidate,
    choose_disks,
    matches,
    mismatches,
    parse_bytes,
    parse_size_range,
    selector_problems,
)
from agent.storage.units import Unit
from sysclone.errors import ConfigError
from tests.conftest import FakeCommands

GiB = 1 << 30

MACHINE = [
    Candidate("/dev/nvme0n1", 1000 * 10**9, model="Samsung SSD 980 PRO 1TB", serial="S5GX01",
              wwn="eui.002538b111b2c3d4", bus="nvme", by_path=("pci-0000:01:00.0-nvme-1",)),
    Candidate("/dev/nvme1n1", 512 * 10**9, model="KIOXIA KBG40ZNS512G", serial="Y0FS10",
              bus="nvme", by_path=("pci-0000:02:00.0-nvme-1",)),
    Candidate("/dev/sda", 4000 * 10**9, model="WDC WD40EFRX", serial="WD-WCC7K1",
              wwn="0x50014ee2b5c8d9e0", bus="sata", by_path=("pci-0000:00:17.0-ata-1",)),
    Candidate("/dev/sdb", 4000 * 10**9, model="WDC WD40EFRX", serial="WD-WCC7K2",
              wwn="0x50014ee2b5c8d9e1", bus="sata", by_path=("pci-0000:00:17.0-ata-2",)),
]


def layout(*selectors: DiskSelector | None) -> Layout:
    disks = tuple(LayoutDisk(dev=f"/dev/sd{chr(97 + i)}", label=LabelType.GPT, unit=Unit.MIB,
                             partitions=(), select=s) for i, s in enumerate(selectors))
    return Layout(disks=disks, source="sel.toml")


@pytest.mark.parametrize(("text", "low", "high"), [
    (">=100GiB", 100 * GiB, None), ("<=2TB", None, 2 * 10**12), ("400GB..520GB", 400 * 10**9,
                                                                  520 * 10**9),
    (">500G", 500 * GiB, None), ("<1.5T", None, int(1.5 * 2**40)),
])
def test_size_ranges(text: str, low: int | None, high: int | None) -> None:
    r = parse_size_range(text)
    assert (r.low, r.high) == (low, high)


def test_size_range_edges() -> None:
    assert parse_size_range(">=1G").holds(GiB) and not parse_size_range(">1G").holds(GiB)
    assert parse_size_range("<=1G").holds(GiB) and not parse_size_range("<1G").holds(GiB)
    assert parse_size_range("1G..2G").holds(2 * GiB)
    assert parse_bytes("512") == 512 and parse_bytes("1KiB") == 1024 and parse_bytes("1kb") == 1000


@pytest.mark.parametrize(("text", "message"), [
    ("500G", "is not a size condition"), ("2G..1G", "the range is empty"),
    (">=lots", "is not a size"), (">=5XB", "is not a size"),
])
def test_bad_size_ranges(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size_range(text)


def test_selector_problems() -> None:
    assert selector_problems(DiskSelector()) == [
        ("the selector is empty", "give at least one of size, model, serial, wwn, bus, "
                                  "by_path, order, rotational")]
    assert [p for p, _ in selector_problems(DiskSelector(bus="scsi", order=0, model=" "))] == [
        "order 0 must be 1 or more", "model is empty"]


@pytest.mark.parametrize(("sel", "hits"), [
    (DiskSelector(bus="nvme"), ["/dev/nvme0n1", "/dev/nvme1n1"]),
    (DiskSelector(bus="NVMe", size=">=900GB"), ["/dev/nvme0n1"]),
    (DiskSelector(model="wdc *"), ["/dev/sda", "/dev/sdb"]),  # case-insensitive
    (DiskSelector(serial="wd-*"), []),  # serials are case-sensitive
    (DiskSelector(wwn="50014ee2b5c8d9e1"), ["/dev/sdb"]),  # with or without 0x
    (DiskSelector(wwn="0x50014EE2B5C8D9E0"), ["/dev/sda"]),
    (DiskSelector(by_path="pci-0000:00:17.0-ata-2"), ["/dev/sdb"]),
    (DiskSelector(order=2), ["/dev/nvme1n1"]),
    (DiskSelector(bus="sata", order=3), ["/dev/sda"]),
    (DiskSelector(rotational=True), []),  # MACHINE's disks are all solid state
    (DiskSelector(rotational=False, bus="sata"), ["/dev/sda", "/dev/sdb"]),
])
def test_matches(sel: DiskSelector, hits: list[str]) -> None:
    assert [c.path for i, c in enumerate(MACHINE, 1) if matches(sel, c, i)] == hits


def test_mismatches_say_what_the_disk_has() -> None:
    sel = DiskSelector(size=">=2TB", bus="nvme", rotational=True, model="Samsung*")
    assert mismatches(sel, MACHINE[0], 1) == ["size>=2TB (931.3 GiB)", "rotational=1 "
                                                                        "(rotational=0)"]
    assert mismatches(DiskSelector(bus="sata"), MACHINE[2], 3) == []


def test_selected_disks_and_the_rest_in_order() -> None:
    lay = layout(None, DiskSelector(size=">=3TB", serial="WD-WCC7K2"), None)
    assert [c.path for c in choose_disks(lay, MACHINE)] == ["/dev/nvme0n1", "/dev/sdb",
                                                            "/dev/nvme1n1"]


def test_no_selector_means_in_order() -> None:
    assert [c.path for c in choose_disks(layout(None, None), MACHINE)] == ["/dev/nvme0n1",
                                                                           "/dev/nvme1n1"]


def test_a_selector_matching_none_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        choose_disks(layout(DiskSelector(bus="usb")), MACHINE)
    assert e.value.message == ("sel.toml: disk /dev/sda (bus=usb) matches none of this "
                               "machine's usable disks")
    assert e.value.hint is not None and e.value.hint.startswith(
        "usable disks: /dev/nvme0n1 (931.3 GiB, bus nvme, model Samsung SSD 980 PRO 1TB, "
        "serial S5GX01, wwn eui.002538b111b2c3d4, by-path pci-0000:01:00.0-nvme-1); ")


def test_a_selector_matching_several_is_refused() -> None:
    with pytest.raises(ConfigError) as e:
        choose_disks(layout(DiskSelector(model="WDC*")), MACHINE)
    assert e.value.message == "sel.toml: disk /dev/sda (model=WDC*) matches 2 disks: " \
                              "/dev/sda, /dev/sdb"
    assert (e.value.hint or "").startswith("add serial, wwn or by_path to tell them apart")


def test_two_selectors_choosing_one_disk_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"matches /dev/sda, which disk /dev/sda already chose"):
        choose_disks(layout(DiskSelector(serial="WD-WCC7K1"), DiskSelector(bus="sata",
                                                                          order=3)), MACHINE)


def test_too_few_disks() -> None:
    with pytest.raises(ConfigError, match=r"the layout needs 5 disk\(s\)"):
        choose_disks(layout(None, None, None, None, None), MACHINE)


def test_probe_reads_wwn_and_by_path(fake_commands: FakeCommands, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.disks as disklib

    by_path = tmp_path / "by-path"
    by_path.mkdir()
    (tmp_path / "sda").touch()
    (by_path / "pci-0000:00:17.0-ata-1").symlink_to(tmp_path / "sda")
    (by_path / "pci-0000:00:17.0-ata-1-part1").symlink_to(tmp_path / "sda")
    monkeypatch.setattr(disklib, "BY_PATH", by_path)
    fake_commands.add(["lsblk", "-J", "-d", "-o", "NAME,WWN"],
                      '{"blockdevices": [{"name": "sda", "wwn": "0x50014ee2b5c8d9e0"},'
                      ' {"name": "vda", "wwn": null}]}')
    got = Probe().identify([Disk("sda", GiB), Disk("vda", GiB)])
    assert (got[0].wwn, got[0].by_path) == ("50014ee2b5c8d9e0", ("pci-0000:00:17.0-ata-1",))
    assert (got[1].wwn, got[1].by_path, got[1].bus) == ("", (), "virtio")
    assert fake_commands.calls == [["lsblk", "-J", "-d", "-o", "NAME,WWN", "/dev/sda",
                                    "/dev/vda"]]
