"""si.disk: disks by name, by /dev/disk/by-id and by-path link (a fake /dev
tree), and by rule; errors for a rule that matches nothing or more disks
than the layout uses; and the plan saying why each disk was chosen or not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.disks import Disk, DiskError
from agent.params import parse_cmdline
from agent.planner import make_plan
from agent.storage.diskspec import DiskPath, DiskRule, parse_disk_spec
from agent.storage.model import DiskSelector
from agent.targets import DiskChoice, install_targets
from sysclone.errors import ConfigError
from tests.conftest import FakeCommands

GiB = 1 << 30
LAYOUTS = Path(__file__).resolve().parent / "data" / "layouts"

MACHINE = [
    Disk("mmcblk0", 64 * 10**9, model="DG4064", serial="0x1234abcd"),
    Disk("nvme0n1", 1000 * 10**9, model="Samsung SSD 980 PRO 1TB", serial="S5GX01",
         transport="nvme"),
    Disk("nvme1n1", 512 * 10**9, model="KIOXIA KBG40ZNS512G", serial="Y0FS10",
         transport="nvme"),
    Disk("sda", 4000 * 10**9, model="WDC WD40EFRX", serial="WD-WCC7K1", transport="sata",
         rotational=True),
    Disk("sdb", 4000 * 10**9, model="WDC WD40EFRX", serial="WD-WCC7K2", transport="sata",
         rotational=True),
    Disk("sdc", 32 * 10**9, model="SanDisk Ultra", transport="usb", removable=True),
    Disk("sdd", 8 * 10**9, model="Virtual CD", transport="sata", readonly=True),
    Disk("vda", 20 * GiB),
]


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """A /dev with udev's links, as relative symlinks like udev makes them."""
    root = tmp_path / "root"
    d = root / "dev"
    for name in ("sda", "sda1", "sdb", "nvme0n1", "nvme1n1"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).touch()
    links = {"by-id/wwn-0x50014ee2b5c8d9e1": "sdb",
             "by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GX01": "nvme0n1",
             "by-id/ata-WDC_WD40EFRX_WD-WCC7K1-part1": "sda1",
             "by-path/pci-0000:00:17.0-ata-1": "sda",
             "by-path/pci-0000:02:00.0-nvme-1": "nvme1n1"}
    for link, target in links.items():
        p = d / "disk" / link
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(Path("../..") / target)
    return root


def names(disks: Any) -> list[str]:
    return [d.name for d in disks]


# -- the parameter ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "select"), [
    ("size>=100G", DiskSelector(size=">=100G")),
    ("size<=2T", DiskSelector(size="<=2T")),
    ("size>100GB", DiskSelector(size=">100GB")),
    ("size<2TB", DiskSelector(size="<2TB")),
    ("size=400G..520G", DiskSelector(size="400G..520G")),
    ("size>=400G+size<=520G", DiskSelector(size="400G..520G")),
    ("model=Samsung*", DiskSelector(model="Samsung*")),
    ("serial=WD-WCC7K1", DiskSelector(serial="WD-WCC7K1")),
    ("wwn=0x50014ee2*", DiskSelector(wwn="0x50014ee2*")),
    ("bus=NVMe", DiskSelector(bus="nvme")),
    ("rotational=0", DiskSelector(rotational=False)),
    ("rotational=1", DiskSelector(rotational=True)),
    ("bus=nvme+size>=100G + rotational=0", DiskSelector(bus="nvme", size=">=100G",
                                                        rotational=False)),
    ("model=Samsung SSD*", DiskSelector(model="Samsung SSD*")),
])
def test_rules(text: str, select: DiskSelector) -> None:
    rule = parse_disk_spec(text)
    assert rule == DiskRule(select, text)
    assert str(rule) == text


@pytest.mark.parametrize(("text", "path"), [
    ("sda", "/dev/sda"), ("nvme0n1", "/dev/nvme0n1"), ("/dev/vdb", "/dev/vdb"),
    ("mmcblk0", "/dev/mmcblk0"),
    ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"),
    ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "/dev/disk/by-path/pci-0000:00:1f.2-ata-1"),
])
def test_disk_paths(text: str, path: str) -> None:
    assert parse_disk_spec(text) == DiskPath(path)


