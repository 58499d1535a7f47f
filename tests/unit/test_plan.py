"""The install plan: the built-in default layout and SystemImager's own
example layouts mapped onto /dev/vda and /dev/nvme0n1, the fit checks and
their messages, and what the agent refuses to do."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.disks import Disk
from agent.plan import IMAGE_GROWTH, MKFS_TOOLS, default_swap_mib
from agent.planner import _exclusive_usage, make_plan
from sysclone.errors import ConfigError

MiB = 1 << 20
GiB = 1 << 30
SI = Path(__file__).resolve().parent / "data" / "si"


def plan(instructions: dict[str, Any], disks: list[Disk], fw: str = "bios",
         ram: int = 4 * GiB, have_tool: Any = lambda tool: True) -> Any:
    return make_plan(instructions=instructions, server="10.0.0.2", hostname="node07",
                     targets=disks, fw=fw, ram_bytes=ram, have_tool=have_tool)


def image(**kw: Any) -> dict[str, Any]:
    return {"name": "rocky9", **kw}


def si_layout(compat: Path, name: str) -> dict[str, Any]:
    return {"format": "systemimager-xml", "name": name, "text": (compat / name).read_text()}


def parts(p: Any) -> list[tuple[str, int, int, str]]:
    """(device, start MiB, size MiB, kind) of every planned partition."""
    return [(pp.device, pp.start // MiB, pp.size // MiB, pp.kind.value)
            for d in p.disks for pp in d.partitions]


def filesystems(p: Any) -> list[tuple[str, str, str | None]]:
    return [(f.device, f.fs, f.mountpoint) for f in p.filesystems]


# -- the built-in default layout -------------------------------------------------------------

def test_default_layout_bios_on_vda() -> None:
    p = plan({"image": image(bytes=3 * GiB, files=120_000, usage={"/": 3 * GiB})},
             [Disk("vda", 20 * GiB)])
    assert p.layout_name == "built-in default (bios, gpt)"
    assert p.disks[0].label == "gpt"
    assert parts(p) == [("/dev/vda1", 1, 1, "primary"),  # BIOS boot partition for grub
                        ("/dev/vda2", 2, 18429, "primary"),
                        ("/dev/vda3", 18431, 2048, "primary")]  # swap: RAM, at most 2 GiB
    assert filesystems(p) == [("/dev/vda2", "ext4", "/"), ("/dev/vda3", "swap", None)]
    root = p.filesystems[0]
    assert root.size == 18429 * MiB
    assert root.needs == int(3 * GiB * IMAGE_GROWTH)
    assert uuid.UUID(root.uuid).version == 4
    assert root.fstab_spec == f"UUID={root.uuid}"
    assert p.filesystems[1].needs == 0
    assert len({f.uuid for f in p.filesystems}) == 2
    assert (p.firmware, p.boot_disks) == ("bios", ("/dev/vda",))
    assert p.image.url == "rsync://10.0.0.2:873/rocky9/"
    assert (p.image.bytes, p.image.files) == (3 * GiB, 120_000)
    assert p.notes == ()


def test_default_layout_uefi_on_nvme() -> None:
    p = plan({"image": image()}, [Disk("nvme0n1", 64 * GiB), Disk("nvme1n1", 64 * GiB)],
             fw="uefi", ram=1 * GiB)
    assert p.layout_name == "built-in default (uefi, gpt)"
    assert [d.disk.name for d in p.disks] == ["nvme0n1"]  # one disk is enough
    assert parts(p) == [("/dev/nvme0n1p1", 1, 512, "primary"),
                        ("/dev/nvme0n1p2", 513, 64 * 1024 - 2 - 512 - 1024, "primary"),
                        ("/dev/nvme0n1p3", 64 * 1024 - 1 - 1024, 1024, "primary")]
    assert filesystems(p) == [("/dev/nvme0n1p2", "ext4", "/"),
                              ("/dev/nvme0n1p1", "vfat", "/boot/efi"),
                              ("/dev/nvme0n1p3", "swap", None)]
    esp = p.filesystems[1]
    assert len(esp.uuid) == 9 and esp.uuid[4] == "-"  # a FAT volume id: XXXX-XXXX
    int(esp.uuid.replace("-", ""), 16)
    assert (p.firmware, p.boot_disks) == ("uefi", ("/dev/nvme0n1p1",))
    assert [f.mountpoint for f in p.mounts] == ["/", "/boot/efi"]


@pytest.mark.parametrize(("disk", "ram", "swap"), [
    (20 * GiB, 4 * GiB, 2048),  # capped at 2 GiB
    (20 * GiB, 1 * GiB, 1024),  # as big as RAM
    (20 * GiB, 128 * MiB, 256),  # at least 256 MiB
    (1 * GiB, 4 * GiB, 128),  # at most an eighth of the disk
])
def test_default_swap_size(disk: int, ram: int, swap: int) -> None:
    assert default_swap_mib(disk, ram) == swap


# -- SystemImager's layouts ------------------------------------------------------------------

@pytest.mark.parametrize(("disk", "p"), [("vda", "/dev/vda"), ("nvme0n1", "/dev/nvme0n1p")])
def test_simple_layout(compat: Path, disk: str, p: str) -> None:
    pl = plan({"image": image(usage={"/": 3 * GiB, "/boot": 200 * MiB}),
               "layout": si_layout(compat, "disk-layout-simple.xml")}, [Disk(disk, 20 * GiB)])
    assert pl.layout_name == "disk-layout-simple.xml"
    assert pl.disks[0].label == "msdos"
    # 500 MB = 476.8 MiB, rounded up; the logical partitions each follow 1 MiB of EBR.
    assert parts(pl) == [(f"{p}1", 1, 477, "primary"), (f"{p}2", 478, 20002, "extended"),
                         (f"{p}5", 479, 489, "logical"), (f"{p}6", 969, 19511, "logical")]
    assert filesystems(pl) == [(f"{p}6", "xfs", "/"), (f"{p}5", "swap", None),
                               (f"{p}1", "ext4", "/boot")]
    needs = {f.mountpoint: f.needs for f in pl.filesystems}
    assert needs == {"/": int((3 * GiB - 200 * MiB) * IMAGE_GROWTH),
                     "/boot": int(200 * MiB * IMAGE_GROWTH), None: 0}
    assert [f.mountpoint for f in pl.mounts] == ["/", "/boot"]
    assert pl.boot_disks == (f"/dev/{disk}",)


def test_complex_layout_numbers_logical_partitions_by_number(compat: Path) -> None:
    usage = {"/": 3 * GiB, "/var": 1 * GiB, "/boot": 200 * MiB, "/home": 10 * MiB,
             "/var/log": 300 * MiB}
    pl = plan({"image": image(usage=usage), "layout": si_layout(compat,
                                                                "disk-layout-complex.xml")},
              [Disk("nvme0n1", 20 * GiB)])
    # The file lists 7 before 5: on disk 5 must still come first.
    assert parts(pl) == [
        ("/dev/nvme0n1p1", 1, 500, "primary"), ("/dev/nvme0n1p2", 501, 1024, "primary"),
        ("/dev/nvme0n1p3", 1525, 4096, "primary"), ("/dev/nvme0n1p4", 5621, 14859, "extended"),
        ("/dev/nvme0n1p5", 5622, 8712, "logical"), ("/dev/nvme0n1p6", 14335, 2048, "logical"),
        ("/dev/nvme0n1p7", 16384, 4096, "logical")]
    by_mp = {f.mountpoint: f for f in pl.filesystems}
    assert by_mp["/"].device == "/dev/nvme0n1p5"
    assert by_mp["/var"].device == "/dev/nvme0n1p6"
    assert by_mp["/backup"].needs == 0  # not in the image's usage: nothing lands there
    assert by_mp["/"].needs == int((3 * GiB - 1 * GiB - 200 * MiB - 10 * MiB) * IMAGE_GROWTH)
    assert by_mp["/var"].needs == int(1 * GiB * IMAGE_GROWTH)  # /var/log is inside it
    assert [f.mountpoint for f in pl.mounts] == ["/", "/var", "/boot", "/home", "/backup"]


def test_efi_layout(compat: Path) -> None:
    pl = plan({"image": image(), "layout": si_layout(compat, "disk-layout-EFI.xml")},
              [Disk("nvme0n1", 20 * GiB)], fw="uefi")
    assert pl.disks[0].label == "gpt"
    assert filesystems(pl) == [("/dev/nvme0n1p4", "xfs", "/"), ("/dev/nvme0n1p3", "swap", None),
                               ("/dev/nvme0n1p2", "xfs", "/boot"),
                               ("/dev/nvme0n1p1", "fat32", "/boot/efi")]
    assert pl.firmware == "uefi"
    assert pl.boot_disks == ("/dev/nvme0n1p1",)
    assert pl.esp_mountpoint == "/boot/efi"
    assert pl.notes == ()
    assert [f.mountpoint for f in pl.mounts] == ["/", "/boot", "/boot/efi"]
    text = pl.describe()
    assert "bootloader: UEFI on /dev/nvme0n1p1" in text
    assert "/dev/nvme0n1p1   fat32  /boot/efi" in text


def test_a_layout_for_the_other_firmware_is_refused(compat: Path) -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": image(), "layout": si_layout(compat, "disk-layout-EFI.xml")},
             [Disk("nvme0n1", 20 * GiB)], fw="bios")
    assert e.value.message == ('layout disk-layout-EFI.xml is for UEFI machines (install_type='
                               '"efi"), but this machine booted BIOS')
    assert "boot the machine in UEFI mode" in (e.value.hint or "")
    with pytest.raises(ConfigError, match=r"is for BIOS machines .* but this machine booted "
                                          "UEFI"):
        plan({"image": image(), "layout": si_layout(compat, "disk-layout-simple.xml")},
             [Disk("vda", 20 * GiB)], fw="uefi")


def test_without_a_bootloader_section_the_firmware_decides() -> None:
    text = TWO_DISKS.replace("""  <bootloader flavor="grub2" install_type="legacy">
    <target dev="/dev/sda" />
  </bootloader>
