"""bootenv.modules (which kernel modules go in), bootenv.tools (which
programs) and bootenv.freeze's pure helpers.

The modules.dep sample is an excerpt of Debian's 6.1.0-50-cloud-amd64 one:
the lines of a few storage, network, filesystem, RAID and InfiniBand
modules and everything they depend on, unchanged."""

from __future__ import annotations

import lzma
from pathlib import Path

import pytest

from bootenv import freeze, modules, tools
from sysclone.errors import ConfigError, SyscloneError
from tests.conftest import DATA

KVER = "6.1.0-50-cloud-amd64"
DEP = DATA / "bootenv" / f"modules.dep.{KVER}"

# What the standard groups take from the excerpt, dependencies included.
STANDARD = {
    "kernel/drivers/block/loop.ko", "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/cdrom/cdrom.ko", "kernel/drivers/net/ethernet/amazon/ena/ena.ko",
    "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/nvme/host/nvme-fabrics.ko", "kernel/drivers/nvme/host/nvme-tcp.ko",
    "kernel/drivers/scsi/scsi_common.ko", "kernel/drivers/scsi/scsi_mod.ko",
    "kernel/drivers/scsi/sd_mod.ko", "kernel/drivers/scsi/sr_mod.ko",
    "kernel/drivers/scsi/virtio_scsi.ko", "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/watchdog/softdog.ko",
    "kernel/drivers/watchdog/watchdog.ko", "kernel/fs/efivarfs/efivarfs.ko",
    "kernel/fs/fat/fat.ko", "kernel/fs/fat/vfat.ko", "kernel/fs/isofs/isofs.ko",
    "kernel/fs/nls/nls_ascii.ko", "kernel/fs/nls/nls_utf8.ko", "kernel/fs/xfs/xfs.ko",
    "kernel/lib/libcrc32c.ko",
    "kernel/net/core/failover.ko", "kernel/net/packet/af_packet_diag.ko",
    "kernel/drivers/net/ethernet/mellanox/mlx4/mlx4_core.ko",
    "kernel/drivers/net/ethernet/mellanox/mlx4/mlx4_en.ko",
}


@pytest.fixture
def moddir(tmp_path: Path) -> Path:
    """A fake lib/modules/<kver>: the sample modules.dep and a file per module,
    each `size` bytes long where size is the length of its path."""
    d = tmp_path / "lib/modules" / KVER
    d.mkdir(parents=True)
    text = DEP.read_text()
    (d / "modules.dep").write_text(text)
    for mod in modules.parse_modules_dep(text):
        p = d / mod
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x7fELF" + mod.encode() * 50)
    (d / "modules.order").write_text("kernel/fs/xfs/xfs.ko\n")
    (d / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
    return d


def test_parse_modules_dep():
    deps = modules.parse_modules_dep(
        "kernel/a.ko: kernel/b.ko kernel/c.ko\nkernel/b.ko:\n\ngarbage line\nkernel/c.ko:\n")
    assert deps == {"kernel/a.ko": ["kernel/b.ko", "kernel/c.ko"], "kernel/b.ko": [],
                    "kernel/c.ko": []}


def test_parse_real_excerpt():
    deps = modules.parse_modules_dep(DEP.read_text())
    assert len(deps) == 46
    assert deps["kernel/fs/btrfs/btrfs.ko"] == [
        "kernel/crypto/xor.ko", "kernel/lib/raid6/raid6_pq.ko", "kernel/lib/zstd/zstd_compress.ko",
        "kernel/lib/libcrc32c.ko"]
    assert deps["kernel/drivers/md/md-mod.ko"] == []


def test_close_deps_is_transitive_and_handles_cycles():
    deps = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["e"], "e": []}
    assert modules.close_deps({"a"}, deps) == {"a", "b", "c"}
    assert modules.close_deps({"d"}, deps) == {"d", "e"}
    assert modules.close_deps(set(), deps) == set()
    assert modules.close_deps({"unknown"}, deps) == {"unknown"}


def test_match_groups_applies_excludes():
    mods = ["kernel/drivers/scsi/sd_mod.ko", "kernel/drivers/scsi/scsi_debug.ko",
            "kernel/drivers/scsi/qla2xxx/qla2xxx.ko", "kernel/drivers/nvme/target/nvmet.ko",
            "kernel/drivers/nvme/host/nvme.ko", "kernel/fs/xfs/xfs.ko"]
    got = modules.match_groups(mods, modules.MODULE_GROUPS["storage"])
    assert got == {"kernel/drivers/scsi/sd_mod.ko", "kernel/drivers/nvme/host/nvme.ko"}
    assert modules.match_groups(mods, ["drivers/scsi/*"], exclude=()) == {
        "kernel/drivers/scsi/sd_mod.ko", "kernel/drivers/scsi/scsi_debug.ko",
        "kernel/drivers/scsi/qla2xxx/qla2xxx.ko"}


