"""SystemImager's file formats on the project's own inputs (tests/unit/data/si).

The compatibility corpus (../shared/compat) exists only beside this
checkout; the tests here cover the same features on every clone with files
written for sysclone: disk layouts parsed, validated, written back, laid out
on disks, mapped onto other disk names and planned; the local.cfg template;
boot menus; cluster.xml and the network configuration.  Where the corpus
exists, the last tests check that each of these files uses every element,
attribute and variable its corpus counterpart uses, so the two stay
equivalent.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.configure.fstab import write_fstab
from agent.disks import Disk
from agent.params import (
    DlProtocol,
    HostPort,
    Source,
    parse_cmdline,
    parse_local_cfg,
    read_local_cfg,
)
from agent.plan import IMAGE_GROWTH
from agent.planner import make_plan
from agent.storage.geometry import plan_partitions
from agent.storage.mapping import map_disks
from agent.storage.model import BootFlavor, Flag, InstallType, LabelType, PartType, RaidLevel
from agent.storage.sixml import load_layout, parse_layout, to_xml
from agent.storage.units import GiB, LvmSize, MiB, Size, TiB, Unit
from agent.storage.validate import validate
from sysclone.errors import ConfigError

SI = Path(__file__).resolve().parent / "data" / "si"
LAYOUTS = ["disks-layout-msdos.xml", "disks-layout-numbers.xml", "disks-layout-raid-lvm.xml",
           "disks-layout-uefi.xml"]
# Ours -> the corpus file with the same features.
COUNTERPARTS = {
    "disks-layout-msdos.xml": "disk-layout-simple.xml",
    "disks-layout-numbers.xml": "disk-layout-complex.xml",
    "disks-layout-raid-lvm.xml": "disk-layout-lvm_over_raid.xml",
    "disks-layout-uefi.xml": "disk-layout-EFI.xml",
    "cluster.xml": "cluster.xml",
    "net-config.xml": "net-config.xml",
}


def sizes(disk: Any) -> list[tuple[int, str, str]]:
    return [(p.number, str(p.size), p.kind.value) for p in disk.partitions]


def mib(plan: Any) -> list[tuple[int, int, int]]:
    """(number, start MiB, size MiB); every value must be whole MiB."""
    out = []
    for p in plan:
        assert p.start % MiB == 0 and p.size % MiB == 0, p
        out.append((p.number, p.start // MiB, p.size // MiB))
    return out


def si_layout(name: str) -> dict[str, Any]:
    return {"format": "systemimager-xml", "name": name, "text": (SI / name).read_text()}


def plan(instructions: dict[str, Any], disks: list[Disk], fw: str = "bios") -> Any:
    return make_plan(instructions=instructions, server="10.0.0.2", hostname="cn042",
                     targets=disks, fw=fw, ram_bytes=4 * GiB, have_tool=lambda tool: True)


def planned(p: Any) -> list[tuple[str, int, int, str]]:
    return [(pp.device, pp.start // MiB, pp.size // MiB, pp.kind.value)
            for d in p.disks for pp in d.partitions]


# -- parsing ---------------------------------------------------------------------------------

def test_msdos_layout():
    lay = load_layout(SI / "disks-layout-msdos.xml")
    (sda,) = lay.disks
    assert (sda.dev, sda.label, sda.unit) == ("/dev/sda", LabelType.MSDOS, Unit.MB)
    assert sizes(sda) == [(1, "300", "primary"), (2, "*", "extended"),
                          (5, "1024", "logical"), (6, "*", "logical")]
    assert sda.partition(1).flags == (Flag.BOOT,)
    assert sda.partition(5).flags == (Flag.SWAP,)
    assert sda.partition(6).size == Size(None) and sda.partition(6).size.is_rest
    assert sda.partition(1).size.amount == Decimal(300)
    assert sda.extended is sda.partition(2)
    b = lay.bootloader
    assert (b.flavor, b.install_type, b.default_entry, b.timeout) == \
        (BootFlavor.GRUB2, InstallType.LEGACY, "1", 5)
    assert [t.dev for t in b.targets] == ["/dev/sda"]
    root = lay.mount("/")
    assert (root.line, root.real_dev, root.fs, root.options, root.dump, root.passno) == \
        (10, "/dev/sda6", "ext4", "errors=remount-ro", 1, 1)
    assert [(e.real_dev, e.mountpoint, e.fs) for e in lay.fsinfo] == [
        ("/dev/sda6", "/", "ext4"), ("/dev/sda5", "swap", "swap"), ("/dev/sda1", "/boot", "ext4")]
    assert lay.raids == () and lay.volume_groups == ()
    assert lay.source.endswith("disks-layout-msdos.xml")


def test_numbers_layout_keeps_file_order_and_numbers():
    lay = load_layout(SI / "disks-layout-numbers.xml")
    (sda,) = lay.disks
    assert sda.unit is Unit.MIB
    assert sizes(sda) == [(1, "256", "primary"), (3, "2048", "primary"), (4, "*", "extended"),
                          (6, "3072", "logical"), (5, "*", "logical"), (7, "1024", "logical"),
                          (2, "512", "primary")]
    assert [p.number for p in sda.logicals] == [6, 5, 7]
    assert sda.partition(2).flags == (Flag.SWAP,)
    assert {e.mountpoint: e.real_dev for e in lay.fsinfo} == {
        "/": "/dev/sda5", "/var": "/dev/sda6", "swap": "/dev/sda2", "/boot": "/dev/sda1",
        "/srv": "/dev/sda3", "/tmp": "/dev/sda7"}


def test_raid_lvm_layout():
    lay = load_layout(SI / "disks-layout-raid-lvm.xml")
    sda, sdb = lay.disks
    assert (sda.dev, sdb.dev) == ("/dev/sda", "/dev/sdb")
    assert sda.unit is Unit.MIB
    p1 = sda.partition(1)
    assert p1.name is None  # p_name="-" is SystemImager's "no name"
    assert p1.flags == (Flag.BOOT,) and str(p1.size) == "256"
    assert [(p.number, p.raid_dev) for p in sda.partitions] == \
        [(1, None), (2, "/dev/md1"), (3, "/dev/md0")]
    assert [(p.number, str(p.size), p.raid_dev) for p in sdb.partitions] == \
        [(1, "1024", "/dev/md1"), (2, "*", "/dev/md0")]
    md0, md1 = lay.raids
    assert (md0.name, md0.level, md0.lvm_group) == ("/dev/md0", RaidLevel.RAID1, "datavg")
    assert (md1.name, md1.level, md1.lvm_group) == ("/dev/md1", RaidLevel.RAID1, None)
    assert lay.raid_members("/dev/md0") == ("/dev/sda3", "/dev/sdb2")
    assert lay.raid_members("/dev/md1") == ("/dev/sda2", "/dev/sdb1")
    (vg,) = lay.volume_groups
    assert (vg.name, vg.max_log_vols, vg.max_phys_vols) == ("datavg", 0, 0)
    assert vg.phys_extent_size == LvmSize(Decimal(8192), "K")
    assert vg.phys_extent_size.bytes == 8 * 1024 * 1024
    assert [(lv.name, str(lv.size)) for lv in vg.volumes] == [
        ("rootlv", "4194304K"), ("homelv", "1048576K"), ("varlv", "3145728K")]
    assert vg.volumes[2].size.bytes == 3 * 1024**3
    assert lay.physical_volumes("datavg") == ("/dev/md0",)
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/sda", "/dev/sdb"]
    assert len(lay.fsinfo) == 10
    root = lay.mount("/")
    assert (root.real_dev, root.fs, root.options, root.passno) == \
        ("/dev/datavg/rootlv", "ext4", "acl,user_xattr", 1)
    assert lay.find_logical_volume("/dev/mapper/datavg-homelv")[1].name == "homelv"
    cdrom = lay.mount("/media/cdrom")
    assert (cdrom.fs, cdrom.format, cdrom.formats) == ("subfs", False, False)
    assert lay.mount("/proc").real_dev == "proc"
    assert lay.mount("/dev/pts").options == "mode=0600,gid=5"


def test_uefi_layout():
    lay = load_layout(SI / "disks-layout-uefi.xml")
    (sda,) = lay.disks
    assert (sda.label, sda.unit) == (LabelType.GPT, Unit.MIB)
    assert sizes(sda) == [(1, "256", "primary"), (2, "1024", "primary"),
                          (3, "4096", "primary"), (4, "*", "primary")]
    assert sda.partition(1).flags == (Flag.ESP,)
    assert lay.bootloader.install_type is InstallType.EFI
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/sda1"]
    esp = lay.mount("/boot/efi")
    assert (esp.real_dev, esp.fs, esp.options, esp.formats) == \
        ("/dev/sda1", "fat32", "umask=0077,shortname=mixed", True)
    assert lay.mount("/").real_dev == "/dev/sda4"


@pytest.mark.parametrize("name", LAYOUTS)
def test_round_trip(name):
    lay = load_layout(SI / name)
    text = to_xml(lay)
    again = parse_layout(text, "written.xml")
    assert again == lay
    assert to_xml(again) == text


@pytest.mark.parametrize("name", LAYOUTS)
def test_layouts_are_valid(name):
    validate(load_layout(SI / name))


# -- geometry --------------------------------------------------------------------------------

def test_msdos_on_20_gib():
    (sda,) = load_layout(SI / "disks-layout-msdos.xml").disks
    parts = plan_partitions(sda, 20 * GiB)
    # 300 MB = 286.1 MiB -> 287; 1024 MB = 976.6 MiB -> 977; each logical
    # partition follows 1 MiB for its boot record.
    assert mib(parts) == [(1, 1, 287), (2, 288, 20192), (5, 289, 977), (6, 1267, 19213)]
    assert [p.device for p in parts] == ["/dev/sda1", "/dev/sda2", "/dev/sda5", "/dev/sda6"]
    assert parts[-1].end == 20 * GiB  # msdos: up to the last MiB
    assert [p.kind for p in parts] == [PartType.PRIMARY, PartType.EXTENDED, PartType.LOGICAL,
                                       PartType.LOGICAL]
    assert parts[0].partition is sda.partition(1)


def test_numbers_lay_out_by_number():
    (sda,) = load_layout(SI / "disks-layout-numbers.xml").disks
    parts = plan_partitions(sda, 20 * GiB)
    assert mib(parts) == [(1, 1, 256), (2, 257, 512), (3, 769, 2048), (4, 2817, 17663),
                          (5, 2818, 13564), (6, 16383, 3072), (7, 19456, 1024)]
    ext = parts[3]
    assert all(ext.start < p.start and p.end <= ext.end for p in parts[4:])


def test_gpt_leaves_room_for_the_backup_header():
    (sda,) = load_layout(SI / "disks-layout-uefi.xml").disks
    parts = plan_partitions(sda, 20 * GiB)
    assert mib(parts) == [(1, 1, 256), (2, 257, 1024), (3, 1281, 4096), (4, 5377, 15102)]
    assert parts[-1].end == 20 * GiB - MiB
    parts = plan_partitions(sda, 20 * GiB + 16 * 1024 + 512)
    assert parts[-1].end == 20 * GiB


def test_msdos_addresses_2_tib_only():
    (sda,) = load_layout(SI / "disks-layout-msdos.xml").disks
    assert plan_partitions(sda, 3 * TiB)[-1].end == 2 * TiB
    assert plan_partitions(sda, 3 * TiB, sector_size=4096)[-1].end == 3 * TiB


def test_too_small_names_disk_need_and_size():
    (sda,) = load_layout(SI / "disks-layout-msdos.xml").disks
    with pytest.raises(ConfigError) as err:
        plan_partitions(sda, 1000 * MiB)
    # 1 MiB table + 287 + the extended partition's least: 1 + 977 + 1 + 1 MiB.
    message = err.value.message
    assert "disk /dev/sda is too small" in message
    assert f"it needs {1268 * MiB} bytes (1.2 GiB)" in message
    assert f"the disk has {1000 * MiB} bytes (1000.0 MiB)" in message


# -- mapping onto other disks ----------------------------------------------------------------

@pytest.mark.parametrize(("target", "root", "boot"), [
    ("/dev/vda", "/dev/vda6", "/dev/vda1"),
    ("/dev/nvme0n1", "/dev/nvme0n1p6", "/dev/nvme0n1p1"),
    ("/dev/mmcblk0", "/dev/mmcblk0p6", "/dev/mmcblk0p1"),
    ("/dev/loop3", "/dev/loop3p6", "/dev/loop3p1"),
])
def test_msdos_onto_other_disks(target, root, boot):
    lay = map_disks(load_layout(SI / "disks-layout-msdos.xml"), [target])
    assert lay.disks[0].dev == target
    assert lay.mount("/").real_dev == root
    assert lay.mount("/boot").real_dev == boot
    assert [t.dev for t in lay.bootloader.targets] == [target]
    validate(lay)
    assert [p.device for p in plan_partitions(lay.disks[0], 20 * GiB)][-1] == root


def test_uefi_target_partition_is_renamed():
    lay = map_disks(load_layout(SI / "disks-layout-uefi.xml"), ["nvme0n1"])
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/nvme0n1p1"]
    assert lay.mount("/boot/efi").real_dev == "/dev/nvme0n1p1"
    validate(lay)


def test_two_disks_with_raid_and_lvm():
    src = load_layout(SI / "disks-layout-raid-lvm.xml")
    lay = map_disks(src, ["/dev/nvme0n1", "/dev/nvme1n1", "/dev/sdc"])  # extra disk unused
    assert [d.dev for d in lay.disks] == ["/dev/nvme0n1", "/dev/nvme1n1"]
    assert lay.raid_members("/dev/md0") == ("/dev/nvme0n1p3", "/dev/nvme1n1p2")
    assert lay.raid_members("/dev/md1") == ("/dev/nvme0n1p2", "/dev/nvme1n1p1")
    assert lay.mount("/boot").real_dev == "/dev/nvme0n1p1"
    assert lay.mount("/").real_dev == "/dev/datavg/rootlv"  # not a disk path: kept
    assert lay.mount("/media/cdrom").real_dev == "/dev/cdrom"
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/nvme0n1", "/dev/nvme1n1"]
    validate(lay)
    assert lay.source == src.source


def test_same_names_give_the_same_layout():
    lay = load_layout(SI / "disks-layout-msdos.xml")
    assert map_disks(lay, ["/dev/sda", "/dev/sdb"]) is lay


def test_too_few_disks():
    lay = load_layout(SI / "disks-layout-raid-lvm.xml")
    with pytest.raises(ConfigError) as err:
        map_disks(lay, ["/dev/vda"])
    message = err.value.message
    assert "disks-layout-raid-lvm.xml: the layout needs 2 disk(s) (/dev/sda, /dev/sdb)" \
        in message
    assert "but 1 can be used on this machine (/dev/vda)" in message
    with pytest.raises(ConfigError, match=r"but 0 can be used on this machine \(none\)"):
        map_disks(lay, [])


# -- install plans ---------------------------------------------------------------------------

@pytest.mark.parametrize(("disk", "p"), [("vda", "/dev/vda"), ("nvme0n1", "/dev/nvme0n1p")])
def test_msdos_plan(disk: str, p: str) -> None:
    pl = plan({"image": {"name": "deb12", "usage": {"/": 3 * GiB, "/boot": 100 * MiB}},
               "layout": si_layout("disks-layout-msdos.xml")}, [Disk(disk, 20 * GiB)])
    assert pl.layout_name == "disks-layout-msdos.xml"
    assert pl.disks[0].label == "msdos"
    assert planned(pl) == [(f"{p}1", 1, 287, "primary"), (f"{p}2", 288, 20192, "extended"),
                           (f"{p}5", 289, 977, "logical"), (f"{p}6", 1267, 19213, "logical")]
    assert [(f.device, f.fs, f.mountpoint) for f in pl.filesystems] == [
        (f"{p}6", "ext4", "/"), (f"{p}5", "swap", None), (f"{p}1", "ext4", "/boot")]
    assert {f.mountpoint: f.needs for f in pl.filesystems} == {
        "/": int((3 * GiB - 100 * MiB) * IMAGE_GROWTH), "/boot": int(100 * MiB * IMAGE_GROWTH),
        None: 0}
    assert [f.mountpoint for f in pl.mounts] == ["/", "/boot"]
    assert pl.boot_disks == (f"/dev/{disk}",)


def test_numbers_plan_numbers_logical_partitions_by_number() -> None:
    usage = {"/": 3 * GiB, "/var": 1 * GiB, "/boot": 100 * MiB, "/srv": 20 * MiB,
             "/var/log": 300 * MiB}
    pl = plan({"image": {"name": "deb12", "usage": usage},
               "layout": si_layout("disks-layout-numbers.xml")}, [Disk("nvme0n1", 20 * GiB)])
    # The file lists 6 before 5: on disk 5 must still come first.
    assert planned(pl) == [
        ("/dev/nvme0n1p1", 1, 256, "primary"), ("/dev/nvme0n1p2", 257, 512, "primary"),
        ("/dev/nvme0n1p3", 769, 2048, "primary"), ("/dev/nvme0n1p4", 2817, 17663, "extended"),
        ("/dev/nvme0n1p5", 2818, 13564, "logical"), ("/dev/nvme0n1p6", 16383, 3072, "logical"),
        ("/dev/nvme0n1p7", 19456, 1024, "logical")]
    by_mp = {f.mountpoint: f for f in pl.filesystems}
    assert by_mp["/"].device == "/dev/nvme0n1p5"
    assert by_mp["/var"].device == "/dev/nvme0n1p6"
    assert by_mp["/tmp"].needs == 0  # not in the image's usage: nothing lands there
    assert by_mp["/"].needs == int((3 * GiB - 1 * GiB - 100 * MiB - 20 * MiB) * IMAGE_GROWTH)
    assert by_mp["/var"].needs == int(1 * GiB * IMAGE_GROWTH)  # /var/log is inside it
    assert [f.mountpoint for f in pl.mounts] == ["/", "/var", "/boot", "/srv", "/tmp"]


def test_uefi_plan() -> None:
    pl = plan({"image": {"name": "deb12"}, "layout": si_layout("disks-layout-uefi.xml")},
              [Disk("nvme0n1", 20 * GiB)], fw="uefi")
    assert pl.disks[0].label == "gpt"
    assert [(f.device, f.fs, f.mountpoint) for f in pl.filesystems] == [
        ("/dev/nvme0n1p4", "ext4", "/"), ("/dev/nvme0n1p3", "swap", None),
        ("/dev/nvme0n1p2", "ext4", "/boot"), ("/dev/nvme0n1p1", "fat32", "/boot/efi")]
    assert pl.firmware == "uefi"
    assert pl.boot_disks == ("/dev/nvme0n1p1",)
    assert pl.esp_mountpoint == "/boot/efi"
    assert pl.notes == ()
    assert [f.mountpoint for f in pl.mounts] == ["/", "/boot", "/boot/efi"]
    text = pl.describe()
    assert "bootloader: UEFI on /dev/nvme0n1p1" in text
    assert "/dev/nvme0n1p1   fat32  /boot/efi" in text


def test_uefi_layout_on_a_bios_machine_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^layout disks-layout-uefi.xml is for UEFI machines"):
        plan({"image": {"name": "deb12"}, "layout": si_layout("disks-layout-uefi.xml")},
             [Disk("nvme0n1", 20 * GiB)], fw="bios")


def test_raid_and_lvm_plan() -> None:
    pl = plan({"image": {"name": "deb12"}, "layout": si_layout("disks-layout-raid-lvm.xml")},
              [Disk("vda", 20 * GiB), Disk("vdb", 20 * GiB)])
    assert [a.name for a in pl.arrays] == ["/dev/md0", "/dev/md1"]
    assert [g.name for g in pl.groups] == ["datavg"]
    # Mount-only and removable-media lines are not created.
    assert [f.mountpoint for f in pl.filesystems] == ["/", "/boot", "/home", "/var", None]


def test_disk_too_small_for_the_layout() -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": {"name": "deb12"}, "layout": si_layout("disks-layout-numbers.xml")},
             [Disk("vda", 512 * MiB)])
    # Scaled down as far as it goes: the xfs filesystems cannot go below 300 MB.
    assert e.value.message.startswith("disk /dev/vda is too small for its partitions "
                                      "even scaled down (")
    assert "partition 5 at least 287 MiB, partition 6 at least 287 MiB" in e.value.message
    assert f"the disk has {512 * MiB} bytes (512.0 MiB)" in e.value.message


def test_image_too_big_for_one_mountpoint() -> None:
    with pytest.raises(ConfigError) as e:
        plan({"image": {"name": "deb12", "usage": {"/": 6 * GiB, "/var": 3 * GiB}},
              "layout": si_layout("disks-layout-numbers.xml")}, [Disk("nvme0n1", 20 * GiB)])
    assert e.value.message.startswith("the image does not fit: /var needs 3,164 MiB of image "
                                      "data but /dev/nvme0n1p6 (3,072 MiB xfs) holds about ")
    assert "/var" in (e.value.hint or "")


def test_fstab_of_a_uefi_plan(tmp_path: Path) -> None:
    pl = plan({"image": {"name": "deb12"}, "layout": si_layout("disks-layout-uefi.xml")},
              [Disk("nvme0n1", 20 * GiB)], fw="uefi")
    root = tmp_path / "sysroot"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text("UUID=0000-1111 / ext4 defaults 0 1\n"
                                    "tmpfs /run/shm tmpfs defaults 0 0\n")
    assert write_fstab(pl.filesystems, root) == ["/etc/fstab"]
    text = (root / "etc/fstab").read_text()
    u = {f.mountpoint: f.uuid for f in pl.filesystems}
    for line in (f"UUID={u['/']}\t/\text4\tdefaults\t1\t1",
                 f"UUID={u[None]}\tnone\tswap\tdefaults\t0\t0",
                 f"UUID={u['/boot']}\t/boot\text4\tdefaults\t1\t2",
                 f"UUID={u['/boot/efi']}\t/boot/efi\tvfat\tumask=0077,shortname=mixed\t0\t1"):
        assert line in text.splitlines()
    assert "tmpfs /run/shm tmpfs defaults 0 0" in text  # kept from the image
    assert "0000-1111" not in text


# -- local.cfg, boot menus -------------------------------------------------------------------

def values(layer: Any) -> dict[str, Any]:
    return {name: layer.value(name) for name in layer.settings}


def test_local_cfg_template_is_all_comments():
    layer = read_local_cfg(SI / "local.cfg")
    assert values(layer) == {}
    assert layer.warnings == ()
    assert layer.source is Source.LOCAL_CFG_INITRD


def uncommented(path: Path) -> str:
    """The template with every "#VARIABLE=value" line switched on."""
    lines = []
    for line in path.read_text().splitlines():
        m = re.fullmatch(r"#([A-Z_]+=\S+)( \(.*\))?", line)
        lines.append(m.group(1) if m else line)
    return "\n".join(lines)


def test_local_cfg_template_uncommented_reads_every_documented_variable():
    layer = parse_local_cfg(uncommented(SI / "local.cfg"), name="uncommented template")
    ip = ipaddress.ip_address
    assert values(layer) == {
        "si.hostname": "cn042",
        "si.domainname": "hpc.lab.example",
        "si.image-server": HostPort("10.20.0.2"),
        "si.script-name": "compute",
        "si.image-name": "debian12-hpc",
        "si.ether-sleep": 20,
        "si.log-server": "10.20.0.2",
        "si.log-server-port": 10514,
        "si.tmpfs-staging": False,
        "si.install-iface": "eth1",
        "si.ip-address": ip("10.20.0.42"),
        "si.netmask": 16,
        "si.network-address": ip("10.20.0.0"),
        "si.broadcast": ip("10.20.255.255"),
        "si.gateway": ip("10.20.0.1"),
        "si.gateway-iface": "eth1",
        "si.flamethrower-directory-portbase": 9100,
        "si.dl-protocol": DlProtocol.TORRENT,  # BITTORRENT=y
        "si.monitor-server": "10.20.0.2",
        "si.monitor-console": True,
    }
    # The BitTorrent tuning variables are no install parameters of sysclone.
    unknown = sorted(re.search(r"unknown parameter (\w+)", w).group(1)  # type: ignore[union-attr]
                     for w in layer.warnings)
    assert unknown == ["BITTORRENT_POLLING_TIME", "BITTORRENT_SEED_WAIT",
                       "BITTORRENT_STAGING", "BITTORRENT_UPLOAD_MIN"]


def append_line(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.strip().upper().startswith("APPEND "):
            return line.strip()[len("APPEND "):]
    raise AssertionError(f"no APPEND line in {path}")


@pytest.mark.parametrize("name", ["pxelinux.cfg", "syslinux.cfg"])
def test_boot_menu_append_line_has_no_install_parameters(name):
    layer = parse_cmdline(append_line(SI / name))
    assert dict(layer.settings) == {}
    assert layer.warnings == ()


def test_append_line_with_the_manuals_parameters():
    # The 4.3 manual's monitoring and SSH examples, appended to the menu's line.
    append = (append_line(SI / "pxelinux.cfg")
              + " MONITOR_SERVER=10.20.0.2 MONITOR_CONSOLE=yes SKIP_LOCAL_CFG=y SSH=y"
              + " console=ttyS0,115200n8 tmpfs_size=800M")
    layer = parse_cmdline(append)
    assert values(layer) == {
        "si.monitor-server": "10.20.0.2",
        "si.monitor-console": True,
        "si.skip-local-cfg": True,
        "si.ssh-client": True,
    }
    assert len(layer.warnings) == 4  # each old name is deprecated on the command line


# -- cluster.xml and the installed system's network configuration ---------------------------

def test_cluster_xml():
    """The topology file: read by no code yet (it comes with the server-side
    lookup by group); its structure is what si_clusterconfig writes."""
    root = ET.parse(SI / "cluster.xml").getroot()
    assert root.tag == "xml"
    assert (root.findtext("master"), root.findtext("name"), root.findtext("override")) == \
        ("imgsrv", "everyone", "site-wide")
    groups = {g.findtext("name"): g for g in root.findall("group")}
    assert list(groups) == ["compute", "gpu", "login"]
    assert [o.text for o in groups["compute"].findall("override")] == \
        ["compute-tuning", "debian12-hpc"]
    assert groups["gpu"].findtext("priority") == "10"
    assert groups["gpu"].findtext("node") == "cn120-cn128,gpu01-gpu04"
    assert groups["gpu"].findtext("domain") == "hpc.lab.example"
    assert groups["login"].find("priority") is None


def test_net_config_xml():
    """The network configuration for installed clients (si.network-config;
    read by agent.configure.netxml, test_configure_netxml.py): interfaces,
    aliases, a bond."""
    root = ET.parse(SI / "net-config.xml").getroot()
    by_dev = {i.get("dev"): i for i in root.findall("if")}
    assert list(by_dev) == ["enp1s0", "enp2s0", "enp3s0", "ib0", "ib1", "ib2", "bond0"]
    dns = by_dev["enp1s0"].find("primary/dns")
    assert dns is not None and dns.get("servers") == "10.1.0.53,10.1.0.54"
    assert [a.get("id") for a in by_dev["enp1s0"].findall("alias")] == ["1", "2"]
    assert [s.get("name") for s in by_dev["bond0"].findall("slave")] == ["ib1", "ib2"]
    assert {i.find("primary").get("master") for i in (by_dev["ib1"], by_dev["ib2"])} == \
        {"bond0"}


# -- equivalence with the corpus, where it exists --------------------------------------------

def vocabulary(path: Path) -> set[str]:
    """Every element and element@attribute of an XML file."""
    out = set()
    for el in ET.parse(path).iter():
        out.add(el.tag)
        out.update(f"{el.tag}@{a}" for a in el.attrib)
    return out


def documented_variables(path: Path) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#([A-Z_]+)=", path.read_text(), re.M)}


def test_corpus_counterparts_exist():
    assert set(COUNTERPARTS) <= {p.name for p in SI.iterdir()}


@pytest.mark.parametrize("ours", sorted(COUNTERPARTS))
def test_fixture_uses_everything_its_corpus_file_uses(compat: Path, ours: str) -> None:
    """Extra check beside this checkout: ours covers the corpus file's
    features, so the tests above stand in for the corpus on a bare clone.
    Commented-out elements of the corpus (cluster.xml's ip-range, domain)
    are features too."""
    theirs = compat / COUNTERPARTS[ours]
    want = vocabulary(theirs)
    if ours == "cluster.xml":
        want |= {"ip-range", "domain"}
    assert want - vocabulary(SI / ours) == set()


def test_local_cfg_documents_every_corpus_variable(compat: Path) -> None:
    assert documented_variables(compat / "local.cfg") <= documented_variables(SI / "local.cfg")