""", "")
    pl = plan({"image": image(), "layout": two_disks(text)},
              [Disk("vda", 10 * GiB), Disk("vdb", 10 * GiB)])
    assert (pl.firmware, pl.boot_disks) == ("bios", ("/dev/vda",))
    with pytest.raises(ConfigError) as e:
        plan({"image": image(), "layout": two_disks(text)},
             [Disk("vda", 10 * GiB), Disk("vdb", 10 * GiB)], fw="uefi")
    assert e.value.message.startswith("layout two-disks.xml has no <bootloader>, so it is "
                                      "installed for this machine's firmware (UEFI): ")
    assert "needs an EFI system partition" in e.value.message


def test_raid_lvm_layout() -> None:
    """Two mirrors, a volume group on one of them, GRUB on both disks."""
    lay = {"format": "systemimager-xml", "name": "raid-lvm.xml",
           "text": (SI / "disks-layout-raid-lvm.xml").read_text()}
    pl = plan({"image": image(usage={"/": GiB, "/home": 100 * MiB, "/var": 300 * MiB}),
               "layout": lay}, [Disk("vda", 20 * GiB), Disk("vdb", 20 * GiB)])
    assert [(a.name, a.level, a.members, a.metadata) for a in pl.arrays] == [
        ("/dev/md0", "raid1", ("/dev/vda3", "/dev/vdb2"), "1.2"),
        ("/dev/md1", "raid1", ("/dev/vda2", "/dev/vdb1"), "1.2")]
    md0 = pl.arrays[0]
    assert len(md0.uuid.split(":")) == 4 and md0.homehost == "node07"
    assert (pl.groups[0].name, pl.groups[0].pvs, pl.groups[0].extent) == (
        "datavg", ("/dev/md0",), 8 * MiB)
    assert [(v.path, v.size // MiB) for v in pl.groups[0].volumes] == [
        ("/dev/datavg/rootlv", 4096), ("/dev/datavg/homelv", 1024), ("/dev/datavg/varlv", 3072)]
    assert filesystems(pl)[:5] == [("/dev/datavg/rootlv", "ext4", "/"),
                                   ("/dev/vda1", "ext3", "/boot"),
                                   ("/dev/datavg/homelv", "xfs", "/home"),
                                   ("/dev/datavg/varlv", "ext4", "/var"),
                                   ("/dev/md1", "swap", None)]
    assert pl.features == {"md", "lvm"} and pl.raid_levels == {"raid1"}
    assert pl.root_stack == {"md", "lvm"}  # / is an LV on a mirror
    assert pl.boot_disks == ("/dev/vda", "/dev/vdb")
    assert pl.kernel_args == (f"rd.md.uuid={pl.arrays[0].uuid}",
                              f"rd.md.uuid={pl.arrays[1].uuid}", "rd.lvm.vg=datavg")
    text = pl.describe()
    assert "md /dev/md0" in text and "lv /dev/datavg/rootlv" in text


def test_raid1_boot_puts_grub_on_every_member_disk() -> None:
    text = """<config>
  <disk dev="/dev/sda" label_type="msdos" unit_of_measurement="MiB">
    <part num="1" size="512" p_type="primary" flags="raid" raid_dev="/dev/md0" />
    <part num="2" size="*" p_type="primary" />
  </disk>
  <disk dev="/dev/sdb" label_type="msdos" unit_of_measurement="MiB">
    <part num="1" size="512" p_type="primary" flags="raid" raid_dev="/dev/md0" />
  </disk>
  <raid><raid_disk name="/dev/md0" raid_level="1" metadata="1.0" /></raid>
  <fsinfo line="10" real_dev="/dev/sda2" mp="/" fs="ext4" />
  <fsinfo line="20" real_dev="/dev/md0" mp="/boot" fs="ext4" />
