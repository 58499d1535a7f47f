"""The TOML form of a layout: the same model as the XML, both ways, with
line numbers in its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.storage import layoutfile
from agent.storage.model import DiskSelector, Flag, LabelType
from agent.storage.sixml import load_layout, parse_layout, to_xml
from agent.storage.tomlread import parse_toml
from agent.storage.tomlwrite import to_toml
from agent.storage.units import LvmSize
from agent.storage.validate import validate
from sysclone.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data"
SI = sorted((DATA / "si").glob("disks-layout-*.xml"))
TOML = sorted((DATA / "layouts").glob("*.toml"))


@pytest.mark.parametrize("path", SI, ids=lambda p: p.name)
def test_xml_to_toml_and_back(path: Path) -> None:
    lay = load_layout(path)
    text = to_toml(lay)
    back = parse_toml(text, "x.toml")
    assert back == lay
    assert parse_layout(to_xml(back), "y.xml") == lay


def test_compat_layouts_round_trip(compat: Path) -> None:
    for path in sorted(compat.glob("disk-layout-*.xml")):
        lay = load_layout(path)
        assert parse_toml(to_toml(lay), "x.toml") == lay, path.name


@pytest.mark.parametrize("path", TOML, ids=lambda p: p.name)
def test_toml_fixtures_are_valid_and_round_trip(path: Path) -> None:
    lay = layoutfile.load(path)
    validate(lay)
    assert parse_toml(to_toml(lay), "again.toml") == lay
    if not lay.uses_selectors:
        assert parse_layout(to_xml(lay), "again.xml") == lay


def test_what_the_toml_form_reads() -> None:
    lay = layoutfile.load(DATA / "layouts" / "luks-raid5-lvm.toml")
    sda = lay.disks[0]
    assert sda.select == DiskSelector(size=">=16GiB", bus="nvme", order=1)
    assert sda.src_line == 4 and sda.partitions[2].src_line == 21  # their headers
    assert sda.partitions[0].flags == (Flag.ESP,)
    assert [d.select for d in lay.disks[1:]] == [None, None]
    (md0,) = lay.raids
    assert (md0.level.value, md0.chunk_size, md0.src_line) == ("raid5", "512K", 52)
    (crypt,) = lay.crypts
    assert (crypt.name, crypt.device, crypt.lvm_group, crypt.options) == (
        "cryptsys", "/dev/md0", "sys", "discard")
    (vg,) = lay.volume_groups
    assert vg.phys_extent_size == LvmSize.parse("4M", allow_rest=False)
    assert [lv.name for lv in vg.volumes] == ["root", "var", "home"]
    assert lay.physical_volumes("sys") == ("/dev/mapper/cryptsys",)
    assert lay.mount("/home").fs_label == "home"
    assert lay.mount("/boot").label == "boot"


def test_sizes_as_numbers_or_strings() -> None:
    text = """
