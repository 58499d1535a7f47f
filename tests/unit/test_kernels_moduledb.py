"""kernels.moduledb against real module indexes: excerpts of Debian 12's
6.1.0-50-amd64 (generic) and 6.1.0-50-cloud-amd64 kernels (see
tests/unit/data/kernels/README.md), and a golden VM's real /proc/modules."""

from __future__ import annotations

import pytest

from kernels import moduledb
from kernels.moduledb import ModuleDB, idle_modules, loaded_modules
from sysclone.errors import ConfigError
from tests.conftest import DATA

GENERIC = DATA / "kernels" / "6.1.0-50-amd64"
CLOUD = DATA / "kernels" / "6.1.0-50-cloud-amd64"

# Real modaliases (a QEMU q35 machine, tests/unit/data/kernels/modaliases.golden-vm).
AHCI = "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
VIRTIO_NET_PCI = "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
VIRTIO_BLK = "virtio:d00000002v00001AF4"
RTL8139 = "pci:v000010ECd00008139sv000010ECsd00008139bc02sc00i00"
NVME = "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"


@pytest.fixture(scope="module")
def generic() -> ModuleDB:
    return ModuleDB.load(GENERIC)


@pytest.fixture(scope="module")
def cloud() -> ModuleDB:
    return ModuleDB.load(CLOUD)


def test_exact_and_wildcard_aliases(generic):
    # ahci matches by class (pci:v*d*sv*sd*bc01sc06i01*), virtio_pci by vendor
    assert generic.lookup(AHCI) == ["ahci"]
    assert generic.lookup(VIRTIO_NET_PCI) == ["virtio_pci"]
    assert generic.lookup(VIRTIO_BLK) == ["virtio_blk"]
    assert generic.lookup(NVME) == ["nvme"]
    assert generic.lookup("pci:v0000FFFFd0000FFFFsv00000000sd00000000bc02sc00i00") == []


def test_several_modules_match_one_alias(generic):
    # Both RealTek 8139 drivers claim 10ec:8139 (8139cp for the C+ chips).
    assert sorted(generic.lookup(RTL8139)) == ["8139cp", "8139too"]


def test_the_cloud_kernel_has_no_ahci_and_nvme_built_in(cloud, generic):
    assert cloud.lookup(AHCI) == []
    assert cloud.get("ahci") is None and cloud.get("e1000e") is None
    nvme = cloud.get("nvme")
    assert nvme is not None and nvme.builtin
    assert generic.get("nvme") is not None and not generic.get("nvme").builtin


def test_builtin_modules_and_their_aliases(generic):
    packet = generic.get("af_packet")
    assert packet is not None and packet.builtin and "net-pf-17" in packet.aliases
    # A built-in with a device alias (modules.builtin.modinfo)
    assert generic.lookup("xen:vfb") == ["xen_fbfront"]
    assert generic.lookup("af_packet") == ["af_packet"]
    # Built-in modules are present but never copied: the closure leaves them out.
    assert generic.closure(["af_packet"]) == []


def test_closure_follows_dependencies_and_soft_dependencies(generic):
    # ext4: depends on jbd2, mbcache, crc16; softdep pre: crypto-crc32c,
    # an alias two modules answer to.
    assert generic.closure(["ext4"]) == ["crc16", "crc32c_generic", "crc32c_intel", "ext4",
                                         "jbd2", "mbcache"]
    # r8169's PHY comes by soft dependency (softdep r8169 pre: realtek)
    assert "realtek" in generic.closure(["r8169"])
    assert set(generic.closure(["virtio_blk"])) == {"virtio_blk", "virtio", "virtio_ring"}


def test_match_names_globs_and_unknown(generic):
    assert generic.match(["virtio-net", "8139*"]) == ["virtio_net", "8139cp", "8139too"]
    assert generic.match(["drivers/scsi/mpt3sas/*"]) == ["mpt3sas"]
    with pytest.raises(ConfigError, match=r"has no module no_such_driver, nvmf_\*") as e:
        generic.match(["ahci", "no_such_driver", "nvmf_*"])
    assert "globs" in (e.value.hint or "")


def test_firmware_index(generic):
    tg3 = generic.get("tg3")
    assert tg3 is not None and "tigon/tg3_tso5.bin" in tg3.firmware
    assert generic.get("e1000e").firmware == ()


def test_parse_modinfo_attributes_firmware_to_each_module():
    out = ("filename:       /lib/modules/x/kernel/drivers/net/a.ko\0firmware=a/one.bin\0"
           "alias=pci:v*\0firmware=a/two.bin\0"
           "filename:       /lib/modules/x/kernel/drivers/net/b-c.ko.xz\0license=GPL\0")
    assert moduledb.parse_modinfo(out) == {"a": ("a/one.bin", "a/two.bin"), "b_c": ()}


def test_loaded_modules_from_proc_modules_and_lsmod():
    names = loaded_modules((DATA / "kernels" / "proc-modules.golden-vm").read_text())
    assert names[:2] == ["sha512_ssse3", "sha512_generic"] and "virtio_blk" in names
    assert len(names) == 27
    lsmod = ("Module                  Size  Used by\nvirtio_net             73728  0\n"
             "net_failover           24576  1 virtio_net\n")
    assert loaded_modules(lsmod) == ["virtio_net", "net_failover"]


def test_idle_modules_are_those_nothing_used():
    text = (DATA / "kernels" / "proc-modules.golden-vm").read_text()
    idle = idle_modules(text)
    # systemd loads dm_mod and loop at every boot; the client had no LVM
    assert "dm_mod" in idle and "loop" in idle
    assert "virtio_blk" not in idle and "fuse" not in idle  # 3 and 1 users
    assert set(idle) <= set(loaded_modules(text))
    lsmod = ("Module                  Size  Used by\nvirtio_net             73728  0\n"
             "net_failover           24576  1 virtio_net\nmd-mod  1000 -\n")
    # lsmod's header is no module; "-" (no unload support) is not "unused"
    assert idle_modules(lsmod) == ["virtio_net"]


@pytest.mark.parametrize("text, message", [
    ("", "names no module"),
    ("virtio_net\n", "line 1: expected a /proc/modules or lsmod line"),
    ('{"modules": []}\n', "line 1"),
])
def test_loaded_modules_refuses_what_is_not_a_listing(text, message):
    with pytest.raises(ConfigError, match=message):
        loaded_modules(text)


def test_missing_modules_dep(tmp_path):
    with pytest.raises(ConfigError, match=r"modules\.dep is missing"):
        ModuleDB.load(tmp_path)


def test_kernel_aliases_include_builtins():
    table = moduledb.kernel_aliases(GENERIC)
    assert table.lookup("xen:vfb") == ["xen_fbfront"]
    assert table.lookup(AHCI) == ["ahci"]