</config>"""
    pl = plan({"image": image(), "layout": two_disks(text)},
              [Disk("vda", 10 * GiB), Disk("vdb", 10 * GiB)])
    assert pl.boot_raid_disks == ("/dev/vda", "/dev/vdb")
    assert pl.boot_disks == ("/dev/vda", "/dev/vdb")


# -- does it fit? ----------------------------------------------------------------------------

def test_a_layout_for_a_bigger_disk_is_scaled_down_when_it_fits(compat: Path) -> None:
    pl = plan({"image": image(usage={"/": 3 * GiB}),
               "layout": si_layout(compat, "disk-layout-complex.xml")}, [Disk("vda", 8 * GiB)])
    sizes = {p.device: (p.size // MiB, (p.asked or 0) // MiB) for p in pl.disks[0].partitions}
    assert sizes["/dev/vda1"] == (399, 500)  # every absolute size shrinks by one factor
    assert sizes["/dev/vda2"] == (818, 1024)
    assert sizes["/dev/vda4"][1] == 0  # `*` is not scaled, it takes the rest
    root = next(f for f in pl.filesystems if f.mountpoint == "/")
    assert root.size >= int(3 * GiB * IMAGE_GROWTH)  # the image still fits
    assert len(pl.notes) == 1
    assert pl.notes[0].startswith("/dev/vda is smaller than layout disk-layout-complex.xml "
                                  "asks for: /dev/vda1 500 -> 399 MiB")
    assert sum(p.size for p in pl.disks[0].partitions
               if p.kind.value != "logical") <= 8 * GiB


def test_disk_too_small_even_scaled(compat: Path) -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": image(usage={"/": 3 * GiB}),
              "layout": si_layout(compat, "disk-layout-complex.xml")}, [Disk("vda", 3 * GiB)])
    assert e.value.message.startswith(
        "disk /dev/vda is too small for its partitions even scaled down (partition 5 at least "
        "3,400 MiB, partition 6 at least 287 MiB: the image data and the smallest filesystem "
        "each holds): it needs ")


def test_image_too_big_for_the_default_layout() -> None:
    # 4 GiB disk, 512 MiB swap (an eighth): even with the swap shrunk, the
    # root filesystem cannot hold 4 GiB of image.
    with pytest.raises(ConfigError) as e:
        plan({"image": image(usage={"/": 4 * GiB})}, [Disk("vda", 4 * GiB)])
    assert e.value.message.startswith(
        "disk /dev/vda is too small for its partitions even scaled down (partition 2 at least "
        "4,558 MiB: the image data and the smallest filesystem each holds)")
    # 3 GiB of image (3,164 MiB once written) does fit, swap untouched.
    pl = plan({"image": image(usage={"/": 3 * GiB})}, [Disk("vda", 4 * GiB)])
    assert pl.notes == ()


def test_image_too_big_for_one_mountpoint(compat: Path) -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": image(usage={"/": 3 * GiB, "/var": 2 * GiB}),
              "layout": si_layout(compat, "disk-layout-complex.xml")},
             [Disk("nvme0n1", 20 * GiB)])
    assert e.value.message == ("the image does not fit: /var needs 2,109 MiB of image data but "
                               "/dev/nvme0n1p6 (2,048 MiB xfs) holds about 1,882 MiB")
    assert "/var" in (e.value.hint or "")


TWO_DISKS = """<config>
  <disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">
    <part num="1" size="1" p_type="primary" flags="bios_grub" />
    <part num="2" size="*" p_type="primary" />
  </disk>
  <disk dev="/dev/sdb" label_type="gpt" unit_of_measurement="MiB">
    <part num="1" size="*" p_type="primary" />
  </disk>
  <bootloader flavor="grub2" install_type="legacy">
    <target dev="/dev/sda" />
  </bootloader>
  <fsinfo line="10" real_dev="/dev/sda2" mp="/" fs="ext4" options="defaults" />
  <fsinfo line="20" real_dev="/dev/sdb1" mp="/srv" fs="xfs" options="defaults" />