def test_groups_for_adds_what_tools_need_once():
    assert modules.groups_for(("storage",), ("core", "raid", "lvm")) == ("storage", "md", "dm")
    assert modules.groups_for(("storage", "dm"), ("crypt",)) == ("storage", "dm", "crypt")
    assert modules.groups_for(("storage",), tools.DEFAULT_TOOLS) == (
        "storage", "btrfs", "md", "dm", "crypt")
    assert modules.groups_for(("storage",), ("btrfs",)) == ("storage", "btrfs")
    assert modules.groups_for(("network",), ("core", "ext4")) == ("network",)


def test_select_standard_groups(moddir):
    sel = modules.select(moddir)
    assert sel.kver == KVER
    assert set(sel.modules) == STANDARD
    assert list(sel.modules) == sorted(sel.modules)
    assert sel.size == sum((moddir / m).stat().st_size for m in STANDARD)
    # excluded even though a broad glob matches them
    assert "kernel/drivers/scsi/scsi_debug.ko" not in sel.modules
    assert "kernel/drivers/nvme/host/nvme-rdma.ko" not in sel.modules
    # Mellanox NICs are common in servers: standard (their InfiniBand side is not)
    assert "kernel/drivers/net/ethernet/mellanox/mlx4/mlx4_en.ko" in sel.modules
    assert "kernel/drivers/infiniband/core/ib_core.ko" not in sel.modules


def test_select_raid_and_btrfs_bring_their_dependencies(moddir):
    sel = modules.select(moddir, groups=("raid-dm", "btrfs"))
    assert set(sel.modules) == {
        "kernel/drivers/md/raid1.ko", "kernel/drivers/md/md-mod.ko", "kernel/drivers/md/dm-mod.ko",
        "kernel/fs/btrfs/btrfs.ko", "kernel/crypto/xor.ko", "kernel/lib/raid6/raid6_pq.ko",
        "kernel/lib/zstd/zstd_compress.ko", "kernel/lib/libcrc32c.ko"}


def test_select_extra_modules_by_name_or_path(moddir):
    sel = modules.select(moddir, groups=(), extra=("raid1", "dm_mod", "nls-ascii",
                                                   "kernel/fs/configfs/configfs.ko"))
    assert set(sel.modules) == {"kernel/drivers/md/raid1.ko", "kernel/drivers/md/md-mod.ko",
                                "kernel/drivers/md/dm-mod.ko", "kernel/fs/nls/nls_ascii.ko",
                                "kernel/fs/configfs/configfs.ko"}
    with pytest.raises(ConfigError, match=f"kernel {KVER} has no module no_such_module"):
        modules.select(moddir, groups=(), extra=("raid1", "no_such_module"))


def test_select_hpc_network_adds_infiniband(moddir):
    mlx = {"kernel/drivers/net/ethernet/mellanox/mlx4/mlx4_en.ko",
           "kernel/drivers/net/ethernet/mellanox/mlx4/mlx4_core.ko"}
    assert mlx <= set(modules.select(moddir, groups=("network",)).modules)
    sel = modules.select(moddir, groups=("network", "hpc-network"))
    assert mlx <= set(sel.modules)
    assert {"kernel/drivers/infiniband/core/rdma_cm.ko",
            "kernel/drivers/infiniband/core/ib_core.ko"} <= set(sel.modules)
    # the other exclusions still hold
    assert "kernel/drivers/scsi/scsi_debug.ko" not in \
        modules.select(moddir, groups=("storage", "hpc-network")).modules


def test_select_unknown_group(moddir):
    with pytest.raises(SyscloneError, match="unknown module group 'sound'") as e:
        modules.select(moddir, groups=("storage", "sound"))
    assert e.value.hint and "storage" in e.value.hint and "btrfs" in e.value.hint


def test_select_needs_modules_dep(tmp_path):
    with pytest.raises(SyscloneError, match=r"modules\.dep is missing") as e:
        modules.select(tmp_path)
    assert e.value.hint == "run depmod for this kernel"


def test_compress_module_is_xz_crc32_and_deterministic():
    data = b"\x7fELF" + bytes(range(256)) * 40
    out = modules.compress_module(data)
    assert out.startswith(b"\xfd7zXZ\x00")
    # stream flags: check type 1 = CRC32 (what the kernel's xz decoder supports)
    assert out[7] == 0x01
    assert lzma.decompress(out) == data
    assert modules.compress_module(data) == out


def test_install_copies_compresses_and_runs_depmod(moddir, tmp_path, fake_commands):
    top = tmp_path / "staging"
    top.mkdir()
    sel = modules.select(moddir, groups=("filesystems",))
    fake_commands.add(["depmod", "-b", str(top / "usr"), KVER])
    modules.install(sel, moddir, top)
    dest = top / "usr/lib/modules" / KVER
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*.ko*"))
    assert got == sorted(m + ".xz" for m in sel.modules)
    xfs = dest / "kernel/fs/xfs/xfs.ko.xz"
    assert lzma.decompress(xfs.read_bytes()) == (moddir / "kernel/fs/xfs/xfs.ko").read_bytes()
    # index files that exist are carried over; missing ones are skipped
    assert (dest / "modules.order").read_text() == "kernel/fs/xfs/xfs.ko\n"
    assert (dest / "modules.builtin").read_text() == "kernel/fs/ext4/ext4.ko\n"
    assert not (dest / "modules.builtin.modinfo").exists()
    assert fake_commands.calls == [["depmod", "-b", str(top / "usr"), KVER]]


