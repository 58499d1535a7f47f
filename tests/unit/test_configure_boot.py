"""Bootloaders on fake image trees: the layout's flavor honoured (and
refused clearly when the image lacks it), systemd-boot with bootctl and
loader entries, LILO and ELILO where their binary and configuration exist
(they are not packaged in Debian 12), GRUB's timeout and default entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configure import bootloader
from agent.configure.bootloader import (
    BootloaderError,
    BootTarget,
    Elilo,
    Grub2,
    Lilo,
    SystemdBoot,
    choose,
)
from tests.conftest import FakeCommands, FakeResult

KVER = "6.1.0-18-amd64"
ROOT_UUID = "0f3c5d2e-8a41-4b7c-9e2d-5b6a7c8d9e01"


def touch(root: Path, *paths: str, text: str = "") -> None:
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "sysroot"
    touch(r, "etc/fstab", text=f"UUID={ROOT_UUID}\t/\text4\terrors=remount-ro\t0\t1\n"
                               "UUID=ABCD-1234\t/boot/efi\tvfat\tumask=0077\t0\t1\n")
    touch(r, f"lib/modules/{KVER}/modules.dep")
    touch(r, f"boot/vmlinuz-{KVER}", text="kernel")
    touch(r, f"boot/initrd.img-{KVER}", text="initrd")
    touch(r, "usr/sbin/update-initramfs")
    touch(r, "etc/os-release", text='PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    (r / "boot/efi").mkdir(parents=True)
    return r


def grub(root: Path) -> None:
    touch(root, "usr/sbin/grub-install", "usr/sbin/update-grub",
          "usr/lib/grub/i386-pc/core.img", "usr/lib/grub/x86_64-efi/core.efi")


def systemd_boot(root: Path) -> None:
    touch(root, "usr/bin/bootctl", SystemdBoot.EFI_BINARY)


BIOS = BootTarget("bios", ("/dev/vda", "/dev/vdb"))
UEFI = BootTarget("uefi", ("/dev/vda1",))


# -- which bootloader ------------------------------------------------------------------------

def test_the_layouts_flavor_is_honoured(root: Path) -> None:
    grub(root)
    systemd_boot(root)
    assert isinstance(choose(root, UEFI), Grub2)  # by footprint, GRUB first
    pick = choose(root, BootTarget("uefi", ("/dev/vda1",), flavor="systemd"))
    assert isinstance(pick, SystemdBoot)
    assert isinstance(choose(root, BootTarget("uefi", (), flavor="grub2")), Grub2)


def test_a_flavor_the_image_lacks_is_refused(root: Path) -> None:
    grub(root)
    with pytest.raises(BootloaderError) as e:
        choose(root, BootTarget("uefi", (), flavor="systemd"))
    assert e.value.message == ('the layout asks for systemd-boot (<bootloader flavor="systemd">)'
                               " but the image does not have it")
    assert e.value.hint == "install systemd-boot in the golden image, or change the layout's " \
                           "flavor"


@pytest.mark.parametrize("flavor", ["rEFInd", "clover", "grub"])
def test_flavors_sysclone_cannot_install(root: Path, flavor: str) -> None:
    grub(root)
    with pytest.raises(BootloaderError, match=f'<bootloader flavor="{flavor}">: sysclone '
                                              "cannot install"):
        choose(root, BootTarget("bios", (), flavor=flavor))


def test_systemd_boot_in_use_wins_the_footprint(root: Path) -> None:
    grub(root)
    systemd_boot(root)
    touch(root, "boot/efi/loader/loader.conf", text="timeout 3\n")
    assert isinstance(choose(root, UEFI), SystemdBoot)
    assert isinstance(choose(root, BIOS), Grub2)  # systemd-boot does not boot BIOS


def test_lilo_and_elilo_only_with_binary_and_config(root: Path) -> None:
    touch(root, "sbin/lilo")
    with pytest.raises(BootloaderError, match="no bootloader sysclone can install for BIOS"):
        choose(root, BIOS)
    touch(root, "etc/lilo.conf", text="image=/boot/vmlinuz\n")
    assert isinstance(choose(root, BIOS), Lilo)
    with pytest.raises(BootloaderError) as e:
        choose(root, UEFI)
    assert e.value.message == ("the image has no bootloader sysclone can install for UEFI "
                               "(lilo does not boot UEFI)")
    touch(root, "usr/sbin/elilo", "etc/elilo.conf")
    assert isinstance(choose(root, UEFI), Elilo)
    with pytest.raises(BootloaderError, match="lilo does not boot UEFI machines"):
        choose(root, BootTarget("uefi", (), flavor="lilo"))


# -- GRUB: the layout's timeout and default ----------------------------------------------------

def test_grub_gets_the_layouts_timeout_and_default(root: Path,
                                                   fake_commands: FakeCommands) -> None:
    grub(root)
    touch(root, "etc/default/grub", text='GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\n'
                                         'GRUB_CMDLINE_LINUX=""\n')
    fake_commands.add(["chroot", str(root)], "")
    Grub2().install(root, BootTarget("bios", ("/dev/vda",), timeout=1, default_entry="2"))
    assert (root / "etc/default/grub").read_text() == \
        'GRUB_DEFAULT=2\nGRUB_TIMEOUT=1\nGRUB_CMDLINE_LINUX=""\n'


def test_grub_keeps_the_images_defaults_without_them(root: Path,
                                                     fake_commands: FakeCommands) -> None:
    grub(root)
    touch(root, "etc/default/grub", text="GRUB_TIMEOUT=5\n")
    fake_commands.add(["chroot", str(root)], "")
    Grub2().install(root, BIOS)
    assert (root / "etc/default/grub").read_text() == "GRUB_TIMEOUT=5\n"


# -- systemd-boot -----------------------------------------------------------------------------

def test_systemd_boot_installs_and_writes_entries(root: Path,
                                                  fake_commands: FakeCommands) -> None:
    systemd_boot(root)
    touch(root, "etc/default/grub",
          text='GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 root=/dev/sda1 ro"\n'
               'GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    ready: list[str] = []

    def bootctl(argv: list[str]) -> FakeResult:
        assert ready == [], "bootctl runs beside the initrd phase"
        touch(root, "boot/efi/EFI/systemd/systemd-bootx64.efi", "boot/efi/EFI/BOOT/BOOTX64.EFI")
        touch(root, "boot/efi/loader/loader.conf", text="#timeout 3\n#console-mode keep\n")
        return FakeResult()

    fake_commands.add(["chroot", str(root), "bootctl"], bootctl)
    SystemdBoot().install(root, BootTarget("uefi", ("/dev/vda1",), timeout=2),
                          initrd_ready=lambda: ready.append("initrd"))
    assert fake_commands.calls == [["chroot", str(root), "bootctl", "install",
                                    "--esp-path=/boot/efi"]]
    esp = root / "boot/efi"
    cmdline = f"root=UUID={ROOT_UUID} ro console=ttyS0,115200n8 quiet"
    assert (esp / f"loader/entries/sysclone-{KVER}.conf").read_text() == (
        "title      Debian GNU/Linux 12 (bookworm)\n"
        f"version    {KVER}\n"
        f"linux      /sysclone/{KVER}/linux\n"
        f"initrd     /sysclone/{KVER}/initrd\n"
        f"options    {cmdline}\n")
    assert (esp / f"sysclone/{KVER}/linux").read_text() == "kernel"
    assert (esp / f"sysclone/{KVER}/initrd").read_text() == "initrd"
    assert (esp / "loader/loader.conf").read_text() == \
        f"timeout 2\n#console-mode keep\ndefault sysclone-{KVER}.conf\n"
    # So that the image's kernel-install keeps the same layout on updates.
    assert (root / "etc/kernel/entry-token").read_text() == "sysclone\n"
    assert (root / "etc/kernel/cmdline").read_text() == cmdline + "\n"


def test_systemd_boot_needs_the_esp(root: Path) -> None:
    systemd_boot(root)
    with pytest.raises(BootloaderError, match="needs the EFI system partition mounted at /efi"):
        SystemdBoot().install(root, BootTarget("uefi", (), esp_mountpoint="/efi"))


# -- LILO ---------------------------------------------------------------------------------

LILO_CONF = """\
boot=/dev/sda
map=/boot/map
prompt
timeout=50
default=Linux