</config>
"""


def two_disks(text: str = TWO_DISKS) -> dict[str, Any]:
    return {"format": "systemimager-xml", "name": "two-disks.xml", "text": text}


def test_layout_needs_more_disks_than_usable() -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": image(), "layout": two_disks()}, [Disk("nvme0n1", 20 * GiB)])
    assert e.value.message == ("layout two-disks.xml needs 2 disks, this machine has 1 usable: "
                               "/dev/nvme0n1")


def test_two_disks_map_in_order() -> None:
    pl = plan({"image": image(), "layout": two_disks()},
              [Disk("nvme0n1", 20 * GiB), Disk("vda", 10 * GiB), Disk("vdb", 10 * GiB)])
    assert [d.disk.path for d in pl.disks] == ["/dev/nvme0n1", "/dev/vda"]
    assert filesystems(pl) == [("/dev/nvme0n1p2", "ext4", "/"), ("/dev/vda1", "xfs", "/srv")]
    assert pl.boot_disks == ("/dev/nvme0n1",)


def test_mount_only_lines_are_not_created() -> None:
    text = TWO_DISKS.replace("</config>", """
  <fsinfo line="80" real_dev="proc" mp="/proc" fs="proc" options="defaults" />
  <fsinfo line="110" real_dev="/dev/dvd" mp="/media/dvd" fs="subfs" options="noauto"
          format="no" />
  <fsinfo line="120" real_dev="server:/export" mp="/home" fs="nfs" options="defaults" />