def test_install_uncompressed_and_precompressed(moddir, tmp_path, fake_commands):
    (moddir / "kernel/fs/xfs/xfs.ko.xz").write_bytes(b"already xz")
    sel = modules.ModuleSelection(KVER, ("kernel/fs/fat/fat.ko", "kernel/fs/xfs/xfs.ko.xz"), 0)
    top = tmp_path / "staging"
    fake_commands.add(["depmod"])
    modules.install(sel, moddir, top, compress=False)
    dest = top / "usr/lib/modules" / KVER
    assert (dest / "kernel/fs/fat/fat.ko").read_bytes() == \
        (moddir / "kernel/fs/fat/fat.ko").read_bytes()
    assert (dest / "kernel/fs/xfs/xfs.ko.xz").read_bytes() == b"already xz"


# ---------------------------------------------------------------- tools ---

def test_tool_groups_resolve_in_order_without_duplicates():
    got = tools.resolve(("core", "ext4", "core"))
    assert got[: len(tools.TOOL_GROUPS["core"])] == tools.TOOL_GROUPS["core"]
    assert got[len(tools.TOOL_GROUPS["core"]):] == tools.TOOL_GROUPS["ext4"]
    assert len(got) == len(set(got))
    assert tools.resolve(()) == ()


def test_default_tools_cover_what_the_agent_formats_with():
    got = tools.resolve(tools.DEFAULT_TOOLS)
    for t in ("rsync", "wipefs", "partx", "mkfs.ext4", "mkfs.xfs", "mkfs.vfat", "mkswap", "kmod"):
        assert t in got
    # The agent partitions with libparted; sfdisk is only in the debug group.
    assert "sfdisk" not in got and "sfdisk" in tools.resolve(("debug",))


def test_unknown_tool_group():
    with pytest.raises(ConfigError, match="unknown tool group 'zfs'") as e:
        tools.resolve(("core", "zfs"))
    assert e.value.hint == "one of " + ", ".join(tools.TOOL_GROUPS)


def test_every_tool_group_implied_by_modules_exists():
    assert set(modules.IMPLIED_BY_TOOLS) <= set(tools.TOOL_GROUPS)
    assert {g for gs in modules.IMPLIED_BY_TOOLS.values() for g in gs} <= \
        set(modules.MODULE_GROUPS)
    assert set(modules.STANDARD_GROUPS) <= set(modules.MODULE_GROUPS)


# --------------------------------------------------------------- freeze ---

@pytest.mark.parametrize(("name", "src", "dest"), [
    ("os", "/usr/lib/python3.11/os.py", "os.pyc"),
    ("json", "/usr/lib/python3.11/json/__init__.py", "json/__init__.pyc"),
    ("json.decoder", "/usr/lib/python3.11/json/decoder.py", "json/decoder.pyc"),
    ("agent.storage.model", "/work/main/agent/storage/model.py", "agent/storage/model.pyc"),
    ("_ssl", "/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so",
     "lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so"),
    ("_ped", "/venv/lib/python3.11/site-packages/_ped.cpython-311-x86_64-linux-gnu.so",
     "_ped.cpython-311-x86_64-linux-gnu.so"),
    ("pkg.sub._speedups", "/venv/lib/python3.11/site-packages/pkg/sub/_speedups.abi3.so",
     "pkg/sub/_speedups.abi3.so"),
    ("frozen_thing", "/usr/lib/python3.11/frozen_thing.pyc", None),
    ("weird", "<frozen>", None),
])
def test_freeze_dest(name, src, dest):
    assert freeze._dest(name, src) == dest


def test_frozen_agent_paths(tmp_path):
    fa = freeze.FrozenAgent(tmp_path / "agent", "k" * 24, "/usr/bin/python3.11")
    assert fa.executable == tmp_path / "agent/usr/bin/sysclone-agent"


def test_freeze_wrapper_runs_the_agent_isolated():
    assert freeze.WRAPPER.startswith("#!/bin/sh\n")
    assert f"exec /usr/bin/python{freeze.PYVER} -I -S -c" in freeze.WRAPPER
    assert freeze.WRAPPER.rstrip().endswith('"$@"')


def test_excludes_keep_host_only_packages_out_of_the_agent():
    for pkg in ("imageserver", "bootenv", "kernels", "mkmedia", "ci", "sysclone.cli", "rich"):
        assert pkg in freeze.EXCLUDES
    assert not set(freeze.SOURCE_PACKAGES) & set(freeze.EXCLUDES)
