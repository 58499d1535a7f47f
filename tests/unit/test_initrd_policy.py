"""Whether the image's initrd is kept or regenerated: reading initramfs
archives (plain and gzip here; other compressions go through a command),
the policy's reasons, the disk controller's driver chain from sysfs, and
initramfs-tools' resume setting."""

from __future__ import annotations

import gzip
import io
import os
import stat
from pathlib import Path

import pytest

from agent import hardware
from agent.configure.initrd import InitramfsTools
from agent.configure.initrdpolicy import (
    InitrdFacts,
    StorageNeeds,
    builtin_modules,
    decide,
    storage_needs,
    wanted_in_initrd,
)
from agent.initramfs import InitramfsError, Listing, module_name, read_listing
from bootenv import cpio
from tests.conftest import FakeCommands, FakeResult

KVER = "6.1.0-50-amd64"
OLD_SWAP = "0b7c4a9e-1f0d-4c51-9a7e-6a1c3f2e8d11"
NEW_ROOT = "11111111-2222-3333-4444-555555555555"
NEW_SWAP = "66666666-7777-8888-9999-aaaaaaaaaaaa"

INITRAMFS_CONF = "# initramfs.conf\nMODULES=most\nBUSYBOX=auto\nCOMPRESS=zstd\n"


def archive(files: dict[str, bytes | None]) -> bytes:
    """A newc archive; None makes a directory."""
    out = io.BytesIO()
    entries = []
    for path, data in files.items():
        if data is None:
            entries.append(cpio.Entry(path, stat.S_IFDIR | 0o755))
        else:
            entries.append(cpio.Entry(path, stat.S_IFREG | 0o644, data=data))
    cpio.write_archive(out, entries)
    return out.getvalue()


def debian_like(extra: dict[str, bytes | None] | None = None, conf: str = INITRAMFS_CONF,
                mods: tuple[str, ...] = ("virtio_blk", "virtio_pci", "xfs")) -> bytes:
    """An uncompressed microcode archive, then a gzip one with the rest, as
    Debian lays them out (zstd there; gzip here: no command runs)."""
    early = archive({"kernel": None, "kernel/x86": None,
                     "kernel/x86/microcode/GenuineIntel.bin": b"\0" * 64})
    files: dict[str, bytes | None] = {"conf": None, "conf/initramfs.conf": conf.encode(),
                                      "conf/arch.conf": b"DPKG_ARCH=amd64\n",
                                      "usr/bin/busybox": b"ELF"}
    for m in mods:
        files[f"usr/lib/modules/{KVER}/kernel/drivers/{m.replace('_', '-')}.ko"] = b"mod"
    files.update(extra or {})
    return early + gzip.compress(archive(files), mtime=0)


def no_commands(kind: str) -> list[str]:
    raise AssertionError(f"no decompressor command expected for {kind}")


def listing_of(tmp_path: Path, data: bytes) -> Listing:
    p = tmp_path / "initrd.img"
    p.write_bytes(data)
    return read_listing(p, no_commands, wanted=wanted_in_initrd)


# -- reading archives ------------------------------------------------------------------------

def test_reads_every_segment_and_keeps_only_wanted_files(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like())
    assert li.segments == ["none", "gzip", "none"]
    assert li.has("kernel/x86/microcode/GenuineIntel.bin") and li.has("/usr/bin/busybox")
    assert li.text("conf/initramfs.conf") == INITRAMFS_CONF
    assert "usr/bin/busybox" not in li.contents  # not wanted: skipped, not kept
    assert li.module_names() == {"virtio_blk", "virtio_pci", "xfs"}


def test_padding_between_archives_is_skipped(tmp_path: Path) -> None:
    a = archive({"a": b"1"})
    b = archive({"b": b"2"})
    li = listing_of(tmp_path, a + b"\0" * 1024 + b)
    assert li.has("a") and li.has("b")