</config>""")
    pl = plan({"image": image(usage={"/": GiB, "/home": 100 * MiB}), "layout": two_disks(text)},
              [Disk("vda", 10 * GiB), Disk("vdb", 10 * GiB)])
    assert filesystems(pl) == [("/dev/vda2", "ext4", "/"), ("/dev/vdb1", "xfs", "/srv")]
    # /home is NFS: the image's /home data stays under / on this machine's disks.
    assert pl.filesystems[0].needs == int(GiB * IMAGE_GROWTH)


def test_existing_data_on_a_partition_the_layout_creates_cannot_be_kept() -> None:
    text = TWO_DISKS.replace('mp="/srv" fs="xfs" options="defaults"',
                             'mp="/srv" fs="xfs" options="defaults" format="no"')
    with pytest.raises(ConfigError) as e:
        plan({"image": image(), "layout": two_disks(text)}, [Disk("vda", 9 * GiB),
                                                             Disk("vdb", 9 * GiB)])
    assert e.value.message == ('two-disks.xml:13: <fsinfo line="20">: /dev/sdb1 is created anew '
                               'by this layout, so format="no" cannot keep its data')


def test_filesystem_the_agent_cannot_create(compat: Path) -> None:
    text = (compat / "disk-layout-simple.xml").read_text().replace('mp="/" fs="xfs"',
                                                                   'mp="/" fs="jfs"')
    with pytest.raises(ConfigError) as e:
        plan({"image": image(), "layout": {"format": "systemimager-xml", "name": "jfs.xml",
                                           "text": text}}, [Disk("vda", 20 * GiB)])
    assert e.value.message == ('jfs.xml:18: <fsinfo line="100">: sysclone cannot create jfs on '
                               "/dev/sda6")
    assert "xfs" in (e.value.hint or "")


def test_boot_environment_without_the_mkfs_tool(compat: Path) -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": image(), "layout": si_layout(compat, "disk-layout-simple.xml")},
             [Disk("vda", 20 * GiB)], have_tool=lambda tool: tool != "mkfs.xfs")
    assert e.value.message == "this boot environment cannot create xfs (mkfs.xfs is missing)"


def test_instructions_without_an_image() -> None:
    with pytest.raises(ConfigError, match="the server's instructions name no image"):
        plan({"image": {}}, [Disk("vda", 20 * GiB)])


def test_layout_in_an_unknown_format() -> None:
    with pytest.raises(ConfigError, match=r"layout x\.yaml: unknown format 'curtin'"):
        plan({"image": image(), "layout": {"format": "curtin", "name": "x.yaml", "text": ""}},
             [Disk("vda", 20 * GiB)])


def test_image_module_port_ipv6_and_overrides() -> None:
    pl = make_plan(instructions={"image": image(module="rocky9-v2", rsync_port=8873),
                                 "overrides": ["site", "rack4"]},
                   server="fd00::2", hostname="node07", targets=[Disk("vda", 20 * GiB)],
                   fw="bios", ram_bytes=GiB, have_tool=lambda tool: True)
    assert pl.image.url == "rsync://[fd00::2]:8873/rocky9-v2/"
    assert pl.overrides == ("site", "rack4")
    d = pl.to_dict()
    assert d["image"] == "rocky9" and d["hostname"] == "node07"
    assert d["disks"][0]["partitions"][0] == {"device": "/dev/vda1", "start": MiB, "size": MiB}
    assert [f["mountpoint"] for f in d["filesystems"]] == ["/", None]


def test_every_supported_filesystem_has_a_tool() -> None:
    assert set(MKFS_TOOLS.values()) == {"mke2fs", "mkfs.xfs", "mkfs.btrfs", "mkfs.fat", "mkswap"}


# -- _exclusive_usage ------------------------------------------------------------------------

def test_exclusive_usage_subtracts_nested_mountpoints() -> None:
    usage = {"/": 1000, "/var": 400, "/var/log": 100, "/var/lib": 50, "/usr": 300,
             "/home": 10}
    got = _exclusive_usage(usage, ["/", "/var", "/var/log", "/usr", "/boot"])
    # / loses only its outermost children (/var already holds /var/log).
    assert got == {"/": 300, "/var": 300, "/var/log": 100, "/usr": 300, "/boot": 0}
    assert sum(got.values()) == usage["/"]


def test_exclusive_usage_is_not_fooled_by_name_prefixes() -> None:
    usage = {"/": 100, "/srv": 30, "/srv2": 20}
    assert _exclusive_usage(usage, ["/", "/srv", "/srv2"]) == {"/": 50, "/srv": 30, "/srv2": 20}


def test_exclusive_usage_deeper_than_the_servers_map() -> None:
    # The server measures 3 levels; /var/lib/docker/volumes is counted in /var.
    usage = {"/": 100, "/var": 60, "/var/lib": 50, "/var/lib/docker": 40}
    got = _exclusive_usage(usage, ["/", "/var", "/var/lib/docker/volumes"])
    assert got == {"/": 40, "/var": 60, "/var/lib/docker/volumes": 0}


def test_exclusive_usage_never_negative() -> None:
    # Hard links counted in both places can make children add up to more.
    assert _exclusive_usage({"/": 10, "/a": 8, "/b": 8}, ["/", "/a", "/b"])["/"] == 0
    assert _exclusive_usage({}, ["/"]) == {"/": 0}
