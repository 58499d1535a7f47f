"""What the install does with a plan's storage, through the command fakes:
the assemble phase's mdadm, cryptsetup and lvm calls in order, mkfs with
labels, btrfs subvolumes, disks whose table is kept, and the files
written into the image (fstab, crypttab with its keys, mdadm.conf)."""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from agent import filesystems, partition
from agent.blockdev import assemble as assemble_mod
from agent.blockdev.assemble import assemble
from agent.blockdev.lvm import LVM_CONFIG
from agent.configure.crypttab import (
    CONF_HOOK,
    DRACUT_CONF,
    UMASK_CONF,
    crypttab_text,
    write_crypttab,
)
from agent.configure.fstab import write_fstab
from agent.configure.mdadmconf import mdadm_conf_text, write_mdadm_conf
from agent.disks import Disk, NoProbe, Signature
from agent.filesystems import make_filesystems, mkfs_argv, mount_all
from agent.plan import InstallPlan
from agent.planner import make_plan
from tests.conftest import FakeCommands, FakeResult

GiB = 1 << 30
MiB = 1 << 20
LAYOUTS = Path(__file__).resolve().parent / "data" / "layouts"


def plan_for(name: str, disks: list[Disk], fw: str = "bios", probe: Any = None,
             **image: Any) -> InstallPlan:
    return make_plan(instructions={"image": {"name": "deb12", **image},
                                   "layout": {"name": name, "format": "toml",
                                              "text": (LAYOUTS / name).read_text()}},
                     server="10.0.0.2", hostname="node7.lab", targets=disks, fw=fw,
                     ram_bytes=GiB, have_tool=lambda t: True, probe=probe or NoProbe())


@pytest.fixture
def luks_plan() -> InstallPlan:
    disks = [Disk(n, 20 * GiB, transport="nvme") for n in ("nvme0n1", "nvme1n1", "nvme2n1")]
    p = plan_for("luks-raid5-lvm.toml", disks, fw="uefi")
    return InstallPlan(**{**p.__dict__, "keys": {"cryptsys": b"correct horse"}})


@pytest.fixture
def no_wait(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    waited: list[list[str]] = []
    monkeypatch.setattr(assemble_mod, "wait_for_devices", lambda d, *a, **k: waited.append(d))
    return waited


def test_assemble_md_then_luks_then_lvm(luks_plan: InstallPlan, fake_commands: FakeCommands,
                                        tmp_path: Path, no_wait: list[list[str]]) -> None:
    keys_seen: list[tuple[bytes, int]] = []

    def cryptsetup(argv: list[str]) -> FakeResult:
        kf = Path(next(a for a in argv if a.startswith("--key-file=")).split("=", 1)[1])
        keys_seen.append((kf.read_bytes(), stat.S_IMODE(kf.stat().st_mode)))
        return FakeResult()

    for tool in ("wipefs", "mdadm", "lvm"):
        fake_commands.add([tool], "")
    fake_commands.add(["cryptsetup"], cryptsetup)
    said: list[str] = []
    made = assemble(luks_plan, said.append, key_dir=tmp_path / "keys")
    md = luks_plan.arrays[0]
    crypt = luks_plan.crypts[0]
    members = ["/dev/nvme0n1p3", "/dev/nvme1n1p1", "/dev/nvme2n1p1"]
    assert fake_commands.calls == [
        ["wipefs", "--all", "--force", *members],  # the partitions: one command
        ["mdadm", "--create", "/dev/md0", "--run", "--metadata=1.2", "--level=raid5",
         "--raid-devices=3", "--chunk=512K", f"--uuid={md.uuid}", "--homehost=node7",
         "--name=0", *members],
        ["wipefs", "--all", "--force", "/dev/md0"],
        ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", f"--uuid={crypt.uuid}",
         f"--key-file={tmp_path}/keys/cryptsys.key", "/dev/md0"],
        ["cryptsetup", "open", "--type", "luks2", f"--key-file={tmp_path}/keys/cryptsys.key",
         "/dev/md0", "cryptsys"],
        ["lvm", "pvcreate", "--config", LVM_CONFIG, "-ff", "-y", "/dev/mapper/cryptsys"],
        ["lvm", "vgcreate", "--config", LVM_CONFIG, "-s", "4096k", "sys",
         "/dev/mapper/cryptsys"],
        ["lvm", "lvcreate", "--config", LVM_CONFIG, "-y", "-W", "y", "-Z", "y", "-n", "root",
         "-l", "2048", "sys"],
        ["lvm", "lvcreate", "--config", LVM_CONFIG, "-y", "-W", "y", "-Z", "y", "-n", "var",
         "-l", "1024", "sys"],
        ["lvm", "lvcreate", "--config", LVM_CONFIG, "-y", "-W", "y", "-Z", "y", "-n", "home",
         "-l", "100%FREE", "sys"],
    ]
    # The key existed, root-only, exactly while cryptsetup needed it.
    assert keys_seen == [(b"correct horse", 0o600)] * 2
    assert not (tmp_path / "keys/cryptsys.key").exists()
    assert made == ["/dev/md0", "/dev/mapper/cryptsys", "/dev/sys/root", "/dev/sys/var",
                    "/dev/sys/home"]
    assert no_wait == [made]
    assert said[0] == "/dev/md0: raid5 of /dev/nvme0n1p3 /dev/nvme1n1p1 /dev/nvme2n1p1"
    assert luks_plan.root_stack == {"md", "luks", "lvm"}
    assert luks_plan.kernel_args == (f"rd.md.uuid={md.uuid}", f"rd.luks.uuid={crypt.uuid}",
                                     "rd.lvm.vg=sys")


