"""Reading SystemImager disks-layout XML: the compat corpus and schema errors."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from agent.storage.model import (
    BootFlavor,
    Flag,
    InstallType,
    LabelType,
    PartType,
    RaidLevel,
)
from agent.storage.sixml import load_layout, parse_layout, to_xml
from agent.storage.units import LvmSize, Size, Unit
from sysclone.errors import ConfigError

DATA = Path(__file__).parent / "data" / "layouts"
COMPAT_FILES = ["disk-layout-simple.xml", "disk-layout-complex.xml",
                "disk-layout-lvm_over_raid.xml", "disk-layout-EFI.xml"]


def sizes(disk):
    return [(p.number, str(p.size), p.kind.value) for p in disk.partitions]


def test_simple(compat):
    lay = load_layout(compat / "disk-layout-simple.xml")
    (sda,) = lay.disks
    assert (sda.dev, sda.label, sda.unit) == ("/dev/sda", LabelType.MSDOS, Unit.MB)
    assert sizes(sda) == [(1, "500", "primary"), (2, "*", "extended"),
                          (5, "512", "logical"), (6, "*", "logical")]
    assert sda.partition(1).flags == (Flag.BOOT,)
    assert sda.partition(5).flags == (Flag.SWAP,)
    assert sda.partition(6).size == Size(None) and sda.partition(6).size.is_rest
    assert sda.partition(1).size.amount == Decimal(500)
    assert sda.extended is sda.partition(2)
    b = lay.bootloader
    assert (b.flavor, b.install_type, b.default_entry, b.timeout) == \
        (BootFlavor.GRUB2, InstallType.LEGACY, "0", 2)
    assert [t.dev for t in b.targets] == ["/dev/sda"]
    root = lay.mount("/")
    assert (root.line, root.real_dev, root.fs, root.options, root.dump, root.passno) == \
        (100, "/dev/sda6", "xfs", "defaults", 1, 2)
    assert [(e.real_dev, e.mountpoint, e.fs) for e in lay.fsinfo] == [
        ("/dev/sda6", "/", "xfs"), ("/dev/sda5", "swap", "swap"), ("/dev/sda1", "/boot", "ext4")]
    assert lay.raids == () and lay.volume_groups == ()
    assert lay.source.endswith("disk-layout-simple.xml")


def test_complex_keeps_file_order_and_numbers(compat):
    lay = load_layout(compat / "disk-layout-complex.xml")
    (sda,) = lay.disks
    assert sda.unit is Unit.MIB
    assert sizes(sda) == [(1, "500", "primary"), (3, "4096", "primary"), (4, "*", "extended"),
                          (7, "4096", "logical"), (5, "*", "logical"), (6, "2048", "logical"),
                          (2, "1024", "primary")]
    assert [p.number for p in sda.logicals] == [7, 5, 6]
    assert sda.partition(2).flags == (Flag.SWAP,)
    assert {e.mountpoint: e.real_dev for e in lay.fsinfo} == {
        "/": "/dev/sda5", "/var": "/dev/sda6", "swap": "/dev/sda2", "/boot": "/dev/sda1",
        "/home": "/dev/sda3", "/backup": "/dev/sda7"}


def test_lvm_over_raid(compat):
    lay = load_layout(compat / "disk-layout-lvm_over_raid.xml")
    sda, sdb = lay.disks
    assert (sda.dev, sdb.dev) == ("/dev/sda", "/dev/sdb")
    assert sda.unit is Unit.MB
    p1 = sda.partition(1)
    assert p1.name is None  # p_name="-" is SystemImager's "no name"
    assert p1.flags == (Flag.BOOT,) and str(p1.size) == "101"
    assert [(p.number, p.raid_dev) for p in sda.partitions] == \
        [(1, None), (2, "/dev/md1"), (3, "/dev/md0")]
    assert [(p.number, str(p.size), p.raid_dev) for p in sdb.partitions] == \
        [(1, "512", "/dev/md1"), (2, "*", "/dev/md0")]
    md0, md1 = lay.raids
    assert (md0.name, md0.level, md0.lvm_group) == ("/dev/md0", RaidLevel.RAID1, "systemvg")
    assert (md1.name, md1.level, md1.lvm_group) == ("/dev/md1", RaidLevel.RAID1, None)
    assert lay.raid_members("/dev/md0") == ("/dev/sda3", "/dev/sdb2")
    assert lay.raid_members("/dev/md1") == ("/dev/sda2", "/dev/sdb1")
    (vg,) = lay.volume_groups
    assert (vg.name, vg.max_log_vols, vg.max_phys_vols) == ("systemvg", 0, 0)
    assert vg.phys_extent_size == LvmSize(Decimal(4096), "K")
    assert vg.phys_extent_size.bytes == 4 * 1024 * 1024
    assert [(lv.name, str(lv.size)) for lv in vg.volumes] == [
        ("optlv", "2097152K"), ("rootlv", "2097152K"), ("tmplv", "2097152K"),
        ("usrlv", "5242880K"), ("varlv", "2097152K")]
    assert vg.volumes[3].size.bytes == 5 * 1024**3
    assert lay.physical_volumes("systemvg") == ("/dev/md0",)
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/sda", "/dev/sdb"]
    assert len(lay.fsinfo) == 13
    root = lay.mount("/")
    assert (root.real_dev, root.fs, root.options, root.passno) == \
        ("/dev/systemvg/rootlv", "reiserfs", "acl,user_xattr", 1)
    assert lay.find_logical_volume("/dev/mapper/systemvg-rootlv")[1].name == "rootlv"
    dvd = lay.mount("/media/dvd")
    assert (dvd.fs, dvd.format, dvd.formats) == ("subfs", False, False)
    assert lay.mount("/proc").real_dev == "proc"
    assert lay.mount("/dev/pts").options == "mode=0620,gid=5"


def test_efi(compat):
    lay = load_layout(compat / "disk-layout-EFI.xml")
    (sda,) = lay.disks
    assert (sda.label, sda.unit) == (LabelType.GPT, Unit.MIB)
    assert sizes(sda) == [(1, "512", "primary"), (2, "2048", "primary"),
                          (3, "2048", "primary"), (4, "*", "primary")]
    assert sda.partition(1).flags == (Flag.ESP,)
    assert lay.bootloader.install_type is InstallType.EFI
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/sda1"]
    esp = lay.mount("/boot/efi")
    assert (esp.real_dev, esp.fs, esp.options, esp.formats) == \
        ("/dev/sda1", "fat32", "umask=0077,shortname=winnt", True)
    assert lay.mount("/").real_dev == "/dev/sda4"


@pytest.mark.parametrize("name", COMPAT_FILES)
def test_round_trip(compat, name):
    lay = load_layout(compat / name)
    text = to_xml(lay)
    again = parse_layout(text, "written.xml")
    assert again == lay
    assert to_xml(again) == text


def test_every_attribute_round_trips():
    text = """<config>
      <disk dev="/dev/sda" label_type="gpt" unit_of_measurement="GiB">
        <part num="1" size="0.5" p_type="primary" id="ef00" p_name="EFI  System" flags="esp"/>
        <part num="2" size="1" p_type="primary" flags="raid" raid_dev="/dev/md0"/>
        <part num="3" size="*" p_type="primary" flags="lvm,boot" lvm_group="vg-data"/>
      </disk>
      <disk dev="/dev/sdb" label_type="none" unit_of_measurement="%">
        <part num="1" size="10" p_type="primary" flags="raid" raid_dev="/dev/md0"/>
      </disk>
      <raid>
        <raid_disk name="/dev/md0" raid_level="mirror" raid_devices="2" spare_devices="0"
          persistence="yes" rounding="64" chunk_size="64K" metadata="1.0"/>
        <raid_disk name="/dev/md1" raid_level="5" layout="left-symmetric"
          devices="/dev/sdc /dev/sdd missing"/>
      </raid>
      <lvm version="2">
        <lvm_group name="vg-data" max_log_vols="" max_phys_vols="4" phys_extent_size="">
          <lv name="home" size="10G" lv_options="--type linear"/>
          <lv name="rest" size="*"/>
        </lvm_group>
      </lvm>
      <bootloader flavor="systemd" install_type="efi" timeout="-1">
        <target dev="/dev/sda1" path="/EFI/BOOT"/>
      </bootloader>
      <fsinfo line="1" comment="# a comment line"/>
      <fsinfo line="2" real_dev="/dev/md0" mount_dev="LABEL=boot" mp="/boot/efi" fs="vfat"
        mkfs_opts="-F 32" options="umask=077" dump="0" pass="2" format="yes"
        comment="# trailing"/>
      <fsinfo line="3" real_dev="/dev/vg-data/home" mp="/" fs="ext4"/>
      <boel devstyle="udev"/>
    </config>"""
    lay = parse_layout(text, "all.xml")
    sda, sdb = lay.disks
    assert sda.partition(1).name == "EFI System" and sda.partition(1).part_id == "ef00"
    assert sda.partition(1).size.amount == Decimal("0.5")
    assert sda.partition(3).flags == (Flag.LVM, Flag.BOOT)
    assert (sdb.label, sdb.unit) == (LabelType.NONE, Unit.PERCENT)
    md0, md1 = lay.raids
    assert (md0.level, md0.persistence, md0.rounding, md0.metadata) == \
        (RaidLevel.RAID1, True, 64, "1.0")
    assert md1.devices == ("/dev/sdc", "/dev/sdd", "missing") and md1.level is RaidLevel.RAID5
    (vg,) = lay.volume_groups
    assert (vg.max_log_vols, vg.max_phys_vols, vg.phys_extent_size) == (None, 4, None)
    assert lay.lvm_version == 2 and vg.volumes[1].size.is_rest
    assert lay.bootloader.timeout == -1 and lay.bootloader.targets[0].path == "/EFI/BOOT"
    assert lay.fsinfo[0].is_comment
    assert lay.fsinfo[1].fstab_device == "LABEL=boot" and lay.fsinfo[1].format is True
    assert parse_layout(to_xml(lay), "again.xml") == lay


def test_percent_spellings_are_one_unit():
    for spelling in ("percent", "percentage", "%"):
        lay = parse_layout(f"""<config>
          <disk dev="/dev/sda" label_type="gpt" unit_of_measurement="{spelling}">
            <part num="1" size="100" p_type="primary"/></disk>
          <fsinfo real_dev="/dev/sda1" mp="/" fs="ext4" dump="0" pass="1"/></config>""")
        assert lay.disks[0].unit is Unit.PERCENT


def test_fstab_order_follows_line_numbers():
    lay = parse_layout("""<config>
      <disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">
        <part num="1" size="*" p_type="primary"/></disk>
      <fsinfo line="20" real_dev="proc" mp="/proc" fs="proc"/>
      <fsinfo real_dev="tmpfs" mp="/tmp" fs="tmpfs"/>
      <fsinfo line="10" real_dev="/dev/sda1" mp="/" fs="ext4"/>
    </config>""")
    assert [e.mountpoint for e in lay.fstab()] == ["/", "/proc", "/tmp"]


def test_schema_attributes_and_systemimagers_doctype_are_accepted():
    lay = parse_layout("""<?xml version="1.0" encoding="UTF-8"?>
    <!DOCTYPE config SYSTEM "disk-layout.dtd">
    <config xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
            xsi:noNamespaceSchemaLocation="disks-layout.xsd">
      <disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">
        <part num="1" size="*" p_type="primary"/></disk>
      <fsinfo real_dev="/dev/sda1" mp="/" fs="ext4"/>
    </config>""", "schema.xml")
    assert lay.disks[0].src_line == 5


@pytest.mark.parametrize(("text", "message"), [
    ('<?xml version="1.0"?>\n<!DOCTYPE config SYSTEM "http://evil/x.dtd">\n<config/>',
     "doctype.xml:2: a <!DOCTYPE config> declaration is not allowed in a disk layout"),
    ('<!DOCTYPE config PUBLIC "-//x//EN" "disk-layout.dtd">\n<config/>',
     "doctype.xml:1: a <!DOCTYPE config> declaration is not allowed"),
    ('<!DOCTYPE config SYSTEM "disk-layout.dtd" [\n<!ENTITY x SYSTEM "file:///etc/shadow">\n]>'
     '\n<config><fsinfo comment="&x;"/></config>',
     "doctype.xml:1: a <!DOCTYPE config> declaration is not allowed"),
    ('<!DOCTYPE config [\n<!ENTITY a "aaaaaaaaaa">\n<!ENTITY b "&a;&a;&a;&a;&a;">\n]>\n'
     '<config><fsinfo comment="&b;"/></config>',
     "doctype.xml:1: a <!DOCTYPE config> declaration is not allowed"),
    ('<config><fsinfo comment="&xxe;"/></config>',
     "doctype.xml:1: not well-formed XML: undefined entity"),
])
def test_doctype_and_entities_are_refused(text, message):
    with pytest.raises(ConfigError) as e:
        parse_layout(text, "doctype.xml")
    assert e.value.message.startswith(message), e.value.message


def test_reads_declared_encoding():
    lay = load_layout(DATA / "latin1-comment.xml")
    assert lay.fsinfo[0].comment == "# données"


GPT = 'dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB"'
PART = '<part num="1" size="*" p_type="primary"/>'
ROOT = '<fsinfo real_dev="/dev/sda1" mp="/" fs="ext4"/>'


def disk(*parts: str, attrs: str = GPT) -> str:
    return f"<disk {attrs}>" + "".join(parts or (PART,)) + "</disk>"


def cfg(*elements: str) -> str:
    """A whole document, one element per line from line 2."""
    return "<config>\n" + "\n".join(elements) + "\n</config>\n"


def part(**attrs: str) -> str:
    attrs = {"num": "1", "size": "*", "p_type": "primary", **attrs}
    return "<part " + " ".join(f'{k}="{v}"' for k, v in attrs.items() if v is not None) + "/>"


BAD = [
    ("<config><disk>", "bad.xml:1: not well-formed XML"),
    ("<layout/>", "bad.xml:1: root element is <layout>"),
    (cfg(disk(), "<disc/>", ROOT), "bad.xml:3: unknown element <disc> inside <config>"),
    (cfg(disk(), ROOT, '<fsinfo mountpoint="/"/>'),
     "bad.xml:4: <fsinfo> has unknown attribute 'mountpoint'"),
    (cfg(disk(part(bootable="yes")), ROOT),
     'bad.xml:2: <part num="1"> has unknown attribute \'bootable\''),
    (cfg(disk(part(num=None)), ROOT), "bad.xml:2: <part> needs attribute 'num'"),
    (cfg(disk(part(p_type="primery")), ROOT),
     "p_type='primery' is not one of primary, extended, logical"),
    (cfg(disk(part(size="12MB")), ROOT),
     "<part num=\"1\"> on /dev/sda: size='12MB' is not a number or '*'"),
    (cfg(disk(part(size="")), ROOT), "attribute 'size' must not be empty"),
    (cfg(disk(attrs='dev="/dev/sda" label_type="gpt" unit_of_measurement="mb"'), ROOT),
     "unit_of_measurement='mb' is not one of TB, TiB"),
    (cfg(disk(attrs='dev="/dev/sda" label_type="sun" unit_of_measurement="MB"'), ROOT),
     "label_type='sun' is not one of msdos, gpt, convert, none"),
    (cfg(disk(part(flags="boot,bootable")), ROOT), "flags='bootable' is not one of root, boot"),
    (cfg(disk(part(num="0")), ROOT), "num='0' must be at least 1"),
    (cfg(disk(part(num="one")), ROOT), "num='one' is not a whole number"),
    (cfg(disk(part(), part(size="2")), ROOT), "on /dev/sda: partition number 1 is used twice"),
    (cfg(disk(part(raid_dev="/dev/sdb1")), ROOT), "raid_dev='/dev/sdb1' is not an md device"),
    (cfg(disk(part(lvm_group="my vg")), ROOT), "lvm_group='my vg' is not a valid LVM name"),
    (cfg(disk(part(id="xyz")), ROOT), "id='xyz' is not a partition type"),
    (cfg(disk(attrs='dev="sda" label_type="gpt" unit_of_measurement="MiB"'), ROOT),
     "dev='sda' is not a device path"),
    (cfg(f"<disk {GPT}></disk>", ROOT), '<disk dev="/dev/sda"> needs at least one <part>'),
    (cfg(f"<disk {GPT}><part num='1' size='1' p_type='primary'>big</part></disk>", ROOT),
     "must not contain text"),
    (cfg(ROOT), "bad.xml:1: <config> has no <disk>"),
    (cfg(disk()), "<config> has no <fsinfo>"),
    (cfg(disk(), '<bootloader flavor="grub2" install_type="legacy"><target dev="/dev/sda"/>'
                 "</bootloader>",
         '<bootloader flavor="grub2" install_type="legacy"><target dev="/dev/sda"/>'
         "</bootloader>", ROOT),
     "bad.xml:4: a second <bootloader> section"),
    (cfg(disk(), '<bootloader flavor="lilo" install_type="legacy"><target dev="/dev/sda"/>'
                 "</bootloader>", ROOT),
     "flavor='lilo' is not one of systemd, grub, grub2, rEFInd, clover"),
    (cfg(disk(), '<bootloader flavor="grub2" install_type="legacy"></bootloader>', ROOT),
     "bad.xml:3: <bootloader> needs at least one <target>"),
    (cfg(disk(), '<raid><raid_disk name="/dev/md0" raid_level="raid3"/></raid>', ROOT),
     '<raid_disk name="/dev/md0"> attribute raid_level=\'raid3\' is not one of'),
    (cfg(disk(), '<raid><raid_disk name="/dev/md0" raid_level="1" spare_devices="-1"/></raid>',
         ROOT), "spare_devices='-1' must be at least 0"),
    (cfg(disk(), '<lvm version="3"><lvm_group name="vg" max_log_vols="0" max_phys_vols="0" '
                 'phys_extent_size="4M"><lv name="root" size="1G"/></lvm_group></lvm>', ROOT),
     "version='3' must be 1 or 2"),
    (cfg(disk(), '<lvm><lvm_group name="vg" max_log_vols="0" max_phys_vols="0" '
                 'phys_extent_size="4M"><lv name="root" size="10 GB"/></lvm_group></lvm>', ROOT),
     "<lv name=\"root\"> attribute size='10 GB' is not an LVM size"),
    (cfg(disk(), '<lvm><lvm_group name="vg" max_log_vols="0" max_phys_vols="0">'
                 '<lv name="root" size="1G"/></lvm_group></lvm>', ROOT),
     "<lvm_group name=\"vg\"> needs attribute 'phys_extent_size'"),
    (cfg(disk(), '<fsinfo line="0" real_dev="/dev/sda1" mp="/" fs="ext4"/>'),
     "line='0' must be at least 1"),
    (cfg(disk(), '<fsinfo real_dev="/dev/sda1" mp="/" fs="ext4" format="maybe"/>'),
     "format='maybe' must be yes or no"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_schema_errors_name_file_line_and_item(text, message):
    with pytest.raises(ConfigError) as err:
        parse_layout(text, "bad.xml")
    assert message in str(err.value)
    assert str(err.value).startswith("bad.xml:")
    assert "\n" not in err.value.message


def test_unknown_attribute_hint_lists_allowed():
    with pytest.raises(ConfigError) as err:
        parse_layout(cfg(disk(), '<fsinfo mountpoint="/"/>'), "x.xml")
    assert "mp" in err.value.hint and "real_dev" in err.value.hint


def test_load_layout_names_missing_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_layout(tmp_path / "nope.xml")
    assert "nope.xml: cannot read disk layout" in str(err.value)


def test_load_layout_error_names_the_path():
    with pytest.raises(ConfigError) as err:
        load_layout(DATA / "bad-unknown-element.xml")
    assert f"{DATA / 'bad-unknown-element.xml'}:9: unknown element <partition>" in str(err.value)


def test_equality_ignores_source_lines():
    a = parse_layout('<config><disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">'
                     '<part num="1" size="*" p_type="primary"/></disk>'
                     '<fsinfo real_dev="/dev/sda1" mp="/" fs="ext4"/></config>', "a.xml")
    b = parse_layout(to_xml(a), "b.xml")
    assert a == b and a.disks[0].src_line == 1 and b.disks[0].src_line != 1
    assert a.disks[0].partitions[0].kind is PartType.PRIMARY
