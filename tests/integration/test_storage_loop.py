"""The agent's storage path on real (loop) disks, for what this host's
kernel can do: GPT and msdos tables with logical partitions, layouts scaled
down to a smaller disk, ext4, xfs and btrfs with subvolumes, swap, labels,
a disk whose table and filesystem are kept (format="no"), and malformed
layouts refused without a byte written.  (md, device-mapper and vfat are
not in this host's kernel: their commands are checked with the command
fakes in tests/unit/test_storage_install.py and in the VM tests.)

Checked with tools independent of the agent: sfdisk -J, blkid -p and
`btrfs subvolume list`, and by hashing the disks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agent.configure.fstab import write_fstab
from agent.disks import Disk
from agent.filesystems import make_filesystems, mount_all
from agent.partition import partition
from agent.plan import InstallPlan
from agent.planner import make_plan
from sysclone.errors import ConfigError
from tests.verify import sh

GiB = 1 << 30
MiB = 1 << 20
DATA = Path(__file__).resolve().parent.parent / "unit" / "data" / "layouts"
BAD = sorted(p for p in (DATA / "bad").iterdir() if p.suffix in (".xml", ".toml"))


@pytest.fixture
def loops(tmp_path: Path, root_only: None) -> Iterator[Callable[..., list[tuple[str, Path]]]]:
    """make(size, size...) -> [(loop device, backing file)]: sparse files on
    loop devices with partition scanning, detached afterwards."""
    made: list[str] = []

    def make(*sizes: int) -> list[tuple[str, Path]]:
        out = []
        for size in sizes:
            backing = tmp_path / f"disk{len(made)}.img"
            with backing.open("wb") as f:
                f.truncate(size)
            dev = sh("losetup", "--find", "--show", "--partscan", str(backing)).strip()
            made.append(dev)
            out.append((dev, backing))
        return out

    yield make
    for line in sh("findmnt", "-rn", "-o", "TARGET,SOURCE", check=False).splitlines():
        target, _, source = line.partition(" ")
        if any(source.startswith(d) for d in made):
            sh("umount", "-l", target, check=False)
    for dev in made:
        for _ in range(10):
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)


def disk(dev: str, size: int) -> Disk:
    return Disk(name=Path(dev).name, size=size)


def plan_of(text: str, name: str, disks: list[Disk], **image: Any) -> InstallPlan:
    fmt = "toml" if name.endswith(".toml") else "systemimager-xml"
    return make_plan(instructions={"image": {"name": "tiny", **image},
                                   "layout": {"name": name, "format": fmt, "text": text}},
                     server="127.0.0.1", hostname="node7", targets=disks, fw="bios",
                     ram_bytes=512 * MiB)


def install(plan: InstallPlan, root: Path, stack: ExitStack) -> None:
    """The phases that touch the disks: partition, format, mount."""
    partition(plan.disks, plan.filesystems)
    make_filesystems(plan.filesystems)
    mount_all(plan.mounts, root, stack)


def blkid(dev: str) -> dict[str, str]:
    out = sh("blkid", "-p", "-o", "export", dev, check=False)
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def table(dev: str) -> dict[str, Any]:
    return dict(json.loads(sh("sfdisk", "-J", dev))["partitiontable"])


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_msdos_logical_partitions_btrfs_subvolumes_swap_and_labels(loops: Any,
                                                                   tmp_path: Path) -> None:
    ((dev, _),) = loops(2 * GiB)
    plan = plan_of((DATA / "btrfs-subvolumes.toml").read_text(), "btrfs-subvolumes.toml",
                   [disk(dev, 2 * GiB)])
    root = tmp_path / "sysroot"
    with ExitStack() as stack:
        install(plan, root, stack)
        (root / "home/user").mkdir(parents=True)
        (root / "var/log/messages").write_text("hello\n")
        (root / "etc").mkdir()
        write_fstab(plan.filesystems, root, plan.layout)
        fstab = (root / "etc/fstab").read_text()
        subvols = sh("btrfs", "subvolume", "list", str(root))
        top_level_home = (root / "home").stat().st_ino
    # sfdisk's view: msdos, boot flag on 1, extended 2 holding swap 5 and 6.
    t = table(dev)
    assert t["label"] == "dos"
    parts = {p["node"].rsplit("p", 1)[1]: p for p in t["partitions"]}
    assert sorted(parts) == ["1", "2", "5", "6"]
    assert parts["1"].get("bootable") is True
    assert (parts["2"]["type"], parts["5"]["type"], parts["6"]["type"]) == ("5", "82", "83")
    for pp in plan.disks[0].partitions:
        p = parts[str(pp.number)]
        assert (p["start"], p["size"]) == (pp.start_sector, pp.size_sectors)
    # blkid's view: the plan's UUIDs and labels.
    f = {x.mountpoint: x for x in plan.filesystems}
    assert blkid(f"{dev}p6")["UUID"] == f["/"].uuid and blkid(f"{dev}p6")["LABEL"] == "system"
    assert blkid(f"{dev}p1")["LABEL"] == "boot" and blkid(f"{dev}p1")["TYPE"] == "ext4"
    assert blkid(f"{dev}p5")["TYPE"] == "swap" and blkid(f"{dev}p5")["LABEL"] == "swap"
    # btrfs' view: the subvolumes, each mounted where fstab says.
    assert [line.split()[-1] for line in subvols.splitlines()] == ["@", "@home", "@log"]
    assert top_level_home == 256  # the root directory of a subvolume
    u = f["/"].uuid
    assert f"UUID={u}\t/home\tbtrfs\tsubvol=@home\t0\t0" in fstab
    assert f"UUID={blkid(f'{dev}p1')['UUID']}\t/boot\text4\tdefaults\t1\t2" in fstab


def test_gpt_xfs_with_labels_by_label_in_fstab(loops: Any, tmp_path: Path) -> None:
    ((dev, _),) = loops(2 * GiB)
    text = """<config>
  <disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">
    <part num="1" size="1" p_type="primary" flags="bios_grub" p_name="grub" />
    <part num="2" size="1024" p_type="primary" p_name="root" />
    <part num="3" size="*" p_type="primary" p_name="data" />
  </disk>
  <bootloader flavor="grub2" install_type="legacy"><target dev="/dev/sda"/></bootloader>
  <fsinfo line="10" real_dev="/dev/sda2" mount_dev="LABEL=root" mp="/" fs="ext4"
          mkfs_opts="-m 1" options="errors=remount-ro" dump="1" pass="1" />
  <fsinfo line="20" real_dev="/dev/sda3" mp="/srv" fs="xfs" mkfs_opts="-L srvdata"
          mount_dev="UUID=2f0e3c8a-1d2b-4c5d-8e9f-0a1b2c3d4e5f" options="noatime" pass="2" />