@pytest.mark.parametrize(("word", "message"), [
    ("si.disk=colour=red", "si.disk: 'colour=red' is not a disk rule: unknown key 'colour' "
                           "(use size, model, serial, wwn, bus, rotational)"),
    ("si.disk=size=100G", "si.disk: 'size=100G' is not a disk rule: size=100G would need "
                          "the exact size"),
    ("si.disk=size>=lots", "si.disk: 'size>=lots' is not a disk rule: size 'lots' is not a "
                           "size"),
    ("si.disk=size>=1T+size>=2T", "si.disk: 'size>=1T+size>=2T' is not a disk rule: size "
                                  "is given twice"),
    ("si.disk=size>1T+size<2T", "si.disk: 'size>1T+size<2T' is not a disk rule: combine "
                                "size>=LOW with size<=HIGH"),
    ("si.disk=bus=firewire", "si.disk: 'bus=firewire' is not a disk rule: bus 'firewire' is "
                             "not one of ata, sata"),
    ("si.disk=bus>nvme", "si.disk: 'bus>nvme' is not a disk rule: bus takes = (not >)"),
    ("si.disk=rotational=yes", "si.disk: 'rotational=yes' is not a disk rule: rotational "
                               "is 0 (SSD, NVMe) or 1"),
    ("si.disk=model=", "si.disk: 'model=' is not a disk rule: model has no value"),
    ("si.disk=bus=nvme+bus=sata", "si.disk: 'bus=nvme+bus=sata' is not a disk rule: bus is "
                                  "given twice"),
    ("si.disk=bus=nvme+fast", "si.disk: 'bus=nvme+fast' is not a disk rule: 'fast' is not "
                              "KEY=VALUE (conditions are joined by +)"),
    ("si.disk=sda+sdb", "si.disk: 'sda+sdb' is not a disk (sda, /dev/nvme0n1, "
                        "/dev/disk/by-id/..., /dev/disk/by-path/...) or a rule like "
                        "size>=100G+bus=nvme"),
    ("si.disk=sda,bus=scsi+rotational=2", "si.disk: 'sda,bus=scsi+rotational=2' has "
                                          "'bus=scsi+rotational=2', which is not a disk rule"),
])
def test_bad_rules_are_refused_where_they_enter(word: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_cmdline(word)
    assert e.value.message.startswith(message)
    assert e.value.message.endswith("(kernel command line)")
    assert "\n" not in e.value.message


def test_a_list_of_names_links_and_rules() -> None:
    layer = parse_cmdline('si.disk="nvme0n1, /dev/disk/by-id/wwn-0x5000,model=WDC WD40*"')
    assert layer.value("si.disk") == (
        DiskPath("/dev/nvme0n1"), DiskPath("/dev/disk/by-id/wwn-0x5000"),
        DiskRule(DiskSelector(model="WDC WD40*"), "model=WDC WD40*"))


# -- choosing the targets --------------------------------------------------------------------

def test_the_default_and_its_reasons() -> None:
    t = install_targets(MACHINE)
    assert names(t.disks) == ["mmcblk0", "nvme0n1", "nvme1n1", "sda", "sdb", "vda"]
    why = {c.disk: (c.chosen, c.why) for c in t.choices}
    assert why["/dev/vda"] == (True, "not removable, read-only or in use")
    assert why["/dev/sdc"] == (False, "removable")
    assert why["/dev/sdd"] == (False, "read-only")
    assert [c.disk for c in t.choices][-2:] == ["/dev/sdc", "/dev/sdd"]  # skipped ones last


def test_by_id_and_by_path_links(dev: Path) -> None:
    t = install_targets(MACHINE, ["/dev/disk/by-id/wwn-0x50014ee2b5c8d9e1",
                                  "/dev/disk/by-path/pci-0000:02:00.0-nvme-1"], root=dev)
    assert names(t.disks) == ["sdb", "nvme1n1"]  # in the order given
    assert t.choices[0] == DiskChoice(
        "/dev/sdb", True, "named by si.disk as /dev/disk/by-id/wwn-0x50014ee2b5c8d9e1")
    assert t.choices[1].why == "named by si.disk as /dev/disk/by-path/pci-0000:02:00.0-nvme-1"
    assert {c.disk: c.why for c in t.choices}["/dev/sda"] == "not named by si.disk"
    t = install_targets(MACHINE, ["/dev/disk/by-path/pci-0000:00:17.0-ata-1",
                                  "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_1TB_S5GX01"],
                        root=dev)
    assert names(t.disks) == ["sda", "nvme0n1"]


def test_a_link_to_a_partition_or_to_nothing(dev: Path) -> None:
    with pytest.raises(DiskError) as e:
        install_targets(MACHINE, ["/dev/disk/by-id/ata-WDC_WD40EFRX_WD-WCC7K1-part1",
                                  "/dev/disk/by-id/wwn-0xdeadbeef"], root=dev)
    assert e.value.message == (
        "si.disk: no disk named /dev/disk/by-id/ata-WDC_WD40EFRX_WD-WCC7K1-part1 "
        "(a link to sda1), "
        "/dev/disk/by-id/wwn-0xdeadbeef (no such link)")


@pytest.mark.parametrize(("rule", "chosen"), [
    ("size>=900GB", ["nvme0n1", "sda", "sdb"]),
    ("size<=100G", ["mmcblk0", "vda"]),
    ("size=400GB..600GB", ["nvme1n1"]),
    ("model=samsung*", ["nvme0n1"]),  # case-insensitive
    ("serial=WD-WCC7K2", ["sdb"]),
    ("bus=nvme", ["nvme0n1", "nvme1n1"]),
    ("bus=sata", ["sda", "sdb"]),  # not sdd: read-only
    ("bus=virtio", ["vda"]),  # from the kernel name: virtio disks have no transport
    ("bus=mmc", ["mmcblk0"]),
    ("rotational=1", ["sda", "sdb"]),
    ("rotational=0", ["mmcblk0", "nvme0n1", "nvme1n1", "vda"]),  # not the USB stick
    ("bus=nvme+size<600GB", ["nvme1n1"]),
    ("rotational=0+size>=100G+size<=1T", ["nvme0n1", "nvme1n1"]),
])
def test_each_rule_key(rule: str, chosen: list[str]) -> None:
    t = install_targets(MACHINE, [rule])
    assert names(t.disks) == chosen
    assert all(c.why == f"matches si.disk rule {rule}" and c.rule == rule
               for c in t.choices if c.chosen)


def test_names_and_rules_together() -> None:
    t = install_targets(MACHINE, ["sdc", "bus=nvme", "nvme1n1"])
    # sdc is removable: named, it is used; nvme1n1 came with the rule already.
    with pytest.raises(DiskError):  # but naming a disk twice is a mistake
        install_targets(MACHINE, ["sda", "/dev/sda"])
    assert names(t.disks) == ["sdc", "nvme0n1", "nvme1n1"]
    assert names(install_targets(MACHINE, ["bus=sata", "bus=nvme"]).disks) == [
        "sda", "sdb", "nvme0n1", "nvme1n1"]


def test_wwn_rules_read_the_wwns(fake_commands: FakeCommands) -> None:
    fake_commands.add(["lsblk", "-J", "-d", "-o", "NAME,WWN"],
                      '{"blockdevices": [{"name": "sda", "wwn": "0x50014ee2b5c8d9e0"},'
                      ' {"name": "sdb", "wwn": "0x50014ee2b5c8d9e1"}]}')
    assert names(install_targets(MACHINE, ["wwn=*d9e1"]).disks) == ["sdb"]


def test_why_a_disk_does_not_match() -> None:
    t = install_targets(MACHINE, ["bus=nvme+size>=900GB", "serial=WD-WCC7K2"])
    why = {c.disk: c.why for c in t.choices}
    assert why["/dev/nvme1n1"] == ("does not match size>=900GB (476.8 GiB); "
                                   "does not match serial=WD-WCC7K2 (serial 'Y0FS10')")
    assert why["/dev/sda"] == ("does not match bus=nvme (bus sata); "
                               "does not match serial=WD-WCC7K2 (serial 'WD-WCC7K1')")
    assert why["/dev/sdc"] == "removable; name it in si.disk to use it"
    assert why["/dev/sdd"] == "read-only"


def test_a_rule_matching_no_disk() -> None:
    with pytest.raises(DiskError) as e:
        install_targets(MACHINE, ["bus=usb"])  # the only USB disk is removable
    assert e.value.message == "si.disk rule bus=usb matches none of this machine's usable disks"
    assert "/dev/sdc (29.8 GiB, bus usb, model SanDisk Ultra) [removable]" in (e.value.hint
                                                                               or "")
    with pytest.raises(DiskError, match=r"^si\.disk rule size>=10T matches none"):
        install_targets(MACHINE, ["size>=10T"])


def test_named_disks_keep_their_old_rules() -> None:
    with pytest.raises(DiskError, match=r"^si\.disk: sdd is read-only$"):
        install_targets(MACHINE, ["sdd"])
    with pytest.raises(DiskError) as e:
        install_targets(MACHINE, ["/dev/sdz", "vdb", "nvme0n1"])
    assert e.value.message == "si.disk: no disk named sdz, vdb"


# -- the plan --------------------------------------------------------------------------------

def plan(layout: str | None, wanted: list[str], disks: list[Disk] = MACHINE) -> Any:
    targets = install_targets(disks, wanted)
    instructions: dict[str, Any] = {"image": {"name": "deb12", "usage": {"/": GiB}}}
    if layout:
        instructions["layout"] = {"name": layout, "format": "toml",
                                  "text": (LAYOUTS / layout).read_text()}
    return make_plan(instructions=instructions, server="10.0.0.2", hostname="node07",
                     targets=list(targets.disks), fw="bios", ram_bytes=4 * GiB,
                     have_tool=lambda tool: True, choices=targets.choices)


def test_a_rule_matching_two_disks_when_one_is_needed() -> None:
    with pytest.raises(ConfigError) as e:
        plan(None, ["bus=nvme"])
    assert e.value.message == ("si.disk chooses 2 disks for layout built-in default (bios, "
                               "gpt), which uses 1: rule bus=nvme matches /dev/nvme0n1, "
                               "/dev/nvme1n1")
    assert (e.value.hint or "").startswith(
        "add conditions to the rule (+serial=..., +model=..., +size>=...) or name the disk: "
        "/dev/nvme0n1 (931.3 GiB, bus nvme, model Samsung SSD 980 PRO 1TB, serial S5GX01); ")


def test_a_rule_matching_as_many_disks_as_the_layout_uses() -> None:
    p = plan("raid1-lvm.toml", ["rotational=1"])
    assert [d.disk.name for d in p.disks] == ["sda", "sdb"]
    with pytest.raises(ConfigError, match=r"^si\.disk chooses 4 disks for layout "
                                          r"raid1-lvm\.toml, which uses 2: rule rotational=0 "):
        plan("raid1-lvm.toml", ["rotational=0"])


def test_the_plan_says_why_each_disk_was_chosen_or_skipped() -> None:
    p = plan(None, ["bus=nvme+size>=900GB"])
    assert [d.disk.name for d in p.disks] == ["nvme0n1"]
    text = p.describe()
    assert ("  disks of this machine:\n"
            "    /dev/nvme0n1     chosen: matches si.disk rule bus=nvme+size>=900GB\n"
            "    /dev/mmcblk0     skipped: does not match size>=900GB (59.6 GiB), "
            "bus=nvme (bus mmc)\n") in text
    assert "    /dev/sdc         skipped: removable; name it in si.disk to use it\n" in text
    choice = p.to_dict()["disk_choice"]
    assert choice[0] == {"disk": "/dev/nvme0n1", "chosen": True,
                         "why": "matches si.disk rule bus=nvme+size>=900GB"}
    assert len(choice) == len(MACHINE)


def test_the_default_in_the_plan() -> None:
    p = plan(None, [])
    assert [d.disk.name for d in p.disks] == ["mmcblk0"]
    why = {c["disk"]: (c["chosen"], c["why"]) for c in p.to_dict()["disk_choice"]}
    assert why["/dev/mmcblk0"] == (True, "not removable, read-only or in use")
    assert why["/dev/vda"] == (False, "not removable, read-only or in use, but layout "
                                      "built-in default (bios, gpt) uses 1 disk(s)")
    assert why["/dev/sdc"] == (False, "removable")


def test_layout_disks_are_named_in_the_reasons() -> None:
    p = plan("raid1-lvm.toml", ["nvme1n1", "nvme0n1"])
    why = {c.disk: c.why for c in p.disk_choice}
    assert why["/dev/nvme1n1"] == "named by si.disk; for layout disk /dev/sda"
    assert why["/dev/nvme0n1"] == "named by si.disk; for layout disk /dev/sdb"
    assert [c.disk for c in p.disk_choice][:2] == ["/dev/nvme1n1", "/dev/nvme0n1"]
