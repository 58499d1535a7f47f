"""Semantic checks: each rule with a small bad layout, message naming the
file, the line and the offending item."""

from __future__ import annotations

import pytest

from agent.storage.sixml import load_layout, parse_layout
from agent.storage.validate import check, validate
from sysclone.errors import ConfigError

COMPAT_FILES = ["disk-layout-simple.xml", "disk-layout-complex.xml",
                "disk-layout-lvm_over_raid.xml", "disk-layout-EFI.xml"]

MSDOS = 'dev="/dev/sda" label_type="msdos" unit_of_measurement="MiB"'
GPT = 'dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB"'


def part(num: int, size: str = "100", p_type: str = "primary", **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<part num="{num}" size="{size}" p_type="{p_type}"{extra}/>'


def disk(attrs: str, *parts: str) -> str:
    return f"<disk {attrs}>\n" + "\n".join(parts) + "\n</disk>"


def fs(dev: str, mp: str, fstype: str = "ext4", **attrs: str) -> str:
    extra = "".join(f' {k}="{v}"' for k, v in attrs.items())
    return f'<fsinfo real_dev="{dev}" mp="{mp}" fs="{fstype}"{extra}/>'


def cfg(*elements: str) -> str:
    """Line 1 is <config>; elements follow, split on their own newlines."""
    return "<config>\n" + "\n".join(elements) + "\n</config>\n"


ROOT1 = fs("/dev/sda1", "/")
LEGACY = '<bootloader flavor="grub2" install_type="legacy"><target dev="/dev/sda"/></bootloader>'
EFI = '<bootloader flavor="grub2" install_type="efi"><target dev="/dev/sda1"/></bootloader>'
VG = ('<lvm><lvm_group name="vg0" max_log_vols="0" max_phys_vols="0" phys_extent_size="4M">'
      '{lvs}</lvm_group></lvm>')


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate(parse_layout(text, "bad-layout.xml"))
    message = str(err.value)
    assert message.startswith("bad-layout.xml"), message
    assert "\n" not in err.value.message
    return message


CASES = [
    # -- partition tables --
    ("gpt-logical", cfg(disk(GPT, part(1, "*"), part(5, "10", "logical")), ROOT1),
     "bad-layout.xml:4:", '<part num="5"> of /dev/sda is logical: gpt has no extended'),
    ("gpt-too-many", cfg(disk(GPT, part(1, "*"), part(129)), ROOT1),
     "bad-layout.xml:4:", '<part num="129"> of /dev/sda: gpt partitions are numbered 1-128'),
    ("msdos-primary-5", cfg(disk(MSDOS, part(1, "*"), part(5)), ROOT1),
     "bad-layout.xml:4:", "a primary partition on msdos must be numbered 1-4"),
    ("msdos-two-extended",
     cfg(disk(MSDOS, part(1, "*", "extended"), part(2, "10", "extended"), part(5, "*", "logical")),
         fs("/dev/sda5", "/")),
     "bad-layout.xml:4:", '<part num="2"> of /dev/sda is a second extended partition'),
    ("logical-below-5",
     cfg(disk(MSDOS, part(1, "*", "extended"), part(4, "10", "logical")), fs("/dev/sda4", "/")),
     "bad-layout.xml:4:", '<part num="4"> of /dev/sda: logical partitions are numbered from 5'),
    ("logical-without-extended", cfg(disk(MSDOS, part(1, "*"), part(5, "10", "logical")), ROOT1),
     "bad-layout.xml:4:", "is logical but /dev/sda has no extended partition"),
    ("logical-gap",
     cfg(disk(MSDOS, part(1, "*", "extended"), part(5, "10", "logical"), part(7, "*", "logical")),
         fs("/dev/sda7", "/")),
     "bad-layout.xml:4:", "logical partitions of /dev/sda are numbered 5, 7; they must be 5, 6"),
    ("two-rest", cfg(disk(GPT, part(1, "*"), part(2, "*")), ROOT1),
     "bad-layout.xml:4:", '<part num="2"> of /dev/sda: a second size="*" on /dev/sda'),
    ("two-rest-logical",
     cfg(disk(MSDOS, part(1, "*", "extended"), part(5, "*", "logical"), part(6, "*", "logical")),
         fs("/dev/sda5", "/")),
     "bad-layout.xml:5:", 'a second size="*" inside the extended partition of /dev/sda'),
    ("percent-over-100",
     cfg(disk('dev="/dev/sda" label_type="gpt" unit_of_measurement="%"', part(1, "120")), ROOT1),
     "bad-layout.xml:3:", '<part num="1"> of /dev/sda is 120% of the disk'),
    ("percent-sum",
     cfg(disk('dev="/dev/sda" label_type="gpt" unit_of_measurement="percent"', part(1, "60"),
              part(2, "50")), ROOT1),
     "bad-layout.xml:3:", "partitions on /dev/sda add up to 110%, over 100%"),
    ("size-zero", cfg(disk(GPT, part(1, "0")), ROOT1),
     "bad-layout.xml:3:", '<part num="1"> of /dev/sda has size 0'),
    ("extended-too-small",
     cfg(disk(MSDOS, part(1, "100", "extended"), part(5, "80", "logical"),
              part(6, "80", "logical")), fs("/dev/sda5", "/")),
     "bad-layout.xml:3:", "is 100 MiB but its logical partitions add up to 160 MiB"),
    ("extended-with-flags",
     cfg(disk(MSDOS, part(1, "*", "extended", flags="boot"), part(5, "*", "logical")),
         fs("/dev/sda5", "/")),
     "bad-layout.xml:3:", '<part num="1"> of /dev/sda is the extended partition'),
    ("name-on-msdos", cfg(disk(MSDOS, part(1, "*", p_name="root")), ROOT1),
     "bad-layout.xml:3:", "p_name 'root' needs a gpt table"),
    ("gpt-id-on-msdos", cfg(disk(MSDOS, part(1, "*", id="8300")), ROOT1),
     "bad-layout.xml:3:", "id '8300' is a gpt type"),
    ("msdos-id-on-gpt", cfg(disk(GPT, part(1, "*", id="83")), ROOT1),
     "bad-layout.xml:3:", "id '83' is an msdos type"),
    ("bios-grub-on-msdos", cfg(disk(MSDOS, part(1, "1", flags="bios_grub"), part(2, "*")),
                               fs("/dev/sda2", "/")),
     "bad-layout.xml:3:", "bios_grub is for gpt disks"),
    ("nfs-disk", cfg(disk('dev="nas:/export" label_type="none" unit_of_measurement="MiB"',
                          part(1, "*")), fs("/dev/sda1", "/", format="no")),
     "bad-layout.xml:2:", '<disk dev="nas:/export"> is not a local disk'),
    ("disk-twice", cfg(disk(GPT, part(1, "*")), disk(GPT, part(1, "*")), ROOT1),
     "bad-layout.xml:5:", '<disk dev="/dev/sda"> is listed twice'),
    # -- RAID --
    ("raid-undefined", cfg(disk(GPT, part(1, "*", raid_dev="/dev/md3")), fs("/dev/md3", "/")),
     "bad-layout.xml:3:", '<part num="1"> of /dev/sda: raid_dev /dev/md3 has no <raid_disk'),
    ("raid-one-member",
     cfg(disk(GPT, part(1, "*", raid_dev="/dev/md0")),
         '<raid><raid_disk name="/dev/md0" raid_level="1"/></raid>', fs("/dev/md0", "/")),
     "bad-layout.xml:5:", '<raid_disk name="/dev/md0">: raid1 needs at least 2 active devices, '
                          "it has 1"),
    ("raid5-two",
     cfg(disk(GPT, part(1, "10", raid_dev="/dev/md0"), part(2, "10", raid_dev="/dev/md0")),
         '<raid><raid_disk name="/dev/md0" raid_level="raid5"/></raid>', fs("/dev/md0", "/")),
     "bad-layout.xml:6:", "raid5 needs at least 3 active devices, it has 2"),
    ("raid-count-mismatch",
     cfg(disk(GPT, part(1, "10", raid_dev="/dev/md0"), part(2, "10", raid_dev="/dev/md0")),
         '<raid><raid_disk name="/dev/md0" raid_level="1" raid_devices="2" spare_devices="1"/>'
         "</raid>", fs("/dev/md0", "/")),
     "bad-layout.xml:6:", "has 2 member(s) (/dev/sda1 /dev/sda2) but raid_devices + "
                          "spare_devices = 3"),
    ("raid-no-members",
     cfg(disk(GPT, part(1, "*")), '<raid><raid_disk name="/dev/md0" raid_level="1"/></raid>',
         ROOT1),
     "bad-layout.xml:5:", '<raid_disk name="/dev/md0"> has no members'),
    ("raid-unknown-member",
     cfg(disk(GPT, part(1, "*")),
         '<raid><raid_disk name="/dev/md0" raid_level="1" devices="/dev/sda1 /dev/sda9"/></raid>',
         fs("/dev/md0", "/")),
     "bad-layout.xml:5:", "member /dev/sda9 is not a partition of this layout"),
    ("raid-whole-layout-disk",
     cfg(disk(GPT, part(1, "*")),
         '<raid><raid_disk name="/dev/md0" raid_level="1" devices="/dev/sda missing"/></raid>',
         fs("/dev/md0", "/")),
     "bad-layout.xml:5:", "member /dev/sda is a disk whose partitions this layout lists"),
    ("raid-rounding-not-raid1",
     cfg(disk(GPT, part(1, "10", raid_dev="/dev/md0"), part(2, "10", raid_dev="/dev/md0")),
         '<raid><raid_disk name="/dev/md0" raid_level="0" rounding="64"/></raid>',
         fs("/dev/md0", "/")),
     "bad-layout.xml:6:", "rounding applies to raid1 only"),
    ("member-also-formatted",
     cfg(disk(GPT, part(1, "10", raid_dev="/dev/md0"), part(2, "*", raid_dev="/dev/md0")),
         '<raid><raid_disk name="/dev/md0" raid_level="1"/></raid>', fs("/dev/md0", "/"),
         fs("/dev/sda1", "/boot")),
     "bad-layout.xml:8:", "/dev/sda1 is used twice: a member of /dev/md0 and formatted as ext4"),
    # -- LVM --
    ("vg-undefined", cfg(disk(GPT, part(1, "*", flags="lvm", lvm_group="vg9")),
                         fs("/dev/vg9/root", "/")),
     "bad-layout.xml:3:", "lvm_group 'vg9' has no <lvm_group name=\"vg9\">"),
    ("pv-without-lvm-flag",
     cfg(disk(GPT, part(1, "*", lvm_group="vg0")), VG.format(lvs='<lv name="root" size="*"/>'),
         fs("/dev/vg0/root", "/")),
     "bad-layout.xml:3:", "is in lvm_group 'vg0' but lacks the lvm flag"),
    ("vg-without-pv",
     cfg(disk(GPT, part(1, "*")), VG.format(lvs='<lv name="data" size="1G"/>'), ROOT1),
     "bad-layout.xml:5:", '<lvm_group name="vg0"> has no physical volumes'),
    ("lv-rest-not-last",
     cfg(disk(GPT, part(1, "*", flags="lvm", lvm_group="vg0")),
         VG.format(lvs='<lv name="root" size="*"/>\n<lv name="home" size="1G"/>'),
         fs("/dev/vg0/root", "/")),
     "bad-layout.xml:5:", '<lv name="root"> in vg0: size="*" takes all the free space'),
    ("lv-twice",
     cfg(disk(GPT, part(1, "*", flags="lvm", lvm_group="vg0")),
         VG.format(lvs='<lv name="root" size="1G"/>\n<lv name="root" size="1G"/>'),
         fs("/dev/vg0/root", "/")),
     "bad-layout.xml:6:", '<lv name="root"> in vg0 is defined twice'),
    ("pe-not-power-of-two",
     cfg(disk(GPT, part(1, "*", flags="lvm", lvm_group="vg0")),
         VG.format(lvs='<lv name="root" size="1G"/>').replace('"4M"', '"3M"'),
         fs("/dev/vg0/root", "/")),
     "bad-layout.xml:5:", "phys_extent_size 3M is not a power of two"),
    # -- fstab --
    ("unknown-partition", cfg(disk(GPT, part(1, "*")), ROOT1, fs("/dev/sda9", "/data")),
     "bad-layout.xml:6:", "/dev/sda9 is not a partition, md array, LUKS volume or logical "
                          "volume of this layout"),
    ("unknown-lv", cfg(disk(GPT, part(1, "*")), ROOT1, fs("/dev/vg0/data", "/data")),
     "bad-layout.xml:6:", "/dev/vg0/data is not a partition, md array, LUKS volume"),
    ("format-extended",
     cfg(disk(MSDOS, part(1, "*", "extended"), part(5, "*", "logical")), fs("/dev/sda5", "/"),
         fs("/dev/sda1", "/data")),
     "bad-layout.xml:7:", "/dev/sda1 is the extended partition"),
    ("formatted-twice",
     cfg(disk(GPT, part(1, "*")), ROOT1, fs("/dev/sda1", "/srv", "xfs")),
     "bad-layout.xml:6:", "/dev/sda1 is used twice: formatted as ext4"),
    ("mounted-twice",
     cfg(disk(GPT, part(1, "10"), part(2, "*")), ROOT1, fs("/dev/sda2", "/", "xfs")),
     "bad-layout.xml:7:", "/ is mounted twice"),
    ("no-root", cfg(disk(GPT, part(1, "*")), fs("/dev/sda1", "/srv")),
     "bad-layout.xml:", 'no <fsinfo> mounts /'),
    ("swap-on-path", cfg(disk(GPT, part(1, "10"), part(2, "*")), fs("/dev/sda1", "/swap", "swap"),
                         fs("/dev/sda2", "/")),
     "bad-layout.xml:6:", "swap space mounted on /swap"),
    ("mp-swap-not-swap-fs",
     cfg(disk(GPT, part(1, "10"), part(2, "*")), fs("/dev/sda1", "swap", "ext4"),
         fs("/dev/sda2", "/")),
     "bad-layout.xml:6:", 'mp="swap" but fs="ext4"'),
    ("unknown-fs", cfg(disk(GPT, part(1, "*")), fs("/dev/sda1", "/", "ext5")),
     "bad-layout.xml:5:", "unknown filesystem 'ext5'"),
    ("format-pseudo-fs", cfg(disk(GPT, part(1, "*")), ROOT1,
                             fs("proc", "/proc", "proc", format="yes")),
     "bad-layout.xml:6:", "proc cannot be formatted"),
    ("relative-mp", cfg(disk(GPT, part(1, "10"), part(2, "*")), ROOT1, fs("/dev/sda2", "srv")),
     "bad-layout.xml:7:", "mount point 'srv' is not an absolute path"),
    ("vfat-root", cfg(disk(GPT, part(1, "*")), fs("/dev/sda1", "/", "vfat")),
     "bad-layout.xml:5:", "<fsinfo>: / cannot be vfat"),
    ("fsinfo-incomplete", cfg(disk(GPT, part(1, "*")), ROOT1, '<fsinfo real_dev="/dev/sda2"/>'),
     "bad-layout.xml:6:", "<fsinfo> lacks mp, fs"),
    ("comment-with-fields", cfg(disk(GPT, part(1, "*")), ROOT1,
                                '<fsinfo line="5" comment="# x" dump="1"/>'),
     "bad-layout.xml:6:", '<fsinfo line="5"> has mount fields but no device'),
    ("line-twice", cfg(disk(GPT, part(1, "10"), part(2, "*")), fs("/dev/sda2", "/", line="1"),
                       fs("/dev/sda1", "/boot", line="1")),
     "bad-layout.xml:7:", '<fsinfo line="1">: line 1 is used twice'),
    ("options-with-space", cfg(disk(GPT, part(1, "*")), fs("/dev/sda1", "/", options="a, b")),
     "bad-layout.xml:5:", "mount options 'a, b' contain spaces"),
    # -- bootloader --
    ("efi-without-esp", cfg(disk(GPT, part(1, "*")), EFI, ROOT1),
     "bad-layout.xml:5:", 'install_type="efi"> needs an EFI system partition'),
    ("efi-fat-without-flag",
     cfg(disk(GPT, part(1, "512"), part(2, "*")), EFI, fs("/dev/sda2", "/"),
         fs("/dev/sda1", "/boot/efi", "vfat")),
     "bad-layout.xml:8:", "/dev/sda1 on /boot/efi is not flagged as an EFI system partition"),
    ("efi-esp-not-mounted",
     cfg(disk(GPT, part(1, "512", flags="esp"), part(2, "*")), EFI, fs("/dev/sda2", "/")),
     "bad-layout.xml:3:", "the EFI system partition /dev/sda1 has no FAT <fsinfo> on /boot/efi"),
    ("grub-legacy-on-efi",
     cfg(disk(GPT, part(1, "512", flags="esp"), part(2, "*")),
         EFI.replace('"grub2"', '"grub"'), fs("/dev/sda2", "/"),
         fs("/dev/sda1", "/boot/efi", "vfat")),
     "bad-layout.xml:6:", "grub (legacy grub 0.9x) cannot boot EFI"),
    ("gpt-bios-without-bios-grub", cfg(disk(GPT, part(1, "*")), LEGACY, ROOT1),
     "bad-layout.xml:5:", "grub2 on /dev/sda needs a BIOS boot partition: /dev/sda is gpt"),
    ("gpt-bios-raid-target-without-bios-grub",
     cfg(disk(GPT, part(1, "1", flags="bios_grub"), part(2, "*", raid_dev="/dev/md0")),
         disk(GPT.replace("sda", "sdb"), part(1, "*", raid_dev="/dev/md0")),
         '<raid><raid_disk name="/dev/md0" raid_level="1"/></raid>',
         LEGACY.replace("/dev/sda", "/dev/md0"), fs("/dev/md0", "/")),
     "bad-layout.xml:10:", "grub2 on /dev/sdb needs a BIOS boot partition"),
    ("systemd-boot-legacy",
     cfg(disk(MSDOS, part(1, "*")), LEGACY.replace("grub2", "systemd"), ROOT1),
     "bad-layout.xml:5:", "systemd boots only on EFI firmware"),
    ("unknown-target", cfg(disk(MSDOS, part(1, "*")), LEGACY.replace("sda", "sdz"), ROOT1),
     "bad-layout.xml:5:", '<target dev="/dev/sdz"> is not a disk, partition or md array'),
]


@pytest.mark.parametrize(("text", "where", "what"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_rule(text, where, what):
    message = problem(text)
    assert message.startswith(where), message
    assert what in message, message


@pytest.mark.parametrize("name", [n for n in COMPAT_FILES if "lvm_over_raid" not in n])
def test_compat_files_are_valid(compat, name):
    validate(load_layout(compat / name))


def test_compat_lvm_over_raid_asks_for_reiserfs(compat):
    """SystemImager's example is fine but for its filesystem, which no
    current distribution (nor the boot environment) can create."""
    problems = check(load_layout(compat / "disk-layout-lvm_over_raid.xml"))
    assert len(problems) == 5
    assert all("sysclone cannot create reiserfs" in p.message for p in problems)


def test_all_problems_are_listed_and_counted():
    text = cfg(disk(GPT, part(1, "*"), part(2, "*"), part(5, "1", "logical")), ROOT1,
               fs("/dev/sda9", "/srv"))
    problems = check(parse_layout(text, "many.xml"))
    assert len(problems) == 3
    with pytest.raises(ConfigError) as err:
        validate(parse_layout(text, "many.xml"))
    assert err.value.message == problems[0].message
    assert "2 more problem(s)" in err.value.hint
    assert len(err.value.to_dict()["problems"]) == 3


GOOD = [
    # Logical partitions may be listed in any order as long as they are 5..n.
    cfg(disk(MSDOS, part(1, "*", "extended"), part(6, "10", "logical"), part(5, "*", "logical")),
        fs("/dev/sda5", "/")),
    # BIOS boot partition makes grub on gpt fine.
    cfg(disk(GPT, part(1, "1", flags="bios_grub"), part(2, "*")), LEGACY, fs("/dev/sda2", "/")),
    # grub to a partition (boot sector install) needs no BIOS boot partition.
    cfg(disk(GPT, part(1, "*")), LEGACY.replace("/dev/sda", "/dev/sda1"), ROOT1),
    # ESP on RAID1 (metadata 1.0) whose members carry the esp flag.
    cfg(disk(GPT, part(1, "512", flags="esp", raid_dev="/dev/md0"), part(2, "*")),
        disk(GPT.replace("sda", "sdb"), part(1, "512", flags="esp", raid_dev="/dev/md0")),
        '<raid><raid_disk name="/dev/md0" raid_level="1" metadata="1.0"/></raid>', EFI,
        fs("/dev/sda2", "/"), fs("/dev/md0", "/boot/efi", "vfat")),
    # parted's boot flag on gpt is the ESP type; so is type id ef00.
    cfg(disk(GPT, part(1, "512", flags="boot"), part(2, "*")), EFI, fs("/dev/sda2", "/"),
        fs("/dev/sda1", "/boot/efi", "fat32")),
    cfg(disk(GPT, part(1, "512", id="EF00"), part(2, "*")), EFI, fs("/dev/sda2", "/"),
        fs("/dev/sda1", "/boot/efi", "vfat")),
    # A BIOS boot partition by type code.
    cfg(disk(GPT, part(1, "1", id="ef02"), part(2, "*")), LEGACY, fs("/dev/sda2", "/")),
    # Existing filesystems elsewhere are mounted, not formatted.
    cfg(disk(GPT, part(1, "*")), ROOT1, fs("/dev/sdc1", "/data", "xfs", format="no"),
        fs("nas:/export", "/home", "nfs"), fs("LABEL=scratch", "/scratch", "lustre",
                                               format="no")),
    # A degraded mirror.
    cfg(disk(GPT, part(1, "*", raid_dev="/dev/md0")),
        '<raid><raid_disk name="/dev/md0" raid_level="1" devices="missing"/></raid>',
        fs("/dev/md0", "/")),
    # A disk kept as it is; its existing partition is mounted, checked by UUID.
    cfg(disk(GPT, part(1, "*")),
        disk('dev="/dev/sdb" label_type="none" unit_of_measurement="MiB"', part(1, "*")),
        ROOT1, fs("/dev/sdb1", "/data", "xfs", format="no",
                  mount_dev="UUID=0a1b2c3d-0000-4000-8000-00000000abcd")),
    # LV by its device-mapper name, and the `*` volume last.
    cfg(disk(GPT, part(1, "*", flags="lvm", lvm_group="vg-0")),
        VG.replace("vg0", "vg-0").format(lvs='<lv name="my-root" size="2G"/>'
                                              '<lv name="rest" size="*"/>'),
        fs("/dev/mapper/vg--0-my--root", "/"), fs("/dev/vg-0/rest", "/srv")),
]


@pytest.mark.parametrize("text", GOOD)
def test_accepted(text):
    validate(parse_layout(text, "good.xml"))