</config>"""
    plan = plan_of(text, "gpt-xfs.xml", [disk(dev, 2 * GiB)])
    root = tmp_path / "sysroot"
    with ExitStack() as stack:
        install(plan, root, stack)
        (root / "etc").mkdir()
        write_fstab(plan.filesystems, root, plan.layout)
        fstab = (root / "etc/fstab").read_text()
    t = table(dev)
    assert t["label"] == "gpt"
    assert [p.get("name") for p in t["partitions"]] == ["grub", "root", "data"]
    assert blkid(f"{dev}p2")["LABEL"] == "root"
    srv = blkid(f"{dev}p3")
    # The UUID and label the layout asked for, from mount_dev and mkfs_opts.
    assert (srv["TYPE"], srv["LABEL"], srv["UUID"]) == (
        "xfs", "srvdata", "2f0e3c8a-1d2b-4c5d-8e9f-0a1b2c3d4e5f")
    assert "LABEL=root\t/\text4\terrors=remount-ro\t1\t1" in fstab
    assert "UUID=2f0e3c8a-1d2b-4c5d-8e9f-0a1b2c3d4e5f\t/srv\txfs\tnoatime\t0\t2" in fstab


def test_a_layout_for_a_bigger_disk_is_scaled_down(loops: Any, tmp_path: Path) -> None:
    ((dev, _),) = loops(2 * GiB)
    text = """<config>
  <disk dev="/dev/sda" label_type="msdos" unit_of_measurement="GB">
    <part num="1" size="1" p_type="primary" flags="boot" />
    <part num="2" size="2" p_type="primary" />
    <part num="3" size="*" p_type="extended" />
    <part num="5" size="3" p_type="logical" />
    <part num="6" size="*" p_type="logical" />
  </disk>
  <fsinfo line="10" real_dev="/dev/sda6" mp="/" fs="ext4" />
  <fsinfo line="20" real_dev="/dev/sda1" mp="/boot" fs="ext4" />
  <fsinfo line="30" real_dev="/dev/sda2" mp="swap" fs="swap" />
  <fsinfo line="40" real_dev="/dev/sda5" mp="/srv" fs="ext4" />