@pytest.mark.parametrize("data, why", [
    (b"garbage data here", "unknown data"),
    (archive({"a": b"x" * 100})[:150], "truncated"),
])
def test_broken_archives_are_named(tmp_path: Path, data: bytes, why: str) -> None:
    with pytest.raises(InitramfsError, match=why):
        listing_of(tmp_path, data)


def test_other_compressions_go_through_the_given_command(tmp_path: Path,
                                                         fake_commands: FakeCommands) -> None:
    p = tmp_path / "initrd.img"
    p.write_bytes(b"\x28\xb5\x2f\xfd" + b"zstd frame")
    asked = []

    def decompress(kind: str) -> list[str]:
        asked.append(kind)
        return ["chroot", "/image", "zstd", "-dc"]

    def missing(argv: list[str]) -> FakeResult:
        raise FileNotFoundError(argv[0])

    fake_commands.add(["chroot", "/image", "zstd"], missing)
    with pytest.raises(InitramfsError, match="zstd-compressed initramfs with chroot"):
        read_listing(p, decompress)
    assert asked == ["zstd"]


@pytest.mark.parametrize("name, canon", [("ext4.ko", "ext4"), ("dm-crypt.ko.zst", "dm_crypt"),
                                         ("virtio_blk.ko.xz", "virtio_blk")])
def test_module_names_are_canonical(name: str, canon: str) -> None:
    assert module_name(name) == canon


# -- the policy -------------------------------------------------------------------------------

def needs(*drivers: str, root_fs: str = "ext4", features: set[str] | None = None,
          raids: set[str] | None = None) -> StorageNeeds:
    return storage_needs(root_fs, list(drivers), features or set(), raids or set(),
                         {NEW_ROOT, NEW_SWAP, "/dev/vda2", "/dev/vda3"})


def facts(li: Listing | None, builtin: tuple[str, ...] = ("ext4",)) -> list[InitrdFacts]:
    path = Path(f"/boot/initrd.img-{KVER}") if li is not None else None
    return [InitrdFacts(KVER, path, li, frozenset(builtin))]


def test_a_generic_initrd_with_everything_is_kept(tmp_path: Path) -> None:
    d = decide("auto", "initramfs-tools", facts(listing_of(tmp_path, debian_like())),
               needs("virtio_blk", "virtio_pci"))
    assert not d.regenerate and d.action == "keep"
    assert "generic initrd" in d.reasons[0] and "virtio_blk" in d.reasons[0]


def test_root_filesystem_module_missing_regenerates(tmp_path: Path) -> None:
    d = decide("auto", "initramfs-tools", facts(listing_of(tmp_path, debian_like())),
               needs("virtio_blk", root_fs="btrfs"))
    assert d.regenerate and "lacks module(s) btrfs" in d.describe()


def test_a_host_only_initrd_regenerates(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like(conf="MODULES=dep\n"))
    d = decide("auto", "initramfs-tools", facts(li), needs("virtio_blk"))
    assert d.regenerate and "MODULES=dep (host-only)" in d.describe()


def test_conf_d_overrides_initramfs_conf(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like({"conf/conf.d": None,
                                           "conf/conf.d/zz-local": b"MODULES=dep\n"}))
    assert decide("auto", "initramfs-tools", facts(li), needs("virtio_blk")).regenerate


def test_a_missing_initrd_regenerates() -> None:
    d = decide("auto", "initramfs-tools", facts(None), needs("virtio_blk"))
    assert d.regenerate and f"no initrd for kernel {KVER}" in d.describe()


def test_an_old_resume_device_regenerates(tmp_path: Path) -> None:
    resume = f"RESUME=UUID={OLD_SWAP}\n".encode()
    li = listing_of(tmp_path, debian_like({"conf/conf.d": None,
                                           "conf/conf.d/resume": resume}))
    d = decide("auto", "initramfs-tools", facts(li), needs("virtio_blk"))
    assert d.regenerate and f"names UUID {OLD_SWAP}" in d.describe()