image=/boot/vmlinuz-6.1.0-18-amd64
	label=Linux
	initrd=/boot/initrd.img-6.1.0-18-amd64
	root=/dev/sda2
	read-only

image=/boot/vmlinuz-6.1.0-18-amd64
	label=Single
	root=/dev/sda2
	append="single"
"""


def test_lilo_points_at_the_new_root_and_writes_every_disk(root: Path,
                                                           fake_commands: FakeCommands) -> None:
    touch(root, "sbin/lilo")
    touch(root, "etc/lilo.conf", text=LILO_CONF)
    fake_commands.add(["chroot", str(root), "lilo"], "Added Linux *\n")
    Lilo().install(root, BootTarget("bios", ("/dev/vda", "/dev/vdb"), timeout=3,
                                    default_entry="1"))
    text = (root / "etc/lilo.conf").read_text()
    assert text.splitlines()[:5] == ["boot=/dev/vda", "map=/boot/map", "prompt", "timeout=30",
                                     "default=Single"]
    assert text.count(f'root="UUID={ROOT_UUID}"') == 2 and "/dev/sda2" not in text
    assert fake_commands.calls == [["chroot", str(root), "lilo", "-b", "/dev/vda"],
                                   ["chroot", str(root), "lilo", "-b", "/dev/vdb"]]


def test_lilo_refuses_a_config_naming_missing_kernels(root: Path,
                                                      fake_commands: FakeCommands) -> None:
    touch(root, "sbin/lilo")
    touch(root, "etc/lilo.conf", text="image=/boot/vmlinuz-old\n\tlabel=old\n")
    with pytest.raises(BootloaderError, match=r"lilo\.conf names /boot/vmlinuz-old"):
        Lilo().install(root, BIOS)
    assert fake_commands.calls == []


# -- ELILO --------------------------------------------------------------------------------

def test_elilo_installs_and_adds_the_fallback_path(root: Path,
                                                   fake_commands: FakeCommands) -> None:
    touch(root, "usr/sbin/elilo")
    touch(root, "etc/elilo.conf", text=f"default=Linux\nimage=/boot/vmlinuz-{KVER}\n"
                                       "\tlabel=Linux\n\troot=/dev/sda2\n")

    def elilo(argv: list[str]) -> FakeResult:
        # What the image's elilo does: its loader, config and kernels on the ESP.
        touch(root, "boot/efi/EFI/debian/elilo.efi", text="loader")
        touch(root, "boot/efi/EFI/debian/elilo.conf", text="cfg")
        touch(root, f"boot/efi/EFI/debian/vmlinuz-{KVER}", text="kernel")
        return FakeResult()

    fake_commands.add(["chroot", str(root), "elilo"], elilo)
    Elilo().install(root, UEFI)
    assert fake_commands.calls == [["chroot", str(root), "elilo", "--efiboot"]]
    assert f"root=UUID={ROOT_UUID}" in (root / "etc/elilo.conf").read_text()
    boot = root / "boot/efi/EFI/BOOT"
    assert (boot / "BOOTX64.EFI").read_text() == "loader"
    assert (boot / "elilo.conf").read_text() == "cfg"
    assert (boot / f"vmlinuz-{KVER}").read_text() == "kernel"


def test_elilo_that_installs_nothing(root: Path, fake_commands: FakeCommands) -> None:
    touch(root, "usr/sbin/elilo", "etc/elilo.conf")
    fake_commands.add(["chroot", str(root), "elilo"], "")
    with pytest.raises(BootloaderError, match=r"put no elilo\.efi on the ESP"):
        Elilo().install(root, UEFI)


def test_the_kernel_options_of_the_image(root: Path) -> None:
    assert bootloader.grub_cmdline(root) == ""
    touch(root, "etc/default/grub", text="GRUB_CMDLINE_LINUX='a=1 b'\n")
    assert bootloader.grub_cmdline(root) == "a=1 b"
    assert bootloader.root_spec(root) == f"UUID={ROOT_UUID}"