</config>"""
    plan = plan_of(text, "big.xml", [disk(dev, 2 * GiB)], usage={"/": 300 * MiB})
    assert plan.notes and "is smaller than layout big.xml asks for" in plan.notes[0]
    with ExitStack() as stack:
        install(plan, tmp_path / "sysroot", stack)
    parts = {p["node"]: p for p in table(dev)["partitions"]}
    for pp in plan.disks[0].partitions:
        assert parts[pp.device]["size"] * 512 == pp.size
    assert sum(pp.size for pp in plan.disks[0].partitions if pp.kind.value != "logical") \
        <= 2 * GiB
    root = next(f for f in plan.filesystems if f.mountpoint == "/")
    assert root.size >= root.needs


def test_a_kept_disk_keeps_its_table_and_data(loops: Any, tmp_path: Path) -> None:
    (sda, _), (sdb, sdb_file) = loops(GiB, GiB)
    disks = [disk(sda, GiB), disk(sdb, GiB)]
    srv_uuid = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
    first = (DATA / "keep-data.toml").read_text().replace(
        'label_type = "none"', 'label_type = "gpt"').replace("format = false\n", "")
    plan = plan_of(first, "first.toml", disks)
    with ExitStack() as stack:
        install(plan, tmp_path / "one", stack)
        (tmp_path / "one/srv/precious").write_text("keep me\n")
    assert blkid(f"{sdb}p1")["UUID"] == srv_uuid
    table_before = table(sdb)

    # Reinstall: the system disk is rewritten, the data disk only checked.
    plan = plan_of((DATA / "keep-data.toml").read_text(), "keep-data.toml", disks)
    srv = plan.filesystems[1]
    assert (srv.kept, srv.uuid, srv.size) == (True, srv_uuid, table_before["partitions"][0][
        "size"] * 512)
    root_before = blkid(f"{sda}p2")["UUID"]
    with ExitStack() as stack:
        install(plan, tmp_path / "two", stack)
        assert not (tmp_path / "two/srv/precious").exists()  # not mounted during the install
    assert blkid(f"{sda}p2")["UUID"] != root_before  # the system disk is new
    assert table(sdb) == table_before and blkid(f"{sdb}p1")["UUID"] == srv_uuid
    (tmp_path / "srv").mkdir()
    sh("mount", f"{sdb}p1", str(tmp_path / "srv"))
    try:
        assert (tmp_path / "srv/precious").read_text() == "keep me\n"
    finally:
        sh("umount", str(tmp_path / "srv"))

    # A layout recording another UUID is refused before anything is written.
    wrong = (DATA / "keep-data.toml").read_text().replace(srv_uuid,
                                                          "11111111-2222-4333-8444-555555555555")
    before = digest(sdb_file)
    with pytest.raises(ConfigError, match="keeps /dev/.*p1 with UUID 11111111-2222-4333-8444-"
                                          "555555555555, but its xfs has UUID " + srv_uuid):
        plan_of(wrong, "wrong.toml", disks)
    assert digest(sdb_file) == before


def test_malformed_layouts_write_nothing(loops: Any) -> None:
    (a, fa), (b, fb), (c, fc) = loops(GiB, GiB, GiB)
    for dev in (a, b, c):  # something on the disks, so that a write would show
        sh("mkfs.ext4", "-q", "-F", dev)
    before = [digest(f) for f in (fa, fb, fc)]
    disks = [disk(a, GiB), disk(b, GiB), disk(c, GiB)]
    for path in BAD:
        fw = "uefi" if 'install_type="efi"' in path.read_text() or \
            'install_type = "efi"' in path.read_text() else "bios"
        fmt = "toml" if path.suffix == ".toml" else "systemimager-xml"
        with pytest.raises(ConfigError):
            make_plan(instructions={"image": {"name": "tiny"}, "layout": {
                "name": path.name, "format": fmt, "text": path.read_text()}},
                server="127.0.0.1", hostname="node7", targets=disks, fw=fw,
                ram_bytes=512 * MiB)
    assert [digest(f) for f in (fa, fb, fc)] == before