def test_a_resume_device_of_this_install_is_fine(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like({"conf/conf.d": None,
                                           "conf/conf.d/resume": f"RESUME=UUID={NEW_SWAP}\n"
                                           .encode()}))
    assert not decide("auto", "initramfs-tools", facts(li), needs("virtio_blk")).regenerate


def test_an_old_raid_and_crypttab_regenerate(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like({
        "etc": None, "etc/mdadm": None,
        "etc/mdadm/mdadm.conf": b"ARRAY /dev/md0 metadata=1.2 "
                                b"UUID=aaaaaaaa:bbbbbbbb:cccccccc:dddddddd\n",
        "cryptroot": None,
        "cryptroot/crypttab": f"root_crypt UUID={OLD_SWAP} none luks\n".encode()}))
    d = decide("auto", "initramfs-tools", facts(li), needs("virtio_blk"))
    assert d.regenerate and "cryptroot/crypttab" in d.describe()


def test_md_lvm_luks_need_their_tools_and_modules(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like())
    d = decide("auto", "initramfs-tools", facts(li),
               needs("virtio_blk", features={"md", "lvm"}, raids={"raid1"}))
    text = d.describe()
    assert d.regenerate and "md_mod" in text and "raid1" in text and "dm_mod" in text
    assert "lacks lvm, mdadm" in text


def test_builtin_modules_count_as_present(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like(mods=("virtio_pci",)))
    d = decide("auto", "initramfs-tools", facts(li, builtin=("ext4", "virtio_blk")),
               needs("virtio_blk", "virtio_pci"))
    assert not d.regenerate


def test_a_host_only_dracut_image_regenerates(tmp_path: Path) -> None:
    li = listing_of(tmp_path, debian_like({"usr/lib/dracut": None,
                                           "usr/lib/dracut/hostonly-kernel-modules.txt": b"x"}))
    assert "host-only" in decide("auto", "dracut", facts(li), needs("virtio_blk")).describe()


@pytest.mark.parametrize("policy, regen", [("keep", False), ("regenerate", True)])
def test_keep_and_regenerate_force_the_choice(policy: str, regen: bool) -> None:
    d = decide(policy, "initramfs-tools", [], needs("virtio_blk"))
    assert d.regenerate is regen and d.reasons == (f"si.initrd={policy}",)


def test_no_tool_means_nothing_to_regenerate() -> None:
    assert not decide("auto", None, [], needs()).regenerate


