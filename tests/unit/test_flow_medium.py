"""local.cfg on the boot medium (agent.params.medium): a sysclone USB
disk's SYSCLONECFG partition is found once the drivers are loaded, its
local.cfg beats every other source but the server, and the agent's log is
left on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.params import Source, parse_local_cfg, resolve
from agent.params import medium as mediumlib
from tests.conftest import FakeResult
from tests.unit.netfakes import FakeDhcp
from tests.unit.test_flow import Machine, dhcp, machine  # noqa: F401  (fixtures)


@pytest.fixture
def stick(machine: Machine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # noqa: F811
    """/dev/disk/by-label/SYSCLONECFG -> a device; mount is faked, so the
    mount point is the partition's contents."""
    by_label = tmp_path / "by-label"
    by_label.mkdir()
    dev = tmp_path / "sdb2"
    dev.write_bytes(b"")
    (by_label / "SYSCLONECFG").symlink_to(dev)
    where = tmp_path / "medium"
    where.mkdir()
    monkeypatch.setattr(mediumlib, "BY_LABEL", by_label)
    monkeypatch.setattr(mediumlib, "MOUNTPOINT", where)
    machine.commands.add(["mount", "-t", "vfat"], "")
    machine.commands.add(["umount"], "")
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run/agent.log").write_text("the agent's log\n")
    return where


def test_the_mediums_local_cfg_beats_the_command_line_and_the_initrds(
        machine: Machine, dhcp: FakeDhcp, stick: Path) -> None:  # noqa: F811
    machine.local_cfg.write_text("IMAGENAME=from-initrd\nHOSTNAME=from-initrd\n")
    (stick / "local.cfg").write_text("IMAGENAME=from-stick\n")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 IMAGENAME=from-cmdline si.dry-run")
    assert rc == 0, rep.lines
    assert machine.asked[0]["image"] == "from-stick"
    assert machine.asked[0]["hostname"] == "from-initrd"
    assert any(line.startswith("boot medium ") and "reading local.cfg" in line
               for line in rep.lines)
    mount = next(c for c in machine.ran() if c[0] == "mount")
    assert mount[:5] == ["mount", "-t", "vfat", "-o", "rw,noatime,flush"]
    # its log left on the stick, which is then unmounted
    logs = list((stick / "logs").iterdir())
    assert len(logs) == 1 and logs[0].read_text() == "the agent's log\n"
    assert logs[0].name.startswith("www1-") or logs[0].name.endswith(".log")
    assert ["umount", str(stick)] in machine.ran()


def test_without_a_medium_nothing_is_mounted(machine: Machine, dhcp: FakeDhcp,  # noqa: F811
                                            tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mediumlib, "BY_LABEL", tmp_path / "none")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run")
    assert rc == 0, rep.lines
    assert not any(c[0] in ("mount", "umount") for c in machine.ran())


def test_skip_local_cfg_skips_the_medium(machine: Machine, dhcp: FakeDhcp,  # noqa: F811
                                         stick: Path) -> None:
    (stick / "local.cfg").write_text("IMAGENAME=from-stick\n")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 IMAGENAME=mine si.skip-local-cfg "
                              "si.dry-run")
    assert rc == 0, rep.lines
    assert machine.asked[0]["image"] == "mine"
    assert not any(c[0] == "mount" for c in machine.ran())


def test_a_write_protected_stick_is_read_only(machine: Machine, dhcp: FakeDhcp,  # noqa: F811
                                              stick: Path) -> None:
    machine.commands.add(["mount", "-t", "vfat", "-o", "rw,noatime,flush"],
                         FakeResult(stderr="write-protected", returncode=32))
    (stick / "local.cfg").write_text("IMAGENAME=from-stick\n")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2 si.dry-run")
    assert rc == 0, rep.lines
    assert machine.asked[0]["image"] == "from-stick"
    assert not (stick / "logs").exists()


def test_a_bad_local_cfg_on_the_medium_stops_the_install(
        machine: Machine, dhcp: FakeDhcp, stick: Path) -> None:  # noqa: F811
    (stick / "local.cfg").write_text("si.imagename=x\n")
    rc, rep = machine.install("IMAGESERVER=10.0.2.2")
    assert rc == 1
    assert any("si.imagename: unknown install parameter (local.cfg at" in line
               for line in rep.lines)
    assert ["umount", str(stick)] in machine.ran()


def test_the_medium_layer_ranks_below_the_server():
    medium = parse_local_cfg("IMAGENAME=b", source=Source.LOCAL_CFG_MEDIUM, name="stick")
    initrd = parse_local_cfg("IMAGENAME=a", source=Source.LOCAL_CFG_INITRD, name="initrd")
    assert resolve([medium, initrd]).params.image_name == "b"
    assert Source.LOCAL_CFG_MEDIUM.is_local_cfg
    assert Source.LOCAL_CFG_MEDIUM < Source.SERVER