def test_partitions_are_wiped_at_once_and_made_devices_as_they_come(
        fake_commands: FakeCommands, no_wait: list[list[str]]) -> None:
    """raid1-lvm: both arrays' four members in one wipefs before any
    mdadm; md1, which becomes the physical volume, by pvcreate -ff -y."""
    disks = [Disk(n, 20 * GiB) for n in ("sda", "sdb")]
    plan = plan_for("raid1-lvm.toml", disks)
    for tool in ("wipefs", "mdadm", "lvm"):
        fake_commands.add([tool], "")
    assemble(plan, lambda s: None)
    calls = [c[:2] + c[-1:] if c[0] != "wipefs" else c for c in fake_commands.calls]
    assert calls == [
        ["wipefs", "--all", "--force", "/dev/sda2", "/dev/sdb2", "/dev/sda3", "/dev/sdb3"],
        ["mdadm", "--create", "/dev/sdb2"],
        ["mdadm", "--create", "/dev/sdb3"],
        ["lvm", "pvcreate", "/dev/md1"],
        ["lvm", "vgcreate", "/dev/md1"],
        ["lvm", "lvcreate", "sys"],
        ["lvm", "lvcreate", "sys"],
    ]


def test_both_disks_are_wiped_by_one_wipefs_before_their_tables(
        fake_commands: FakeCommands, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = plan_for("raid1-lvm.toml", [Disk(n, 20 * GiB) for n in ("sda", "sdb")])
    done: list[object] = []
    monkeypatch.setattr(partition, "write_table", lambda d, swap: done.append(
        (len(fake_commands.calls), d.disk.path)))
    monkeypatch.setattr(partition, "settle", lambda disks, devices: done.append(disks))
    fake_commands.add(["wipefs"], "")
    partition.partition(plan.disks, plan.filesystems)
    assert fake_commands.calls == [["wipefs", "--all", "--force", "/dev/sda", "/dev/sdb"]]
    assert done == [(1, "/dev/sda"), (1, "/dev/sdb"), ["/dev/sda", "/dev/sdb"]]


def test_a_failing_tool_stops_the_phase_and_the_key_is_gone(
        luks_plan: InstallPlan, fake_commands: FakeCommands, tmp_path: Path,
        no_wait: list[list[str]]) -> None:
    from sysclone.errors import CommandError

    for tool in ("wipefs", "mdadm"):
        fake_commands.add([tool], "")
    fake_commands.add(["cryptsetup"], FakeResult(returncode=1, stderr="No space left"))
    with pytest.raises(CommandError):
        assemble(luks_plan, lambda s: None, key_dir=tmp_path / "keys")
    assert not list((tmp_path / "keys").iterdir())
    assert [c[0] for c in fake_commands.calls][-1] == "cryptsetup"


def test_mirror_metadata_1_0_and_spares(fake_commands: FakeCommands,
                                        no_wait: list[list[str]]) -> None:
    p = plan_for("raid1-lvm.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)])
    from agent.blockdev.md import array_line, create_argv

    md0, md1 = p.arrays
    assert create_argv(md0)[:7] == ["mdadm", "--create", "/dev/md0", "--run",
                                    "--metadata=1.0", "--level=raid1", "--raid-devices=2"]
    assert array_line(md0) == f"ARRAY /dev/md0 metadata=1.0 UUID={md0.uuid} name=node7:0"
    assert md1.metadata == "1.2"


def test_mdadm_conf_keeps_settings_and_drops_old_arrays(tmp_path: Path) -> None:
    p = plan_for("raid1-lvm.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)])
    old = ("HOMEHOST <system>\nMAILADDR root\n"
           "ARRAY /dev/md/0  metadata=1.2 UUID=11111111:22222222:33333333:44444444\n"
           "   name=golden:0\n# definitions of existing MD arrays\n")
    text = mdadm_conf_text(p, old)
    assert text.splitlines() == [
        "HOMEHOST <system>", "MAILADDR root", "# definitions of existing MD arrays", "",
        "# Arrays of this machine, written by sysclone (mdadm.conf(5)).",
        f"ARRAY /dev/md0 metadata=1.0 UUID={p.arrays[0].uuid} name=node7:0",
        f"ARRAY /dev/md1 metadata=1.2 UUID={p.arrays[1].uuid} name=node7:1"]
    (tmp_path / "etc/mdadm").mkdir(parents=True)
    (tmp_path / "etc/mdadm/mdadm.conf").write_text(old)
    assert write_mdadm_conf(p, tmp_path) == ["etc/mdadm/mdadm.conf"]
    assert (tmp_path / "etc/mdadm/mdadm.conf").read_text() == text
    rh = tmp_path / "rh"
    (rh / "etc").mkdir(parents=True)
    assert write_mdadm_conf(p, rh) == ["etc/mdadm.conf"]  # Red Hat's place


def test_crypttab_with_key_files(luks_plan: InstallPlan, tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/crypttab").write_text("old_root UUID=1234 none luks\n")
    (tmp_path / "etc/cryptsetup-initramfs").mkdir()
    (tmp_path / CONF_HOOK).write_text("#KEYFILE_PATTERN=\nASKPASS=y\n")
    written = write_crypttab(luks_plan, tmp_path, "keyfile")
    assert written == ["etc/crypttab", "etc/cryptsetup-keys.d/cryptsys.key", CONF_HOOK,
                       UMASK_CONF, DRACUT_CONF]
    uuid = luks_plan.crypts[0].uuid
    assert (tmp_path / "etc/crypttab").read_text().splitlines()[1:] == [
        f"cryptsys\tUUID={uuid}\t/etc/cryptsetup-keys.d/cryptsys.key\tluks,discard"]
    key = tmp_path / "etc/cryptsetup-keys.d/cryptsys.key"
    assert key.read_bytes() == b"correct horse"
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert (tmp_path / CONF_HOOK).read_text() == (
        '#KEYFILE_PATTERN=\nASKPASS=y\nKEYFILE_PATTERN="/etc/cryptsetup-keys.d/*.key"\n')
    assert (tmp_path / UMASK_CONF).read_text() == "UMASK=0077\n"
    assert 'install_items+=" /etc/crypttab /etc/cryptsetup-keys.d/cryptsys.key "' in \
        (tmp_path / DRACUT_CONF).read_text()


def test_crypttab_for_a_passphrase_at_the_console(luks_plan: InstallPlan,
                                                  tmp_path: Path) -> None:
    assert write_crypttab(luks_plan, tmp_path, "console") == ["etc/crypttab"]
    assert crypttab_text(luks_plan, "console").splitlines()[1] == \
        f"cryptsys\tUUID={luks_plan.crypts[0].uuid}\tnone\tluks,discard"
    assert not (tmp_path / "etc/cryptsetup-keys.d").exists()


def test_no_luks_no_crypttab(tmp_path: Path) -> None:
    p = plan_for("raid1-lvm.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)])
    assert write_crypttab(p, tmp_path, "keyfile") == []
    assert write_mdadm_conf(plan_for("btrfs-subvolumes.toml", [Disk("vda", 8 * GiB)]),
                            tmp_path) == []


# -- filesystems -----------------------------------------------------------------------------

@pytest.fixture
def btrfs_plan() -> InstallPlan:
    return plan_for("btrfs-subvolumes.toml", [Disk("vda", 10 * GiB)])


def test_mkfs_once_per_btrfs_then_its_subvolumes(btrfs_plan: InstallPlan,
                                                 fake_commands: FakeCommands, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, bytes]] = []

    def ioctl(fd: int, request: int, arg: bytearray, mutate: bool) -> int:
        assert mutate
        calls.append((os.readlink(f"/proc/self/fd/{fd}"), request, bytes(arg)))
        return 0

    monkeypatch.setattr(filesystems.fcntl, "ioctl", ioctl)
    for tool in ("mke2fs", "mkfs.btrfs", "mkswap", "mount", "umount"):
        fake_commands.add([tool], "")
    make_filesystems(btrfs_plan.filesystems, scratch=tmp_path / "scratch")
    root = btrfs_plan.filesystems[0]
    top = tmp_path / "scratch/dev_vda6"
    # The mkfs runs two at a time (in any order), the subvolumes after them.
    assert sorted(fake_commands.calls[:3]) == sorted([
        ["mkfs.btrfs", "-f", "-q", "-U", root.uuid, "-L", "system", "-m", "dup", "/dev/vda6"],
        ["mke2fs", "-F", "-q", "-t", "ext4", "-U", btrfs_plan.filesystems[3].uuid, "-E",
         "lazy_itable_init=0,lazy_journal_init=0", "-L", "boot", "/dev/vda1"],
        ["mkswap", "-U", btrfs_plan.filesystems[4].uuid, "-L", "swap", "/dev/vda5"]])
    assert fake_commands.calls[3:] == [
        ["mount", "-t", "btrfs", "-o", "subvolid=5", "/dev/vda6", str(top)],
        ["umount", str(top)],
    ]
    # Between mount and umount: BTRFS_IOC_SUBVOL_CREATE in the top level, per name.
    assert [(d, r, a[8:].rstrip(b"\0")) for d, r, a in calls] == [
        (str(top), 0x5000940E, b"@"), (str(top), 0x5000940E, b"@home"),
        (str(top), 0x5000940E, b"@log")]
    assert all(len(a) == 4096 and a[:8] == bytes(8) for _, _, a in calls)


def test_subvolumes_are_mounted_by_name(btrfs_plan: InstallPlan, fake_commands: FakeCommands,
                                        tmp_path: Path) -> None:
    fake_commands.add(["mount"], "")
    fake_commands.add(["umount"], "")
    with ExitStack() as stack:
        mount_all(btrfs_plan.mounts, tmp_path, stack)
    mounts = [c for c in fake_commands.calls if c[0] == "mount"]
    assert mounts == [
        ["mount", "-t", "btrfs", "-o", "subvol=@", "/dev/vda6", str(tmp_path)],
        ["mount", "-t", "btrfs", "-o", "subvol=@home", "/dev/vda6", str(tmp_path / "home")],
        ["mount", "-t", "ext4", "/dev/vda1", str(tmp_path / "boot")],
        ["mount", "-t", "btrfs", "-o", "subvol=@log", "/dev/vda6", str(tmp_path / "var/log")],
    ]


def test_labels_from_systemimagers_mkfs_opts_are_passed_once() -> None:
    from agent.plan import FsPlan
    from agent.storage.model import FsEntry

    e = FsEntry(real_dev="/dev/vda2", mountpoint="/", fs="xfs", mkfs_opts="-L root -K")
    f = FsPlan(e, "/dev/vda2", "xfs", "0a0a0a0a-0000-4000-8000-000000000000", "/", GiB, 0,
               label=e.fs_label)
    assert mkfs_argv(f) == ["mkfs.xfs", "-f", "-q", "-m",
                            "uuid=0a0a0a0a-0000-4000-8000-000000000000", "-L", "root", "-K",
                            "/dev/vda2"]


def test_fstab_honours_mount_dev_options_dump_and_pass(btrfs_plan: InstallPlan,
                                                       tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/fstab").write_text("UUID=old / ext4 defaults 0 1\n"
                                        "tmpfs /tmp tmpfs defaults 0 0\n")
    write_fstab(btrfs_plan.filesystems, tmp_path, btrfs_plan.layout)
    u = btrfs_plan.filesystems[0].uuid
    lines = (tmp_path / "etc/fstab").read_text().splitlines()
    assert lines[4:] == [
        f"UUID={u}\t/\tbtrfs\tsubvol=@,compress=zstd\t0\t0",
        f"UUID={u}\t/home\tbtrfs\tsubvol=@home\t0\t0",
        f"UUID={u}\t/var/log\tbtrfs\tsubvol=@log,noatime\t0\t0",
        f"UUID={btrfs_plan.filesystems[3].uuid}\t/boot\text4\tdefaults\t1\t2",
        f"UUID={btrfs_plan.filesystems[4].uuid}\tnone\tswap\tsw\t0\t0",
        "", "# kept from the image's fstab", "tmpfs /tmp tmpfs defaults 0 0"]


def test_fstab_by_label_and_the_layouts_other_lines(tmp_path: Path) -> None:
    p = plan_for("raid1-lvm.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)])
    write_fstab(p.filesystems, tmp_path, p.layout)
    lines = (tmp_path / "etc/fstab").read_text().splitlines()[4:]
    assert lines[1] == "LABEL=boot\t/boot\text4\tdefaults\t0\t2"  # mount_dev
    assert lines[0].startswith("UUID=") and "\t/\text4\terrors=remount-ro\t0\t1" in lines[0]
    si = make_plan(instructions={"image": {"name": "x"}, "layout": {
        "name": "raid-lvm.xml", "format": "systemimager-xml",
        "text": (LAYOUTS.parent / "si/disks-layout-raid-lvm.xml").read_text()}},
        server="s", hostname="h", targets=[Disk("vda", 20 * GiB), Disk("vdb", 20 * GiB)],
        fw="bios", ram_bytes=GiB, have_tool=lambda t: True, probe=NoProbe())
    write_fstab(si.filesystems, tmp_path, si.layout)
    text = (tmp_path / "etc/fstab").read_text()
    assert "proc\t/proc\tproc\tdefaults\t0\t0" in text
    assert "devpts\t/dev/pts\tdevpts\tmode=0600,gid=5\t0\t0" in text
    # SUSE's subfs is long gone: a line for it would stop the boot.
    assert "# subfs no longer exists: /dev/fd0\t/media/floppy\tsubfs\t" in text


# -- disks whose table is kept ---------------------------------------------------------------

class KeptProbe(NoProbe):
    def signature(self, device: str) -> Signature | None:
        return {"/dev/vdb1": Signature("xfs", "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "data",
                                       1, MiB, 8 * GiB - 2 * MiB)}.get(device)


def test_a_kept_filesystem_is_checked_never_written_nor_mounted(
        fake_commands: FakeCommands, monkeypatch: pytest.MonkeyPatch) -> None:
    p = plan_for("keep-data.toml", [Disk("vda", 8 * GiB), Disk("vdb", 8 * GiB)],
                 probe=KeptProbe(), usage={"/": GiB, "/srv": 100 * MiB})
    srv = p.filesystems[1]
    assert (srv.kept, srv.creates, srv.device, srv.label, srv.size) == (
        True, False, "/dev/vdb1", "data", 8 * GiB - 2 * MiB)
    assert p.disks[1].keeps_table and p.disks[1].partitions[0].start == MiB
    # The image's /srv data lands in / (the kept filesystem is not mounted now):
    # all of the image's 1 GiB is counted there, /srv's 100 MiB not taken off.
    assert p.filesystems[0].needs == int(GiB * 1.03)
    assert [f.mountpoint for f in p.mounts] == ["/"]
    assert "table kept" in p.describe() and " kept" in p.describe()
    # partition: only the first disk is wiped and written.
    written: list[str] = []
    monkeypatch.setattr(partition, "write_table", lambda d, swap: written.append(d.disk.path))
    monkeypatch.setattr(partition, "settle", lambda disks, devices: written.append(disks))
    fake_commands.add(["wipefs"], "")
    partition.partition(p.disks, p.filesystems)
    assert fake_commands.calls == [["wipefs", "--all", "--force", "/dev/vda"]]
    assert written == ["/dev/vda", ["/dev/vda"]]
    # format: nothing on the kept one.
    fake_commands.add(["mke2fs"], "")
    filesystems.make_filesystems(p.filesystems)
    assert all("/dev/vdb1" not in c for c in fake_commands.calls)


def test_swap_on_a_kept_swap_partition_is_not_used(fake_commands: FakeCommands) -> None:
    from agent.plan import FsPlan
    from agent.storage.model import FsEntry

    kept = FsPlan(FsEntry(real_dev="/dev/vdb2", mountpoint="swap", fs="swap", format=False),
                  "/dev/vdb2", "swap", "u", None, GiB, 0, kept=True, creates=False)
    with ExitStack() as stack:
        assert filesystems.use_swap((kept,), stack).devices == []
    assert fake_commands.calls == []


def test_existing_partitions_come_from_blkid(fake_commands: FakeCommands,
                                             tmp_path: Path) -> None:
    from agent.disks import Probe

    dev = tmp_path / "loop0p3"
    dev.touch()
    sample = (Path(__file__).resolve().parent / "data/agent/blkid-p-btrfs.txt").read_text()
    fake_commands.add(["blkid", "-p", "-o", "export", str(dev)], sample)
    sig = Probe().signature(str(dev))
    assert sig == Signature("btrfs", "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d", "data", 3,
                            208896 * 512, 313344 * 512)
    assert Probe().signature(str(tmp_path / "nothing")) is None
    fake_commands.add(["blkid", "-p", "-o", "export", str(dev)], FakeResult(returncode=2))
    assert Probe().signature(str(dev)) == Signature()
    assert os.path.exists(dev)


def test_libdevmapper_does_not_wait_for_udev(luks_plan: InstallPlan, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             no_wait: list[list[str]]) -> None:
    envs: dict[str, set[str]] = {}

    def run(argv: list[str], **kw: Any) -> None:
        env = kw.get("env") or {}
        envs.setdefault(argv[0], set()).add(env.get("DM_DISABLE_UDEV", "-"))

    monkeypatch.setattr(assemble_mod, "run", run)
    monkeypatch.setattr(partition, "run", run)  # wipefs: agent.partition.wipe
    assemble(luks_plan, lambda s: None, key_dir=tmp_path / "keys")
    assert envs == {"wipefs": {"-"}, "mdadm": {"-"}, "cryptsetup": {"1"}, "lvm": {"1"}}
