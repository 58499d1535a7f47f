"""bootenv.drivers (which modules and firmware a boot environment carries)
and bootenv.check (can it drive a machine?), on real module indexes of
Debian 12's generic and cloud kernels and a golden VM's real /proc/modules
and modaliases (tests/unit/data/kernels/README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bootenv import check, drivers
from bootenv.drivers import DriverRequest
from kernels.moduledb import ModuleDB, idle_modules, kernel_aliases, loaded_modules, parse_dep
from sysclone.errors import ConfigError
from tests.conftest import DATA

KERNELS = DATA / "kernels"
GOLDEN_MODULES = (KERNELS / "proc-modules.golden-vm").read_text()
GOLDEN_ALIASES = (KERNELS / "modaliases.golden-vm").read_text()
TOOLS = ("core", "ext4")


def kernel_dir(tmp_path: Path, kver: str, firmware: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """lib/modules/<kver> from the fixture, a small file per module, and a
    lib/firmware holding `firmware`."""
    mdir = tmp_path / kver / "lib/modules" / kver
    shutil.copytree(KERNELS / kver, mdir)
    for path in parse_dep((mdir / "modules.dep").read_text()):
        p = mdir / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\x7fELF" + b"m" * 1000)
    fw = tmp_path / kver / "lib/firmware"
    for f in firmware:
        (fw / f).parent.mkdir(parents=True, exist_ok=True)
        (fw / f).write_bytes(b"f" * 100)
    fw.mkdir(parents=True, exist_ok=True)
    return mdir, fw


@pytest.fixture
def generic(tmp_path):
    mdir, fw = kernel_dir(tmp_path, "6.1.0-50-amd64",
                          ("tigon/tg3.bin", "tigon/tg3_tso.bin", "rtl_nic/rtl8168d-1.fw.xz"))
    return ModuleDB.load(mdir), mdir, fw


@pytest.fixture
def cloud(tmp_path):
    mdir, fw = kernel_dir(tmp_path, "6.1.0-50-cloud-amd64")
    return ModuleDB.load(mdir), mdir, fw


def test_request_parsing():
    assert DriverRequest.parse(None) == DriverRequest("standard")
    assert DriverRequest.parse("all", ("tg3",)).add == ("tg3",)
    r = DriverRequest.parse("storage,e1000e, mlx5_*")
    assert (r.how, r.groups, r.names) == ("list", ("storage",), ("e1000e", "mlx5_*"))
    assert DriverRequest.parse("loaded", (), ["virtio_net"]).names == ("virtio_net",)
    with pytest.raises(ConfigError, match="empty"):
        DriverRequest.parse(",")


def test_standard_drives_bare_metal(generic):
    db, mdir, fw = generic
    d = drivers.choose(db, mdir, fw, DriverRequest(), TOOLS)
    for m in ("ahci", "nvme", "virtio_blk", "virtio_scsi", "virtio_net", "e1000", "e1000e",
              "igb", "8139too", "r8169", "tg3", "bnx2", "megaraid_sas", "mpt3sas", "ext4",
              "sd_mod", "virtio_pci"):
        assert m in d.names, m
    assert d.groups == ("storage", "network", "filesystems", "watchdog")
    # ext4's soft dependency came along; built-in af_packet did not (nothing to copy)
    assert "crc32c_generic" in d.names and "af_packet" not in d.names
    assert d.paths == tuple(sorted(d.paths)) and d.size == 1004 * len(d.paths)


def test_firmware_carried_and_lacking(generic):
    db, mdir, fw = generic
    d = drivers.choose(db, mdir, fw, DriverRequest("list", (), ("tg3", "r8169", "bnx2")), TOOLS)
    assert d.firmware == ("rtl_nic/rtl8168d-1.fw.xz", "tigon/tg3.bin", "tigon/tg3_tso.bin")
    assert d.firmware_size == 300
    assert set(d.firmware_missing["tg3"]) == {"tigon/tg3_tso5.bin", "tigon/tg357766.bin"}
    assert len(d.firmware_missing["bnx2"]) == 5
    staging = mdir.parents[3] / "staging"
    drivers.install_firmware(d, fw, staging)
    assert (staging / "usr/lib/firmware/tigon/tg3.bin").read_bytes() == b"f" * 100
    m = drivers.manifest(db, d)
    tg3 = next(x for x in m["list"] if x["name"] == "tg3")
    assert sorted(tg3["firmware"]) == ["tigon/tg3.bin", "tigon/tg3_tso.bin"]
    assert "tigon/tg3_tso5.bin" in tg3["firmware_missing"]
    assert "pci:v000014E4d00001644sv*sd*bc*sc*i*" in tg3["aliases"]
    assert drivers.firmware_manifest(d)["count"] == 3


def test_all_is_every_module(generic):
    db, mdir, fw = generic
    d = drivers.choose(db, mdir, fw, DriverRequest("all"), TOOLS)
    assert len(d.names) == len(db.loadable) == 52


def test_loaded_keeps_the_clients_modules_with_their_closure(cloud):
    db, mdir, fw = cloud
    req = DriverRequest.parse("loaded", loaded=loaded_modules(GOLDEN_MODULES))
    d = drivers.choose(db, mdir, fw, req, TOOLS)
    assert {"virtio_blk", "virtio_net", "virtio_pci", "crc32c_intel", "dm_mod"} <= set(d.names)
    assert "virtio_scsi" not in d.names and "sd_mod" not in d.names
    assert d.groups == ()
    # --add-modules adds, with dependencies (sd_mod needs scsi_mod...)
    more = drivers.choose(db, mdir, fw, DriverRequest("loaded", (), req.names, ("virtio_scsi",)),
                          TOOLS)
    assert set(more.names) - set(d.names) >= {"virtio_scsi", "scsi_mod"}


RUNNING_ONLY = {"fuse", "autofs4", "configfs", "binfmt_misc", "ip_tables", "x_tables"}


def test_loaded_leaves_out_what_serves_a_running_system_only(cloud):
    db, mdir, fw = cloud
    req = DriverRequest.parse("loaded", loaded=loaded_modules(GOLDEN_MODULES))
    assert set(req.names) >= RUNNING_ONLY  # the golden VM had them loaded
    d = drivers.choose(db, mdir, fw, req, TOOLS)
    assert set(d.left_out) == RUNNING_ONLY and not RUNNING_ONLY & set(d.names)
    assert {"virtio_blk", "virtio_net", "loop", "qemu_fw_cfg"} <= set(d.names)
    assert drivers.manifest(db, d)["left_out"] == sorted(RUNNING_ONLY)
    # --add-modules brings one back, with what it needs (x_tables)
    more = drivers.choose(db, mdir, fw, DriverRequest("loaded", (), req.names, ("ip_tables",)),
                          TOOLS)
    assert {"ip_tables", "x_tables"} <= set(more.names)
    assert set(more.left_out) == RUNNING_ONLY - {"ip_tables", "x_tables"}
    # other choices take what they name
    listed = drivers.choose(db, mdir, fw, DriverRequest.parse("fuse"), TOOLS)
    assert "fuse" in listed.names and listed.left_out == ()


@pytest.mark.parametrize("path, only", [
    ("kernel/fs/fuse/fuse.ko", True), ("kernel/fs/binfmt_misc.ko", True),
    ("kernel/net/ipv6/netfilter/ip6_tables.ko", True), ("kernel/net/packet/af_packet.ko", False),
    ("kernel/fs/ext4/ext4.ko", False), ("kernel/fs/fuse-ish/x.ko", False), ("", False)])
def test_running_system_only_by_path(path, only):
    assert drivers.running_system_only(path) is only


def test_loaded_from_another_kernel_build_warns(cloud, caplog):
    db, mdir, fw = cloud
    d = drivers.choose(db, mdir, fw, DriverRequest("loaded", (), ("virtio_blk", "zfs")), TOOLS)
    assert "virtio_blk" in d.names and "no module zfs" in caplog.text


def test_unknown_module_name_is_an_error(generic):
    db, mdir, fw = generic
    with pytest.raises(ConfigError, match="has no module e1000x"):
        drivers.choose(db, mdir, fw, DriverRequest("standard", add=("e1000x",)), TOOLS)
    with pytest.raises(ConfigError, match="no module listing"):
        drivers.choose(db, mdir, fw, DriverRequest("loaded"), TOOLS)


# ------------------------------------------------------------------ check ---

def manifest_for(db: ModuleDB, d: drivers.DriverSet, kver: str) -> dict:
    return {"kernel": {"version": kver, "name": "k"}, "modules": drivers.manifest(db, d)}


def inventory(pci: list[dict], disks: list[dict] = (), nics: list[dict] = (),
              install: str = "") -> dict:
    return {"pci": pci, "disks": list(disks), "nics": list(nics), "install_nic": install}


# The golden VM's devices (q35), as the agent's inventory lists them.
VIRTIO_NET = {"slot": "0000:00:02.0", "vendor": "1af4", "device": "1000", "class": "020000",
              "driver": "virtio-pci",
              "modalias": "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
              "children": ["virtio:d00000001v00001AF4"]}
VIRTIO_BLK = {"slot": "0000:00:03.0", "vendor": "1af4", "device": "1001", "class": "010000",
              "driver": "virtio-pci",
              "modalias": "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
              "children": ["virtio:d00000002v00001AF4"]}
AHCI = {"slot": "0000:00:1f.2", "vendor": "8086", "device": "2922", "class": "010601",
        "driver": "ahci", "modalias": "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
        "children": []}
NVME = {"slot": "0000:00:04.0", "vendor": "1b36", "device": "0010", "class": "010802",
        "driver": "nvme", "modalias": "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
        "children": []}
VIRTIO_SCSI = {"slot": "0000:00:05.0", "vendor": "1af4", "device": "1004", "class": "010000",
               "driver": "virtio-pci",
               "modalias": "pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00",
               "children": ["virtio:d00000008v00001AF4"]}
GOLDEN = inventory([VIRTIO_NET, VIRTIO_BLK, AHCI],
                   disks=[{"name": "vda", "controller": "0000:00:03.0"}],
                   nics=[{"name": "ens2", "mac": "52:54:00:5c:10:01", "pci": "0000:00:02.0"}],
                   install="52:54:00:5c:10:01")


def run_check(db, d, kver, machine: dict | str, full_dir: Path | None):
    carried = check.Carried.from_manifest(manifest_for(db, d, kver), "manifest.json")
    text = machine if isinstance(machine, str) else json.dumps(machine)
    devices, _notes = check.parse_machine(text, "machine")
    return check.check(devices, carried, kernel_aliases(full_dir) if full_dir else None)


@pytest.fixture
def uyok_loaded(cloud):
    db, mdir, fw = cloud
    req = DriverRequest.parse("loaded", loaded=loaded_modules(GOLDEN_MODULES))
    return db, drivers.choose(db, mdir, fw, req, TOOLS), mdir


def test_the_golden_vm_passes_its_own_uyok_boot_environment(uyok_loaded):
    db, d, mdir = uyok_loaded
    r = run_check(db, d, db.kver, GOLDEN, mdir)
    assert r.ok, r.problems
    rows = {row.device.label.split()[0]: row for row in r.rows}
    assert rows["0000:00:03.0"].modules == ("virtio_pci", "virtio_blk")
    # The AHCI controller has no disk: not needed, and the cloud kernel has no driver
    assert not rows["0000:00:1f.2"].ok and not rows["0000:00:1f.2"].device.needed
    assert "no module of the kernel matches" in rows["0000:00:1f.2"].describe()


def test_a_controller_whose_module_was_left_out_fails_naming_it(uyok_loaded):
    db, d, mdir = uyok_loaded
    machine = inventory([VIRTIO_NET, VIRTIO_SCSI],
                        disks=[{"name": "sda", "controller": "0000:00:05.0"}])
    r = run_check(db, d, db.kver, machine, mdir)
    assert not r.ok
    assert r.problems == ("storage 0000:00:05.0 1af4:1004 (010000): virtio_pci, but no driver: "
                          "virtio_scsi would drive it",)


def test_nvme_module_left_out_of_a_generic_kernel_build(generic):
    db, mdir, fw = generic
    d = drivers.choose(db, mdir, fw, DriverRequest("list", (), ("virtio_net", "virtio_pci")),
                       TOOLS)
    machine = inventory([VIRTIO_NET, NVME], disks=[{"name": "nvme0n1",
                                                   "controller": "0000:00:04.0"}])
    r = run_check(db, d, db.kver, machine, mdir)
    assert not r.ok and "no driver: nvme would drive it" in r.problems[0]
    with_nvme = drivers.choose(db, mdir, fw, DriverRequest("list", (), ("virtio_*", "nvme")),
                               TOOLS)
    assert run_check(db, with_nvme, db.kver, machine, mdir).ok


def test_builtin_drivers_count_as_present(uyok_loaded):
    # The cloud kernel has nvme built in (modules.builtin), without aliases:
    # the driver bound on the machine says so.
    db, d, mdir = uyok_loaded
    machine = inventory([VIRTIO_NET, NVME], disks=[{"name": "nvme0n1",
                                                   "controller": "0000:00:04.0"}])
    r = run_check(db, d, db.kver, machine, mdir)
    assert r.ok, r.problems
    assert r.rows[1].modules == ("nvme (built in)",)


def test_the_install_nic_must_be_driven(uyok_loaded):
    db, d, _mdir = uyok_loaded
    e1000e = {"slot": "0000:00:06.0", "vendor": "8086", "device": "10d3", "class": "020000",
              "driver": "e1000e",
              "modalias": "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00"}
    machine = inventory([VIRTIO_BLK, VIRTIO_NET, e1000e],
                        disks=[{"name": "vda", "controller": "0000:00:03.0"}],
                        nics=[{"name": "eno1", "mac": "aa:bb:cc:00:00:01", "pci": "0000:00:06.0"},
                              {"name": "ens2", "mac": "52:54:00:00:00:02",
                               "pci": "0000:00:02.0"}],
                        install="aa:bb:cc:00:00:01")
    r = run_check(db, d, db.kver, machine, None)
    assert not r.ok and r.problems[0].startswith("network 0000:00:06.0 8086:10d3")
    # without the full kernel the missing module cannot be named
    assert "no module of the kernel matches" in r.problems[0]


def test_plain_modaliases(uyok_loaded, generic):
    db, d, mdir = uyok_loaded
    r = run_check(db, d, db.kver, GOLDEN_ALIASES, mdir)
    # Plain aliases do not say which controller has disks: the AHCI one of
    # the q35 machine counts, and the cloud kernel cannot drive it.
    assert not r.ok
    assert any("8086d00002922" in p and "no module of the kernel matches" in p
               for p in r.problems)
    gdb, gdir, gfw = generic
    standard = drivers.choose(gdb, gdir, gfw, DriverRequest(), TOOLS)
    assert run_check(gdb, standard, gdb.kver, GOLDEN_ALIASES, gdir).ok


@pytest.mark.parametrize("text, message", [
    ('{"pci": [', "not valid JSON"),
    ('{"disks": []}', "not an inventory"),
    ("pci:v00001AF4d00001000\nthis is not a modalias\n", "line 2: 'this is not a modalias'"),
    ("   \n", "empty"),
])
def test_an_inventory_that_does_not_parse(text, message):
    with pytest.raises(ConfigError, match=message):
        check.parse_machine(text, "inv.json")


def test_a_hello_event_is_an_inventory_too():
    devices, _ = check.parse_machine(json.dumps({"kind": "hello", "inventory": GOLDEN}), "x")
    assert [d.kind for d in devices] == ["network", "storage", "storage"]


def test_an_old_manifest_is_refused():
    with pytest.raises(ConfigError, match="no driver list"):
        check.Carried.from_manifest({"modules": {"list": ["kernel/x.ko"]}}, "m.json")


def test_tools_follow_the_drivers(cloud, generic):
    db, mdir, fw = cloud
    req = DriverRequest.parse("loaded", loaded=loaded_modules(GOLDEN_MODULES))
    d = drivers.choose(db, mdir, fw, req, TOOLS)
    groups = ("core", "ext4", "xfs", "vfat", "btrfs", "raid", "lvm", "crypt")
    kept, dropped = drivers.usable_tools(groups, db, d)
    # ext4 is built into the cloud kernel; the golden client had dm_mod loaded
    assert kept == ("core", "ext4", "lvm")
    assert dropped == {"xfs": ["xfs"], "vfat": ["vfat"], "btrfs": ["btrfs"], "raid": ["md_mod"],
                       "crypt": ["dm_crypt"]}
    gdb, gdir, gfw = generic
    standard = drivers.choose(gdb, gdir, gfw, DriverRequest(), ("core", "ext4"))
    assert drivers.usable_tools(("core", "ext4"), gdb, standard) == (("core", "ext4"), {})


GROUPS = ("core", "ext4", "xfs", "vfat", "btrfs", "raid", "lvm", "crypt")


def _loaded(add: tuple[str, ...] = ()) -> DriverRequest:
    return DriverRequest.parse("loaded", add, loaded=loaded_modules(GOLDEN_MODULES),
                               idle=idle_modules(GOLDEN_MODULES))


def test_an_idle_module_does_not_bring_its_tools(cloud):
    """dm_mod was loaded on the golden VM with nothing using it (no LVM):
    lvm (and with it libsystemd, libgcrypt, libedit) stays out, and so does
    dm_mod itself; --add-modules dm_mod says the stack is wanted."""
    db, mdir, fw = cloud
    req = _loaded()
    assert "dm_mod" in req.idle and "virtio_blk" not in req.idle
    d = drivers.choose(db, mdir, fw, req, TOOLS)
    kept, dropped = drivers.usable_tools(GROUPS, db, d, req)
    assert kept == ("core", "ext4") and dropped["lvm"] == ["dm_mod"]
    assert drivers.idle_stack_modules(dropped, req) == ("dm_mod",)
    left = drivers.choose(db, mdir, fw, req.without(("dm_mod",)), TOOLS)
    assert set(d.names) - set(left.names) == {"dm_mod"}
    # Asked for by name, it counts as used: lvm stays, dm_mod with it.
    asked = _loaded(("dm_mod",))
    d2 = drivers.choose(db, mdir, fw, asked, TOOLS)
    kept2, dropped2 = drivers.usable_tools(GROUPS, db, d2, asked)
    assert "lvm" in kept2 and drivers.idle_stack_modules(dropped2, asked) == ()


def test_storage_stacks_say_why_and_how_to_rebuild(cloud):
    db, mdir, fw = cloud
    req = _loaded()
    kept, dropped = drivers.usable_tools(GROUPS, db, drivers.choose(db, mdir, fw, req, TOOLS),
                                         req)
    stacks = drivers.storage_stacks(kept, dropped, req)
    assert set(stacks) == set(drivers.TOOL_MODULES)
    assert stacks["ext4"] == {"can": True, "what": "ext2/3/4 filesystems"}
    assert stacks["raid"] == {
        "can": False, "what": "md RAID arrays", "add_modules": ["md_mod"],
        "why": "built with --modules loaded from a client without md_mod"}
    assert stacks["lvm"]["why"] == ("built with --modules loaded from a client that had dm_mod "
                                    "loaded but unused (no LVM volume groups)")
    # Tool groups named with --tools: what was not named is not there.
    named = drivers.storage_stacks(("core", "ext4", "raid"), {}, DriverRequest())
    assert named["raid"]["can"] and named["xfs"] == {
        "can": False, "what": "xfs filesystems", "why": "built without the tool group xfs",
        "add_modules": []}


def test_the_compact_packing_of_uyok_loaded(tmp_path):
    """UYOK loaded: the compact squashfs (xz, 1 MiB blocks), and xz for
    stage 1 only where the kernel's configuration says it can unpack it;
    --compression wins."""
    from types import SimpleNamespace

    from bootenv import squash
    from bootenv.standard import compact

    config = tmp_path / "config"
    tree: Any = SimpleNamespace(config=config)
    loaded = DriverRequest.parse("loaded", loaded=["virtio_blk"])
    config.write_text("CONFIG_RD_ZSTD=y\nCONFIG_RD_XZ=y\nCONFIG_XZ_DEC_X86=y\n"
                      "CONFIG_SQUASHFS_ZSTD=y\n")
    assert compact(loaded, tree, None) == ("xz", squash.COMPACT_PACKING)
    assert compact(loaded, tree, "zstd") == ("zstd", squash.COMPACT_PACKING)
    config.write_text("CONFIG_RD_ZSTD=y\n# CONFIG_RD_XZ is not set\nCONFIG_XZ_DEC_X86=y\n")
    assert compact(loaded, tree, None) == ("zstd", squash.COMPACT_PACKING)
    assert compact(loaded, SimpleNamespace(config=None), None)[0] == "zstd"  # type: ignore[arg-type]


def test_the_standard_squashfs_is_zstd_where_the_kernel_reads_it(tmp_path):
    """The standard flavor: the fast squashfs (zstd) when the kernel's
    squashfs has zstd, else -- or when its configuration is unknown -- xz."""
    from types import SimpleNamespace

    from bootenv import squash
    from bootenv.standard import compact

    config = tmp_path / "config"
    tree: Any = SimpleNamespace(config=config)
    config.write_text("CONFIG_SQUASHFS_XZ=y\nCONFIG_SQUASHFS_ZSTD=y\n")
    assert squash.STANDARD_PACKING.compressor == "zstd"
    assert compact(DriverRequest(), tree, None) == ("zstd", squash.STANDARD_PACKING)
    assert compact(DriverRequest(), tree, "xz") == ("xz", squash.STANDARD_PACKING)
    config.write_text("CONFIG_SQUASHFS_XZ=y\n# CONFIG_SQUASHFS_ZSTD is not set\n")
    assert compact(DriverRequest(), tree, None) == ("zstd", squash.COMPACT_PACKING)
    no_config: Any = SimpleNamespace(config=None)
    assert compact(DriverRequest(), no_config, None) == ("zstd", squash.COMPACT_PACKING)
    # A driver list, or every module: small machines, small blocks.
    config.write_text("CONFIG_SQUASHFS_XZ=y\nCONFIG_SQUASHFS_ZSTD=y\n")
    narrow = DriverRequest(how="list", names=("virtio_blk",))
    assert compact(narrow, tree, None) == ("zstd", squash.NARROW_PACKING)
    assert compact(DriverRequest(how="all"), tree, None) == ("zstd", squash.NARROW_PACKING)
    assert squash.Packing("xz", "512K") == squash.NARROW_PACKING