[[disk]]
dev = "/dev/sda"
label_type = "msdos"
unit_of_measurement = "GiB"
[[disk.part]]
num = 1
size = 0.5
p_type = "primary"
[[disk.part]]
num = 2
size = "1.25"
p_type = "primary"
[[disk.part]]
num = 3
size = "*"
p_type = "primary"
[[fsinfo]]
real_dev = "/dev/sda3"
mp = "/"
fs = "ext4"
"""
    lay = parse_toml(text, "sizes.toml")
    assert [str(p.size) for p in lay.disks[0].partitions] == ["0.5", "1.25", "*"]
    assert lay.disks[0].label is LabelType.MSDOS
    assert parse_toml(to_toml(lay), "again.toml") == lay


@pytest.mark.parametrize(("text", "message"), [
    ('[[disk]]\ndev = "/dev/sda"\n', "x.toml:1: [[disk]] needs key 'label_type'"),
    ('[[disk]]\ndev = "/dev/sda"\nlabel_type = "gpt"\nunit_of_measurement = "MiB"\n'
     '[[disk.part]]\nnum = 1\nsize = "*"\np_type = "primary"\ncolour = "red"\n',
     "x.toml:9: [[disk.part]] has unknown key 'colour'"),
    ('[[disk]]\ndev = "/dev/sda"\nlabel_type = "sun"\nunit_of_measurement = "MiB"\n'
     'part = []\n', "x.toml:3: [[disk]] dev=\"/dev/sda\" label_type = 'sun' is not one of"),
    ('[[disk]]\ndev = "/dev/sda"\nlabel_type = "gpt"\nunit_of_measurement = "MiB"\n'
     '[[disk.part]]\nnum = 1\nsize = "lots"\np_type = "primary"\n',
     "x.toml:7: [[disk.part]] num=1 on /dev/sda: size = 'lots' is not a number or '*'"),
    ('[[disk]]\ndev = "/dev/sda"\nlabel_type = "gpt"\nunit_of_measurement = "MiB"\n'
     '[[disk.part]]\nnum = 1\nsize = "*"\np_type = "primary"\nflags = "esp"\n',
     "x.toml:9: [[disk.part]] num=1 flags must be a list of strings"),
    ('lvm_version = 3\n', "x.toml:1: the layout lvm_version = 3 must be 1 or 2"),
    ('[[fsinfo]]\nmp = "/"\n', "x.toml: the layout has no [[disk]]"),
    ('a = 1\nb = \n', "x.toml:2: not valid TOML: Invalid value"),
    ('[[luks_dev]]\nname = "-bad"\nreal_dev = "/dev/sda1"\n',
     "x.toml:2: [[luks_dev]] name=\"-bad\" is not a device-mapper name"),
    ('[[raid_disk]]\nname = "/dev/sdz"\nraid_level = "1"\n',
     "x.toml:2: [[raid_disk]] name=\"/dev/sdz\" is not an md device"),
])
def test_schema_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_toml(text, "x.toml")
    assert e.value.message.startswith(message), e.value.message


def test_multiline_strings_do_not_confuse_the_line_numbers() -> None:
    text = '''comment = """
[[disk]]
"""
'''
    with pytest.raises(ConfigError, match=r"^x.toml:1: the layout has unknown key 'comment'"):
        parse_toml(text, "x.toml")


def test_a_rotational_selector_reads_and_writes_as_a_boolean() -> None:
    text = """[[disk]]
dev = "/dev/sda"
label_type = "gpt"
unit_of_measurement = "MiB"
select = { bus = "sata", rotational = true }
[[disk.part]]
num = 1
size = "*"
p_type = "primary"
[[fsinfo]]
line = 10
real_dev = "/dev/sda1"
mp = "/"
fs = "ext4"
"""
    lay = parse_toml(text, "x.toml")
    assert lay.disks[0].select == DiskSelector(bus="sata", rotational=True)
    assert "select = { bus = \"sata\", rotational = true }" in to_toml(lay)
    assert lay.disks[0].select.describe() == "bus=sata, rotational=1"
    with pytest.raises(ConfigError, match=r"rotational = 1 must be true or false"):
        parse_toml(text.replace("rotational = true", "rotational = 1"), "x.toml")


def test_xml_cannot_hold_selectors() -> None:
    lay = layoutfile.load(DATA / "layouts" / "luks-raid5-lvm.toml")
    with pytest.raises(ConfigError) as e:
        to_xml(lay)
    assert e.value.message == ("luks-raid5-lvm.toml: disk /dev/sda is chosen by selector "
                               "(size=>=16GiB, bus=nvme, order=1), which SystemImager XML "
                               "cannot express").replace("luks-raid5-lvm.toml",
                                                         str(DATA / "layouts" /
                                                             "luks-raid5-lvm.toml"))
    assert "keep this layout in TOML" in (e.value.hint or "")


def test_the_format_is_told_by_suffix_then_content() -> None:
    assert layoutfile.format_of("a.toml", "<config/>") == "toml"
    assert layoutfile.format_of("a.xml", "[[disk]]") == "systemimager-xml"
    assert layoutfile.format_of("web", "  <config/>") == "systemimager-xml"
    assert layoutfile.format_of("web", b"[[disk]]") == "toml"
    with pytest.raises(ConfigError, match="unknown format 'yaml'"):
        layoutfile.parse("", "x", "yaml")