def test_builtin_modules_are_read_from_the_image(tmp_path: Path) -> None:
    d = tmp_path / "lib/modules" / KVER
    d.mkdir(parents=True)
    (d / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\nkernel/drivers/md/dm-mod.ko\n")
    assert builtin_modules(tmp_path, KVER) == {"ext4", "dm_mod"}


# -- the driver chain ------------------------------------------------------------------------

def test_block_driver_modules_walk_from_disk_to_bus(tmp_path: Path) -> None:
    sys = tmp_path / "sys"
    pci = sys / "devices/pci0000:00/0000:00:03.0"
    vdev = pci / "virtio2"
    (vdev / "block/vda").mkdir(parents=True)
    (sys / "class/block").mkdir(parents=True)
    os.symlink(vdev / "block/vda", sys / "class/block/vda")
    os.symlink(vdev, vdev / "block/vda/device")
    for dev, drv, mod in ((vdev, "virtio_blk", "virtio_blk"), (pci, "virtio-pci", "virtio_pci")):
        d = sys / "bus/x/drivers" / drv
        d.mkdir(parents=True)
        (sys / "module" / mod).mkdir(parents=True)
        os.symlink(sys / "module" / mod, d / "module")
        os.symlink(d, dev / "driver")
    assert hardware.block_driver_modules("vda", sys) == ["virtio_blk", "virtio_pci"]
    assert hardware.block_driver_modules("sdz", sys) == []


# -- initramfs-tools resume ------------------------------------------------------------------

def test_resume_is_pointed_at_the_new_swap(tmp_path: Path) -> None:
    conf = tmp_path / "etc/initramfs-tools/conf.d/resume"
    conf.parent.mkdir(parents=True)
    conf.write_text(f"# written by the installer\nRESUME=UUID={OLD_SWAP}\n")
    assert InitramfsTools().configure(tmp_path, NEW_SWAP) == ["etc/initramfs-tools/conf.d/resume"]
    assert conf.read_text() == f"# written by the installer\nRESUME=UUID={NEW_SWAP}\n"
    assert InitramfsTools().configure(tmp_path, None) == ["etc/initramfs-tools/conf.d/resume"]
    assert conf.read_text().endswith("RESUME=none\n")


def test_without_a_resume_file_the_new_swap_is_named(tmp_path: Path) -> None:
    """As Debian's installer does; the tool never guesses from whatever swap
    runs where it is built (the image server's, for a server-built initrd)."""
    assert InitramfsTools().configure(tmp_path, NEW_SWAP) == ["etc/initramfs-tools/conf.d/resume"]
    assert (tmp_path / "etc/initramfs-tools/conf.d/resume").read_text() == \
        f"RESUME=UUID={NEW_SWAP}\n"


def test_without_swap_or_resume_file_nothing_is_written(tmp_path: Path) -> None:
    assert InitramfsTools().configure(tmp_path, None) == []
    assert not (tmp_path / "etc").exists()


def test_generic_setting_is_read_from_the_image(tmp_path: Path) -> None:
    conf = tmp_path / "etc/initramfs-tools"
    (conf / "conf.d").mkdir(parents=True)
    (conf / "initramfs.conf").write_text("MODULES=most\nBUSYBOX=auto\n")
    assert InitramfsTools().builds_generic(tmp_path)
    (conf / "conf.d/hostonly").write_text("MODULES=dep\n")
    assert not InitramfsTools().builds_generic(tmp_path)
    assert InitramfsTools().modules_setting(tmp_path) == "dep"


def test_a_luks_root_needs_its_crypttab_in_the_initrd(tmp_path: Path) -> None:
    luks = "aaaabbbb-cccc-dddd-eeee-ffff00001111"
    need = storage_needs("ext4", ["virtio_blk"], {"luks"}, set(), {luks}, must_name={luks})
    li = listing_of(tmp_path, debian_like(mods=("virtio_blk", "dm_crypt", "dm_mod")))
    d = decide("auto", "initramfs-tools", facts(li), need)
    assert d.regenerate and f"does not name {luks}" in d.describe()
    li2 = listing_of(tmp_path, debian_like(
        {"cryptroot": None, "cryptroot/crypttab": f"root UUID={luks} /k luks\n".encode(),
         "usr/sbin/cryptsetup": b"ELF"}, mods=("virtio_blk", "dm_crypt", "dm_mod")))
    assert not decide("auto", "initramfs-tools", facts(li2), need).regenerate


def test_an_md_root_is_named_in_mdadm_conf_whatever_the_spelling(tmp_path: Path) -> None:
    uuid = "0123abcd-4567-89ef-0123-456789abcdef"
    need = storage_needs("ext4", [], {"md"}, {"raid1"}, {uuid}, must_name={uuid})
    conf = b"ARRAY /dev/md0 metadata=1.2 UUID=0123abcd:456789ef:01234567:89abcdef\n"
    li = listing_of(tmp_path, debian_like({"etc": None, "etc/mdadm": None,
                                           "etc/mdadm/mdadm.conf": conf, "usr/sbin/mdadm": b""},
                                          mods=("md_mod", "raid1")))
    assert not decide("auto", "initramfs-tools", facts(li), need).regenerate
