"""The plan refuses, with one line saying why and how to rebuild, a layout
the boot environment has not the tools for: what bootenv.build records in
etc/sysclone/bootenv.json (agent.bootenvinfo) when a UYOK `loaded` build
leaves out the storage stacks its golden client did not use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.bootenvinfo import BootenvInfo
from agent.disks import Disk, NoProbe
from agent.planner import make_plan
from sysclone.cli import main
from sysclone.errors import ConfigError
from tests.conftest import DATA

GiB = 1 << 30
LAYOUTS = DATA / "layouts"

# What a UYOK loaded build from the golden VM writes (bootenv.drivers.storage_stacks).
UYOK = {
    "flavor": "uyok-loaded",
    "storage": {
        "ext4": {"can": True, "what": "ext2/3/4 filesystems"},
        "raid": {"can": False, "what": "md RAID arrays", "add_modules": ["md_mod"],
                 "why": "built with --modules loaded from a client without md_mod"},
        "lvm": {"can": False, "what": "LVM volume groups", "add_modules": ["dm_mod"],
                "why": "built with --modules loaded from a client that had dm_mod loaded "
                       "but unused (no LVM volume groups)"},
        "xfs": {"can": False, "what": "xfs filesystems", "add_modules": ["xfs"],
                "why": "built with --modules loaded from a client without xfs"},
        "crypt": {"can": False, "what": "LUKS encryption", "add_modules": ["dm_crypt"],
                  "why": "built with --modules loaded from a client without dm_crypt"},
    },
}
# Its tools: core and ext4 only.
HAVE = {"mke2fs", "mkswap", "mkfs.fat"}


def _plan(layout: str, info: BootenvInfo, have: set[str] = HAVE, fw: str = "bios",
          have_module: Any = None) -> Any:
    text = (LAYOUTS / layout).read_text()
    return make_plan(instructions={"image": {"name": "demo"},
                                   "layout": {"format": "toml", "name": layout, "text": text}},
                     server="10.0.0.2", hostname="node07",
                     targets=[Disk("nvme0n1", 20 * GiB, transport="nvme"),
                              *(Disk(n, 20 * GiB) for n in ("vdb", "vdc"))], fw=fw,
                     ram_bytes=4 * GiB, have_tool=lambda tool: tool in have, probe=NoProbe(),
                     bootenv=info, have_module=have_module)


def test_a_raid_layout_on_a_boot_environment_without_md(tmp_path: Path) -> None:
    (tmp_path / "bootenv.json").write_text(json.dumps(UYOK))
    info = BootenvInfo.load(tmp_path / "bootenv.json")
    with pytest.raises(ConfigError) as e:
        _plan("raid1-lvm.toml", info)
    # One line: what is missing, why, and the rebuild that brings it, with
    # the RAID level's own module.
    assert e.value.message == (
        "this boot environment has no mdadm, so it cannot build layout raid1-lvm.toml: built "
        "with --modules loaded from a client without md_mod; rebuild it with --add-modules "
        "md_mod,raid1")
    assert "\n" not in e.value.message and e.value.hint is None


def test_lvm_left_out_because_dm_mod_was_idle() -> None:
    with pytest.raises(ConfigError) as e:
        _plan("raid1-lvm.toml", BootenvInfo(**UYOK), HAVE | {"mdadm"})
    assert e.value.message == (
        "this boot environment has no lvm, so it cannot build layout raid1-lvm.toml: built with "
        "--modules loaded from a client that had dm_mod loaded but unused (no LVM volume "
        "groups); rebuild it with --add-modules dm_mod")


def test_raid5_names_raid456_and_luks_its_own_stack() -> None:
    with pytest.raises(ConfigError, match=r"no mdadm.*--add-modules md_mod,raid456$"):
        _plan("luks-raid5-lvm.toml", BootenvInfo(**UYOK), HAVE | {"mkfs.xfs"}, "uefi")
    with pytest.raises(ConfigError, match=r"has no cryptsetup, .*--add-modules dm_crypt$"):
        _plan("luks-raid5-lvm.toml", BootenvInfo(**UYOK), HAVE | {"mkfs.xfs", "mdadm", "lvm"},
              "uefi")


def test_a_filesystem_the_boot_environment_cannot_create() -> None:
    text = (LAYOUTS / "raid1-lvm.toml").read_text()
    assert 'fs = "ext4"' in text
    xfs = text.replace('fs = "ext4"', 'fs = "xfs"')
    with pytest.raises(ConfigError) as e:
        make_plan(instructions={"image": {"name": "demo"},
                                "layout": {"format": "toml", "name": "x.toml", "text": xfs}},
                  server="s", hostname="h", targets=[Disk("vda", 20 * GiB),
                                                     Disk("vdb", 20 * GiB)],
                  fw="bios", ram_bytes=4 * GiB, have_tool=lambda t: t in HAVE | {"mdadm", "lvm"},
                  probe=NoProbe(), bootenv=BootenvInfo(**UYOK))
    assert e.value.message == (
        "this boot environment has no mkfs.xfs, so it cannot create xfs: built with --modules "
        "loaded from a client without xfs; rebuild it with --add-modules xfs")


def test_the_layout_it_can_build_is_planned() -> None:
    p = _plan("raid1-lvm.toml", BootenvInfo(**UYOK), HAVE | {"mdadm", "lvm"})
    assert [a.level for a in p.arrays] == ["raid1", "raid1"]


def test_without_a_description_the_refusal_stays_generic(tmp_path: Path) -> None:
    assert BootenvInfo.load(tmp_path / "none.json") == BootenvInfo()
    (tmp_path / "bad.json").write_text("{not json")
    assert BootenvInfo.load(tmp_path / "bad.json") == BootenvInfo()
    (tmp_path / "list.json").write_text("[1, 2]")
    assert BootenvInfo.load(tmp_path / "list.json") == BootenvInfo()
    with pytest.raises(ConfigError) as e:
        _plan("raid1-lvm.toml", BootenvInfo())
    assert e.value.message == ("this boot environment cannot build layout raid1-lvm.toml "
                               "(mdadm is missing)")
    assert e.value.hint == "rebuild it with the raid tool group"


def test_layout_plan_reads_the_manifests_reasons(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bootenv = tmp_path / "be"
    bootenv.mkdir()
    (bootenv / "manifest.json").write_text(json.dumps(
        {**UYOK, "inputs": {"tool_groups": ["core", "ext4"]}}))
    assert main(["--root", str(tmp_path / "root"), "layout", "plan",
                 str(LAYOUTS / "raid1-lvm.toml"), "--disk", "8G,8G", "--bootenv",
                 str(bootenv)]) == 1
    err = capsys.readouterr().err
    assert "has no mdadm, so it cannot build layout raid1-lvm.toml: built with --modules " \
           "loaded from a client without md_mod; rebuild it with --add-modules md_mod,raid1" \
           in err
    (bootenv / "manifest.json").write_text("{broken")
    assert main(["--root", str(tmp_path / "root"), "layout", "plan",
                 str(LAYOUTS / "raid1-lvm.toml"), "--disk", "8G,8G", "--bootenv",
                 str(bootenv)]) == 1
    assert "not a boot environment manifest" in capsys.readouterr().err


# A UYOK build from a client that ran RAID 1: mdadm and md_mod are there,
# raid456 is not.
RAID1_ONLY = frozenset({"md_mod", "raid1", "ext4", "dm_mod", "dm_crypt"})


def test_a_raid_level_whose_module_the_kernel_lacks_is_refused() -> None:
    have = HAVE | {"mkfs.xfs", "mdadm", "lvm", "cryptsetup"}
    with pytest.raises(ConfigError) as e:
        _plan("luks-raid5-lvm.toml", BootenvInfo(), have, "uefi",
              have_module=lambda m: m in RAID1_ONLY)
    assert e.value.message.startswith(
        "layout luks-raid5-lvm.toml: this boot environment's kernel has no raid456 module, so "
        "it cannot build /dev/md")
    assert "(raid5)" in e.value.message and "\n" not in e.value.message
    assert e.value.hint == "rebuild it with --add-modules raid456"
    # The same kernel builds the RAID 1 layout.
    p = _plan("raid1-lvm.toml", BootenvInfo(), have, have_module=lambda m: m in RAID1_ONLY)
    assert {a.level for a in p.arrays} == {"raid1"}


def test_module_names_from_paths_and_names() -> None:
    from agent.initramfs import module_name

    assert module_name("kernel/drivers/md/raid456.ko.xz") == "raid456"
    assert module_name("dm-mod") == "dm_mod"
    assert module_name("dm-crypt.ko.zst") == "dm_crypt"


def test_layout_plan_checks_the_raid_level_against_the_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bootenv = tmp_path / "be"
    bootenv.mkdir()
    storage = {k: {"can": True, "what": v["what"]} for k, v in UYOK["storage"].items()}
    (bootenv / "manifest.json").write_text(json.dumps(
        {"flavor": "uyok-loaded", "storage": storage,
         "inputs": {"tool_groups": ["core", "ext4", "xfs", "vfat", "raid", "lvm", "crypt"]},
         "modules": {"list": [{"name": "raid1"}, {"name": "md_mod"}],
                     "builtin_names": ["ext4"]}}))
    args = ["--root", str(tmp_path / "root"), "layout", "plan", "--bootenv", str(bootenv)]
    assert main([*args, str(LAYOUTS / "luks-raid5-lvm.toml"), "--disk", "20G:bus=nvme,20G,20G",
                 "--firmware", "uefi"]) == 1
    assert "kernel has no raid456 module" in capsys.readouterr().err
    assert main([*args, str(LAYOUTS / "raid1-lvm.toml"), "--disk", "8G,8G"]) == 0
