"""The agent's disk path on a real (loop) disk, without a VM: plan,
partition, format, mount, pull the image from a real rsync daemon, write
fstab and hostname.  Checked with tools independent of the agent: sfdisk -J,
blkid and rsync's own itemized dry run."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from agent import disks
from agent.configure.fstab import write_fstab
from agent.configure.system import set_hostname
from agent.fetch import pull_except, pull_only, pull_sparse
from agent.filesystems import make_filesystems, mount_all
from agent.partition import partition
from agent.planner import make_plan
from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.serve import ServeConfig, free_port, serving
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from tests.verify import blkid_uuid, fstab_uuids, itemized_differences, sh

BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"


def make_image(tree: Path) -> None:
    """A small image with what rsync must carry over: hard links, xattrs,
    numeric owners, a sparse file, a device node, a fifo, symlinks."""
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("golden\n")
    (tree / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n")
    (tree / "etc/fstab").write_text("# empty\nproc /proc proc defaults 0 0\n")
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_bytes(os.urandom(300_000))
    os.link(tree / "usr/bin/tool", tree / "usr/bin/tool-again")
    (tree / "usr/bin/tool").chmod(0o4755)
    os.symlink("tool", tree / "usr/bin/tool-link")
    (tree / "home/user").mkdir(parents=True)
    (tree / "home/user/notes").write_text("mine\n")
    os.chown(tree / "home/user", 1234, 5678)
    os.chown(tree / "home/user/notes", 1234, 5678)
    os.setxattr(tree / "usr/bin/tool", "user.sysclone", b"kept")
    sh("setfacl", "-m", "u:4321:r", str(tree / "home/user/notes"))
    (tree / "var").mkdir()
    with (tree / "var/sparse").open("wb") as f:
        f.seek(512 << 20)
        f.write(b"end")
    (tree / "dev").mkdir()
    os.mknod(tree / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(tree / "var/fifo")
    for d in ("proc", "sys", "run", "tmp"):
        (tree / d).mkdir()
    # What the server lets an install fetch last (imageserver.fetchorder):
    # module objects beside the files the initrd check reads, documentation
    # with hard links inside it, package lists; and a cache whose file is
    # hard-linked from outside it, so it must come with the rest.
    mods = tree / "usr/lib/modules/6.1.0-9-amd64"
    (mods / "kernel/drivers/md").mkdir(parents=True)
    (mods / "kernel/drivers/md/raid1.ko").write_bytes(os.urandom(50_000))
    (mods / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    (tree / "usr/share/doc/tool").mkdir(parents=True)
    (tree / "usr/share/doc/tool/copyright").write_text("free\n")
    os.link(tree / "usr/share/doc/tool/copyright", tree / "usr/share/doc/tool/COPYING")
    (tree / "var/lib/apt/lists").mkdir(parents=True)
    (tree / "var/lib/apt/lists/deb_Packages").write_text("Package: tool\n")
    (tree / "var/cache/apt").mkdir(parents=True)
    os.link(tree / "usr/bin/tool", tree / "var/cache/apt/tool.bin")


@pytest.fixture
def served(state: StateRoot):
    make_image(state.images / "tiny")
    ImageStore(state).record("tiny", origin="test")
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port(), default_image="tiny")
    with serving(state, cfg) as srv:
        yield srv


def test_install_onto_loop_disk(state: StateRoot, served, loopdev, tmp_path: Path) -> None:
    dev, _ = loopdev
    name = Path(dev).name
    instr = resolve(state, ClientQuery("node7", None, "tiny"),
                    ServerPolicy(rsync_port=served.config.rsync_port))
    target = disks.Disk(name=name, size=2 << 30)
    plan = make_plan(instructions=instr, server="127.0.0.1", hostname="node7",
                     targets=[target], fw="bios", ram_bytes=512 << 20)
    assert [p.device for p in plan.disks[0].partitions] == [f"{dev}p1", f"{dev}p2", f"{dev}p3"]

    partition(plan.disks, plan.filesystems)
    make_filesystems(plan.filesystems)
    root = tmp_path / "sysroot"
    # The cache shares an inode with /usr/bin: rsync keeps hard links only
    # within one run, so the server keeps it in the first.
    assert plan.image.deferred == ("usr/lib/modules/6.1.0-9-amd64/kernel", "usr/share/doc",
                                   "var/lib/apt/lists")
    with ExitStack() as stack:
        mount_all(plan.mounts, root, stack)
        # The runs the agent makes (agent.flow: fetch, its sparse files
        # apart, then fetch-rest).
        assert plan.image.sparse == ("var/sparse",)
        pull_except(plan.image.url, root, plan.image.deferred, plan.image.sparse)
        assert not (root / "var/sparse").exists()
        pull_sparse(plan.image.url, root, plan.image.sparse)
        assert not (root / "usr/share/doc").exists()
        assert not (root / "usr/lib/modules/6.1.0-9-amd64/kernel").exists()
        assert (root / "usr/lib/modules/6.1.0-9-amd64/modules.builtin").is_file()
        assert os.stat(root / "var/cache/apt/tool.bin").st_ino == \
            os.stat(root / "usr/bin/tool").st_ino
        pull_only(plan.image.url, root, plan.image.deferred, plan.image.sparse)
        assert os.stat(root / "usr/share/doc/tool/copyright").st_ino == \
            os.stat(root / "usr/share/doc/tool/COPYING").st_ino
        written = write_fstab(plan.filesystems, root) + set_hostname(root, "node7", "lab")
        # Independent check 1: rsync's own itemized, checksummed dry run
        # shows no difference but what the configure step wrote.
        diff = itemized_differences(state.images / "tiny", root)
        assert set(diff) == {"etc/fstab", "etc/hostname", "etc/hosts", "lost+found"}, diff
        assert diff["lost+found"] == "*deleting"  # made by mkfs, not in the image
        assert sorted(written) == ["/etc/fstab", "/etc/hostname", "/etc/hosts"]
        # Sparse stays sparse; owners and xattrs survive.
        st = (root / "var/sparse").stat()
        assert st.st_size == (512 << 20) + 3 and st.st_blocks * 512 < (1 << 20)
        assert (root / "home/user/notes").stat().st_uid == 1234
        assert os.getxattr(root / "usr/bin/tool", "user.sysclone") == b"kept"
        assert "user:4321:r--" in sh("getfacl", "-n", str(root / "home/user/notes"))
        assert os.stat(root / "usr/bin/tool").st_ino == os.stat(root / "usr/bin/tool-again").st_ino
        fstab = (root / "etc/fstab").read_text()
        assert "proc /proc proc defaults 0 0" in fstab  # the image's own line is kept

    # Independent check 2: the partition table as sfdisk sees it.
    table = json.loads(sh("sfdisk", "-J", dev))["partitiontable"]
    assert table["label"] == "gpt"
    assert table["partitions"][0]["type"] == BIOS_BOOT_GUID
    assert table["partitions"][0]["size"] * 512 == 1 << 20
    # Independent check 3: every fstab UUID is what blkid reads off the disk.
    uuids = fstab_uuids(fstab)
    assert set(uuids) == {"/", "swap"}
    for f in plan.filesystems:
        assert blkid_uuid(f.device) == uuids[f.mountpoint or "swap"]
    assert sh("blkid", "-s", "TYPE", "-o", "value", f"{dev}p3").strip() == "swap"


def test_plan_rejects_too_small_disk_before_touching_it(state: StateRoot, served,
                                                        loopdev) -> None:
    dev, backing = loopdev
    image = state.images / "tiny"
    (image / "big").write_bytes(b"\0" * 10)  # the server's recorded usage is what counts
    info = ImageStore(state).record("tiny", origin="test")
    assert info.usage is not None
    instr = resolve(state, ClientQuery("node7", None, "tiny"),
                    ServerPolicy(rsync_port=served.config.rsync_port))
    instr["image"]["usage"]["/"] = 3 << 30  # pretend the image holds 3 GiB
    # Even the swap shrunk away, / cannot hold 3 GiB on a 2 GiB disk.
    with pytest.raises(ConfigError, match=r"too small for its partitions even scaled down "
                                          r"\(partition 2 at least 3,436 MiB: the image data"):
        make_plan(instructions=instr, server="127.0.0.1", hostname="node7",
                  targets=[disks.Disk(Path(dev).name, 2 << 30)], fw="bios",
                  ram_bytes=512 << 20)
    # Nothing was written: the backing file is still entirely unallocated.
    assert backing.stat().st_blocks == 0
    assert subprocess.run(["blkid", dev], capture_output=True).returncode == 2
