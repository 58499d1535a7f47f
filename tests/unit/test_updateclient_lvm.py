"""updateclient's rollback point on LVM (imageserver/updateclient/client.py):
a snapshot of the root's logical volume when its group has the room, put
back by mounting it read-only and copying the saved files; a snapshot that
ran out of room is refused before anything is removed.  LVM's answers are
faked (lvs output as LVM 2.03 prints it): this host's kernel has no
device-mapper."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imageserver.updateclient import client
from imageserver.updateclient.client import Change, Plan

GiB = 1 << 30


class FakeLvm:
    """client.run's stand-in: answers lvs, stat -f, lvcreate, lvremove,
    mount and umount, and records every command."""

    def __init__(self, attr: str = "-wi-ao----", free: int = 20 * GiB, fstype: str = "ext2/ext3",
                 snap_attr: str = "swi-a-s---") -> None:
        self.calls: list[list[str]] = []
        self.attr, self.free, self.fstype, self.snap_attr = attr, free, fstype, snap_attr

    def __call__(self, argv: list, **kw: Any) -> subprocess.CompletedProcess:
        argv = [str(a) for a in argv]
        self.calls.append(argv)
        out = ""
        if argv[:2] == ["lvs", "--noheadings"] and "vg_name,lv_name,lv_attr,vg_free" in argv:
            out = f"  vg0|root|{self.attr}|{self.free}\n"
        elif argv[:3] == ["lvs", "--noheadings", "-o"]:
            out = f"  {self.snap_attr}\n"
        elif argv[:3] == ["stat", "-f", "-c"]:
            out = self.fstype + "\n"
        elif argv[0] not in ("lvcreate", "lvremove", "mount", "umount"):
            raise AssertionError(f"unexpected command {argv}")
        return subprocess.CompletedProcess(argv, 0, out, "")


def fake_sys(tmp_path: Path, root: Path, uuid: str = "LVM-abc", name: str = "vg0-root") -> Path:
    st = os.stat(root)
    dm = tmp_path / "sys/dev/block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}" / "dm"
    dm.mkdir(parents=True)
    (dm / "uuid").write_text(uuid + "\n")
    (dm / "name").write_text(name + "\n")
    return tmp_path / "sys"


@pytest.fixture
def system(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/motd").write_text("old\n")
    return root


def test_the_root_volume_is_found(tmp_path: Path, system: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "SYS", str(fake_sys(tmp_path, system)))
    lvm = FakeLvm()
    monkeypatch.setattr(client, "run", lvm)
    origin = client.lvm_origin(str(system))
    assert origin is not None
    assert (origin.vg, origin.lv, origin.vg_free, origin.fstype) == \
        ("vg0", "root", 20 * GiB, "ext2/ext3")
    assert lvm.calls[0][-1] == "/dev/mapper/vg0-root"


@pytest.mark.parametrize("what", ["snapshot", "thin", "btrfs", "crypt", "no-dm"])
def test_no_snapshot_where_it_cannot_be_mounted_back(tmp_path: Path, system: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    what: str) -> None:
    uuid = "CRYPT-LUKS2-x" if what == "crypt" else "LVM-abc"
    sys_root = fake_sys(tmp_path, system, uuid) if what != "no-dm" else tmp_path / "nosys"
    monkeypatch.setattr(client, "SYS", str(sys_root))
    monkeypatch.setattr(client, "run", FakeLvm(
        attr={"snapshot": "swi-a-s---", "thin": "Vwi-aotz--"}.get(what, "-wi-ao----"),
        fstype="btrfs" if what == "btrfs" else "xfs"))
    assert client.lvm_origin(str(system)) is None


def _plan() -> Plan:
    return Plan([Change("etc/motd", ">f.st......"), Change("usr/bin/htop", ">f+++++++++")],
                transfer_bytes=10 << 20)


def test_an_lvm_snapshot_is_the_rollback_point(system: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    lvm = FakeLvm()
    monkeypatch.setattr(client, "run", lvm)
    monkeypatch.setattr(client, "lvm_origin", lambda root: client.LvmOrigin(
        "vg0", "root", 20 * GiB, "ext2/ext3", str(system.parent)))
    point = client.take_rollback_point(str(system), _plan(), "web@2")
    size = client.snapshot_bytes(_plan(), len("old\n"))
    assert lvm.calls == [["lvcreate", "--snapshot", "--name", "root-sysclone-rollback",
                          "--size", f"{size}b", "vg0/root"]]
    assert (point.method, point.snapshot, point.prefix) == \
        ("lvm", "vg0/root-sysclone-rollback", "root")
    assert point.source == os.path.join(point.directory, "snapshot", "root")
    assert client.RollbackPoint.load(point.directory) == point  # recorded for --rollback


def test_too_little_room_in_the_group_means_copies(system: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lvm = FakeLvm()
    monkeypatch.setattr(client, "run", lvm)
    monkeypatch.setattr(client, "lvm_origin", lambda root: client.LvmOrigin(
        "vg0", "root", 64 << 20, "xfs", str(system)))
    copied: list[list[str]] = []
    monkeypatch.setattr(client, "_local_copy",
                        lambda src, dest, paths, work: copied.append(list(paths)))
    point = client.take_rollback_point(str(system), _plan(), "web@2")
    assert point.method == "copy" and copied == [["etc/motd"]]
    assert not any(c[0] == "lvcreate" for c in lvm.calls)


def _lvm_point(system: Path, snap_attr: str, monkeypatch: pytest.MonkeyPatch,
               fstype: str = "ext2/ext3") -> tuple[client.RollbackPoint, FakeLvm]:
    directory = system / client.STATE_DIR / "rollback"
    directory.mkdir(parents=True)
    point = client.RollbackPoint(str(directory), method="lvm", saved=["etc/motd"],
                                 created=["usr/bin/htop"], snapshot="vg0/root-sysclone-rollback",
                                 fstype=fstype, prefix="")
    point.save()
    lvm = FakeLvm(snap_attr=snap_attr)
    monkeypatch.setattr(client, "run", lvm)
    (system / "usr/bin").mkdir(parents=True)
    (system / "usr/bin/htop").write_text("new\n")
    return point, lvm


def test_put_back_from_the_mounted_snapshot(system: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    point, lvm = _lvm_point(system, "swi-a-s---", monkeypatch)
    copied: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(client, "_local_copy",
                        lambda src, dest, paths, work: copied.append((src, list(paths))))
    client.restore(str(system), point)
    mnt = os.path.join(point.directory, "snapshot")
    assert ["mount", "-o", "ro,noload", "/dev/vg0/root-sysclone-rollback", mnt] in lvm.calls
    assert copied == [(mnt + "/", ["etc/motd"])] or copied == [(mnt, ["etc/motd"])]
    # Unmounted, then the spent snapshot goes: it would copy every later
    # write until it filled up.
    assert lvm.calls[-2:] == [["umount", mnt], ["lvremove", "--yes", "vg0/root-sysclone-rollback"]]
    assert not (system / "usr/bin/htop").exists()  # what the update created is gone
    assert client.RollbackPoint.load(point.directory).rolled_back


def test_xfs_snapshots_mount_with_their_duplicate_uuid(system: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    point, lvm = _lvm_point(system, "swi-a-s---", monkeypatch, fstype="xfs")
    monkeypatch.setattr(client, "_local_copy", lambda *a: None)
    client.restore(str(system), point)
    assert any(c[:3] == ["mount", "-o", "ro,nouuid,norecovery"] for c in lvm.calls)


def test_a_snapshot_that_ran_out_of_room_is_refused_first(
        system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    point, lvm = _lvm_point(system, "swi-I-s---", monkeypatch)
    monkeypatch.setattr(client, "_local_copy", lambda *a: pytest.fail("copied"))
    with pytest.raises(client.UpdateError, match="ran out of room"):
        client.restore(str(system), point)
    assert (system / "usr/bin/htop").exists()  # nothing removed
    assert not any(c[0] == "mount" for c in lvm.calls)


def test_dropping_the_point_removes_the_snapshot(system: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    point, lvm = _lvm_point(system, "swi-a-s---", monkeypatch)
    client.drop_rollback_point(point.directory)
    assert ["lvremove", "--yes", "vg0/root-sysclone-rollback"] in lvm.calls
    assert not os.path.exists(point.directory)


def test_a_separate_boot_is_copied_beside_the_snapshot(system: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """/boot on a filesystem of its own (the usual layout with an LVM root):
    the root's files are in the snapshot, /boot's are copied; both come
    back.  Seen on a real volume group: before, any path off the root's
    filesystem made the whole rollback point copies."""
    (system / "boot").mkdir()
    (system / "boot/vmlinuz-6.1").write_bytes(b"old kernel")
    lvm = FakeLvm()
    monkeypatch.setattr(client, "run", lvm)
    monkeypatch.setattr(client, "lvm_origin", lambda root: client.LvmOrigin(
        "vg0", "root", 20 * GiB, "xfs", str(system)))
    monkeypatch.setattr(client, "_on_root_filesystem",
                        lambda root, paths: [p for p in paths if not p.startswith("boot/")])
    copied: list[tuple[str, str, list[str]]] = []
    monkeypatch.setattr(client, "_local_copy",
                        lambda src, dest, paths, work: copied.append((src, dest, list(paths))))
    plan = Plan([Change("etc/motd", ">f.st......"), Change("boot/vmlinuz-6.1", ">f.st......")],
                transfer_bytes=10 << 20)
    point = client.take_rollback_point(str(system), plan, "web@2")
    assert (point.method, point.elsewhere) == ("lvm", ["boot/vmlinuz-6.1"])
    # Snapshot room for the root's files only.
    size = client.snapshot_bytes(plan, len("old\n"))
    assert ["lvcreate", "--snapshot", "--name", "root-sysclone-rollback", "--size", f"{size}b",
            "vg0/root"] in lvm.calls
    assert copied == [(str(system), point.tree, ["boot/vmlinuz-6.1"])]
    assert client.RollbackPoint.load(point.directory).elsewhere == ["boot/vmlinuz-6.1"]
    copied.clear()
    client.restore(str(system), point)
    assert copied == [(point.source, str(system), ["etc/motd"]),
                      (point.tree, str(system), ["boot/vmlinuz-6.1"])]


def test_the_snapshot_size_is_whole_mebibytes() -> None:
    """lvcreate refuses a size that is not a multiple of 512 bytes (seen
    on a real volume group: 268436692b)."""
    plan = Plan([Change("etc/motd", ">f.st......")], transfer_bytes=1001)
    size = client.snapshot_bytes(plan, 99)
    assert size % (1 << 20) == 0 and size >= 2 * (1001 + 99) + (256 << 20)
