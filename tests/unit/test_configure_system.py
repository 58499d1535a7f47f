"""Configuring the installed system in an image tree under tmp_path: host
name, machine-id, SSH host keys, fstab, initrd tools and GRUB, with every
chrooted command answered by the command fakes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.configure import bootloader, initrd, system
from agent.configure.bootloader import BOOTLOADERS, BootTarget, Grub2, Grub2RedHat
from agent.configure.footprint import best
from agent.configure.fstab import FstabEntry, foreign_lines, render
from agent.configure.initrd import TOOLS, Dracut, InitramfsTools, SuseMkinitrd, kernel_versions
from sysclone.errors import SyscloneError
from tests.conftest import FakeCommands, FakeResult


def touch(root: Path, *paths: str) -> None:
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "sysroot"
    (r / "etc").mkdir(parents=True)
    return r


# -- host name -------------------------------------------------------------------------------

DEBIAN_HOSTS = """\
127.0.0.1\tlocalhost
127.0.1.1\tgolden.lab.example\tgolden

# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
"""


def test_hostname_replaces_the_golden_clients_line(root: Path) -> None:
    (root / "etc/hosts").write_text(DEBIAN_HOSTS)
    assert system.set_hostname(root, "node07", "cluster.example") == \
        ["/etc/hostname", "/etc/hosts"]
    assert (root / "etc/hostname").read_text() == "node07\n"
    assert (root / "etc/hosts").read_text() == DEBIAN_HOSTS.replace(
        "127.0.1.1\tgolden.lab.example\tgolden", "127.0.1.1\tnode07.cluster.example\tnode07")


def test_hostname_line_added_when_missing(root: Path) -> None:
    (root / "etc/hosts").write_text("127.0.0.1   localhost localhost.localdomain\n"
                                    "::1         localhost localhost.localdomain")
    system.set_hostname(root, "node07.cluster.example", "ignored.example")
    assert (root / "etc/hostname").read_text() == "node07\n"
    assert (root / "etc/hosts").read_text() == (
        "127.0.0.1   localhost localhost.localdomain\n"
        "::1         localhost localhost.localdomain\n"
        "127.0.1.1\tnode07.cluster.example\tnode07\n")


def test_hostname_without_domain_and_without_hosts_file(root: Path) -> None:
    system.set_hostname(root, "node07", None)
    assert (root / "etc/hosts").read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tnode07\n"


def test_hostname_ignores_127_0_1_10(root: Path) -> None:
    (root / "etc/hosts").write_text("127.0.1.10\tprinter\n")
    system.set_hostname(root, "node07", None)
    assert (root / "etc/hosts").read_text() == "127.0.1.10\tprinter\n127.0.1.1\tnode07\n"


# -- machine-id ------------------------------------------------------------------------------

def test_reset_machine_id(root: Path) -> None:
    (root / "etc/machine-id").write_text("4f8e2f1c9a0b4c6d8e7f6a5b4c3d2e1f\n")
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").write_text("4f8e2f1c9a0b4c6d8e7f6a5b4c3d2e1f\n")
    assert system.reset_machine_id(root) == ["/etc/machine-id", "/var/lib/dbus/machine-id"]
    assert (root / "etc/machine-id").read_text() == ""
    assert not (root / "var/lib/dbus/machine-id").exists()
    assert system.reset_machine_id(root) == []  # nothing left to do


def test_dbus_machine_id_link_is_kept(root: Path) -> None:
    (root / "etc/machine-id").write_text("4f8e2f1c9a0b4c6d8e7f6a5b4c3d2e1f\n")
    (root / "var/lib/dbus").mkdir(parents=True)
    (root / "var/lib/dbus/machine-id").symlink_to("/etc/machine-id")
    assert system.reset_machine_id(root) == ["/etc/machine-id"]
    assert (root / "var/lib/dbus/machine-id").is_symlink()


# -- SSH host keys ---------------------------------------------------------------------------

KEYS = ("ssh_host_ecdsa_key", "ssh_host_ed25519_key", "ssh_host_rsa_key")


def golden_keys(root: Path) -> None:
    ssh = root / "etc/ssh"
    ssh.mkdir(parents=True)
    (ssh / "sshd_config").write_text("Include /etc/ssh/sshd_config.d/*.conf\n")
    for k in KEYS:
        (ssh / k).write_text(f"golden {k}\n")
        (ssh / f"{k}.pub").write_text(f"golden {k}.pub\n")


def test_ssh_host_keys_are_regenerated(root: Path, fake_commands: FakeCommands) -> None:
    golden_keys(root)
    touch(root, "usr/bin/ssh-keygen")

    def keygen(argv: list[str]) -> FakeResult:
        # ssh-keygen -A in the chroot creates the missing key types.
        for k in ("ssh_host_ed25519_key", "ssh_host_rsa_key", "ssh_host_ecdsa_key"):
            (root / "etc/ssh" / k).write_text(f"new {k}\n")
            (root / "etc/ssh" / f"{k}.pub").write_text(f"new {k}.pub\n")
        return FakeResult(stdout="ssh-keygen: generating new host keys: RSA ECDSA ED25519 \n")

    fake_commands.add(["chroot", str(root), "ssh-keygen"], keygen)
    assert system.regenerate_ssh_host_keys(root) == [f"/etc/ssh/{k}" for k in KEYS]
    assert fake_commands.calls == [["chroot", str(root), "ssh-keygen", "-A"]]
    for k in KEYS:
        assert (root / "etc/ssh" / k).read_text() == f"new {k}\n"
        assert (root / "etc/ssh" / f"{k}.pub").read_text() == f"new {k}.pub\n"
    assert (root / "etc/ssh/sshd_config").exists()


def test_old_public_keys_go_too(root: Path, fake_commands: FakeCommands) -> None:
    golden_keys(root)
    touch(root, "usr/bin/ssh-keygen")
    fake_commands.add(["chroot", str(root), "ssh-keygen"], "")
    system.regenerate_ssh_host_keys(root)
    assert sorted(p.name for p in (root / "etc/ssh").iterdir()) == ["sshd_config"]


def test_no_ssh_keygen_leaves_the_keys(root: Path, fake_commands: FakeCommands,
                                       caplog: pytest.LogCaptureFixture) -> None:
    golden_keys(root)
    with caplog.at_level(logging.WARNING):
        assert system.regenerate_ssh_host_keys(root) == []
    assert "no ssh-keygen" in caplog.text
    assert (root / "etc/ssh/ssh_host_rsa_key").read_text() == "golden ssh_host_rsa_key\n"
    assert fake_commands.calls == []


def test_no_host_keys_nothing_to_do(root: Path, fake_commands: FakeCommands) -> None:
    touch(root, "usr/bin/ssh-keygen", "etc/ssh/sshd_config")
    assert system.regenerate_ssh_host_keys(root) == []
    assert fake_commands.calls == []


# -- fstab -----------------------------------------------------------------------------------

ROOT_UUID = "0f3c5d2e-8a41-4b7c-9e2d-5b6a7c8d9e01"
SWAP_UUID = "7d1e6c44-3b2a-4f0e-9c8d-1a2b3c4d5e6f"

GOLDEN_FSTAB = """\
# /etc/fstab: static file system information.
#
# <file system> <mount point>   <type>  <options>       <dump>  <pass>
UUID=11111111-2222-3333-4444-555555555555 /               ext4    errors=remount-ro 0       1
UUID=ABCD-1234  /boot/efi       vfat    umask=0077      0       1
/dev/mapper/vg-swap none swap sw 0 0
/swapfile none swap sw 0 0
/dev/sr0        /media/cdrom0   udf,iso9660 user,noauto     0       0
LABEL=data /srv/data xfs defaults 0 2
tmpfs /tmp tmpfs defaults,size=2g 0 0
nfs.lab.example:/export/home /home nfs4 defaults,_netdev 0 0
/srv/data/www /var/www none bind 0 0
proc /proc proc defaults
broken-line
"""


def test_foreign_lines_keep_what_sysclone_does_not_create() -> None:
    assert foreign_lines(GOLDEN_FSTAB, {"/", "/boot/efi"}) == [
        "tmpfs /tmp tmpfs defaults,size=2g 0 0",
        "nfs.lab.example:/export/home /home nfs4 defaults,_netdev 0 0",
        "/srv/data/www /var/www none bind 0 0",
        "proc /proc proc defaults",
    ]


def test_foreign_lines_never_clash_with_managed_mountpoints() -> None:
    assert foreign_lines(GOLDEN_FSTAB, {"/", "/tmp", "/home"}) == [
        "/srv/data/www /var/www none bind 0 0", "proc /proc proc defaults"]


def test_render() -> None:
    entries = [FstabEntry(f"UUID={ROOT_UUID}", "/", "ext4", "errors=remount-ro", 0, 1),
               FstabEntry(f"UUID={SWAP_UUID}", "none", "swap", "sw")]
    text = render(entries, ["tmpfs /tmp tmpfs defaults,size=2g 0 0"])
    lines = text.splitlines()
    assert lines[0] == "# /etc/fstab: static file system information, written by sysclone."
    assert lines[4:] == [
        f"UUID={ROOT_UUID}\t/\text4\terrors=remount-ro\t0\t1",
        f"UUID={SWAP_UUID}\tnone\tswap\tsw\t0\t0",
        "",
        "# kept from the image's fstab",
        "tmpfs /tmp tmpfs defaults,size=2g 0 0",
    ]
    assert text.endswith("\n")
    assert render(entries).endswith(f"UUID={SWAP_UUID}\tnone\tswap\tsw\t0\t0\n")


def test_write_fstab_of_an_efi_plan(root: Path, compat: Path) -> None:
    from agent.configure.fstab import write_fstab
    from agent.disks import Disk
    from agent.planner import make_plan

    layout = {"format": "systemimager-xml", "name": "disk-layout-EFI.xml",
              "text": (compat / "disk-layout-EFI.xml").read_text()}
    plan = make_plan(instructions={"image": {"name": "rocky9"}, "layout": layout},
                     server="10.0.0.2", hostname="node07", targets=[Disk("nvme0n1", 20 << 30)],
                     fw="uefi", ram_bytes=2 << 30, have_tool=lambda tool: True)
    (root / "etc/fstab").write_text(GOLDEN_FSTAB)
    assert write_fstab(plan.filesystems, root) == ["/etc/fstab"]
    lines = (root / "etc/fstab").read_text().splitlines()
    u = {f.mountpoint: f.uuid for f in plan.filesystems}
    assert lines[4:8] == [
        f"UUID={u['/']}\t/\txfs\tdefaults\t1\t2",
        f"UUID={u[None]}\tnone\tswap\tdefaults\t0\t0",  # the layout's options
        f"UUID={u['/boot']}\t/boot\txfs\tdefaults\t1\t2",
        f"UUID={u['/boot/efi']}\t/boot/efi\tvfat\tumask=0077,shortname=winnt\t0\t0",
    ]
    assert "tmpfs /tmp tmpfs defaults,size=2g 0 0" in lines[8:]
    assert not any("11111111-2222" in line for line in lines)


# -- initrd ----------------------------------------------------------------------------------

def test_kernel_versions_need_modules_and_a_kernel(root: Path) -> None:
    touch(root, "lib/modules/6.1.0-18-amd64/modules.dep", "boot/vmlinuz-6.1.0-18-amd64",
          "lib/modules/6.1.0-17-amd64/modules.dep",  # leftover modules, kernel removed
          "lib/modules/5.10.0-28-amd64/modules.dep", "boot/vmlinuz-5.10.0-28-amd64")
    assert kernel_versions(root) == ["5.10.0-28-amd64", "6.1.0-18-amd64"]


def test_kernel_versions_fedora_layout(root: Path) -> None:
    touch(root, "usr/lib/modules/6.5.6-300.fc39.x86_64/vmlinuz",
          "usr/lib/modules/6.5.6-300.fc39.x86_64/modules.dep")
    assert kernel_versions(root) == ["6.5.6-300.fc39.x86_64"]


def test_kernel_versions_merged_usr(root: Path) -> None:
    touch(root, "usr/lib/modules/6.1.0-18-amd64/modules.dep", "boot/vmlinuz-6.1.0-18-amd64")
    (root / "lib").symlink_to("usr/lib")
    assert kernel_versions(root) == ["6.1.0-18-amd64"]


def test_no_kernel(root: Path) -> None:
    assert kernel_versions(root) == []


def test_initramfs_tools(root: Path, fake_commands: FakeCommands) -> None:
    touch(root, "usr/sbin/update-initramfs", "boot/initrd.img-6.1.0-18-amd64")
    tool = best(TOOLS, root)
    assert isinstance(tool, InitramfsTools)
    fake_commands.add(["chroot", str(root), "update-initramfs"], "")
    tool.regenerate(root, ["5.10.0-28-amd64", "6.1.0-18-amd64"])
    assert fake_commands.calls == [
        ["chroot", str(root), "update-initramfs", "-c", "-k", "5.10.0-28-amd64"],  # no initrd
        ["chroot", str(root), "update-initramfs", "-u", "-t", "-k", "6.1.0-18-amd64"],
    ]


@pytest.mark.parametrize("path", ["usr/bin/dracut", "sbin/dracut"])
def test_dracut(root: Path, fake_commands: FakeCommands, path: str) -> None:
    touch(root, path)
    tool = best(TOOLS, root)
    assert isinstance(tool, Dracut)
    fake_commands.add(["chroot", str(root), "dracut"], "")
    tool.regenerate(root, ["6.5.6-300.fc39.x86_64"])
    assert fake_commands.calls == [["chroot", str(root), "dracut", "--force", "--no-hostonly",
                                    "--kver", "6.5.6-300.fc39.x86_64"]]


def test_suse_mkinitrd_only_without_dracut(root: Path, fake_commands: FakeCommands) -> None:
    touch(root, "sbin/mkinitrd")
    tool = best(TOOLS, root)
    assert isinstance(tool, SuseMkinitrd)
    fake_commands.add(["chroot", str(root), "mkinitrd"], "")
    tool.regenerate(root, ["4.12.14-122.37-default"])
    assert fake_commands.calls == [["chroot", str(root), "mkinitrd"]]
    # Newer SUSE: mkinitrd is a wrapper around dracut; use dracut.
    touch(root, "usr/bin/dracut")
    assert isinstance(best(TOOLS, root), Dracut)


def test_no_initrd_tool(root: Path) -> None:
    assert best(TOOLS, root) is None


def test_initrd_failure_carries_the_command(root: Path, fake_commands: FakeCommands) -> None:
    fake_commands.add(["chroot", str(root), "dracut"], FakeResult(
        stderr="dracut: Cannot find module directory /lib/modules/6.5.6/", returncode=1))
    with pytest.raises(SyscloneError, match=r"command 'chroot' failed with exit code 1: "
                                            r"dracut: Cannot find module directory"):
        Dracut().regenerate(root, ["6.5.6"])


# -- bootloader ------------------------------------------------------------------------------

def debian_grub(root: Path, *, bios: bool = True, efi: bool = True,
                update_grub: bool = True) -> None:
    touch(root, "usr/sbin/grub-install")
    if update_grub:
        touch(root, "usr/sbin/update-grub")
    if bios:
        touch(root, "usr/lib/grub/i386-pc/core.img")
    if efi:
        touch(root, "usr/lib/grub/x86_64-efi/core.efi")


def test_grub_bios_on_every_disk(root: Path, fake_commands: FakeCommands) -> None:
    debian_grub(root)
    fake_commands.add(["chroot", str(root)], "Installation finished. No error reported.\n")
    bl = best(BOOTLOADERS, root)
    assert isinstance(bl, Grub2) and bl.name == "grub2"
    bl.install(root, BootTarget("bios", ("/dev/vda", "/dev/vdb")))
    calls = fake_commands.calls
    # grubenv first; then the boot code and the configuration side by side.
    assert calls[0] == ["chroot", str(root), "grub-editenv", "/boot/grub/grubenv", "create"]
    code = [c for c in calls if c[2] == "grub-install"]
    assert code == [
        ["chroot", str(root), "grub-install", "--target=i386-pc", "--recheck", "/dev/vda"],
        ["chroot", str(root), "grub-install", "--target=i386-pc", "--recheck", "/dev/vdb"],
    ]
    assert sorted(calls[1:]) == sorted([*code, ["chroot", str(root), "update-grub"]])


def test_grub_config_waits_for_the_initrd(root: Path, fake_commands: FakeCommands) -> None:
    """update-grub lists the initrds: it must not run before they are final."""
    debian_grub(root)
    touch(root, "boot/grub/grubenv")  # there already: not created again
    ready: list[str] = []

    def update_grub(argv: list[str]) -> FakeResult:
        assert ready == ["initrd"], "update-grub ran before the initrd was ready"
        return FakeResult()

    fake_commands.add(["chroot", str(root), "grub-install"], "")
    fake_commands.add(["chroot", str(root), "update-grub"], update_grub)
    Grub2().install(root, BootTarget("bios", ("/dev/vda",)),
                    initrd_ready=lambda: ready.append("initrd"))
    assert sorted(c[2] for c in fake_commands.calls) == ["grub-install", "update-grub"]


def test_grub_uefi_with_fallback_path(root: Path, fake_commands: FakeCommands) -> None:
    debian_grub(root, update_grub=False)
    fake_commands.add(["chroot", str(root)], "")
    Grub2().install(root, BootTarget("uefi", ("/dev/nvme0n1p1",), esp_mountpoint="/efi"))
    code = [c for c in fake_commands.calls if c[2] == "grub-install"]
    assert code == [
        ["chroot", str(root), "grub-install", "--target=x86_64-efi", "--efi-directory=/efi",
         "--bootloader-id=sysclone", "--recheck"],
        ["chroot", str(root), "grub-install", "--target=x86_64-efi", "--efi-directory=/efi",
         "--removable", "--no-nvram"],
    ]
    assert ["chroot", str(root), "grub-mkconfig", "-o", "/boot/grub/grub.cfg"] \
        in fake_commands.calls


def test_grub_uefi_signed_goes_where_the_signed_image_looks(root: Path,
                                                           fake_commands: FakeCommands) -> None:
    """With grub-efi-amd64-signed in the image, grub-install puts Debian's
    signed GRUB (behind shim) on the ESP, and that image reads grub.cfg
    only from the EFI directory built into it: the install must use it."""
    debian_grub(root, update_grub=False)
    signed = root / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
    signed.parent.mkdir(parents=True)
    signed.write_bytes(b"MZ" + bytes(300) + b"prefix\x00/EFI/debian\x00" + bytes(100))
    fake_commands.add(["chroot", str(root)], "")
    Grub2().install(root, BootTarget("uefi", ("/dev/vda1",)))
    code = [c for c in fake_commands.calls if c[2] == "grub-install"]
    assert code[0] == ["chroot", str(root), "grub-install", "--target=x86_64-efi",
                       "--efi-directory=/boot/efi", "--bootloader-id=debian", "--recheck"]
    assert "--removable" in code[1]


def test_grub_uefi_signed_image_without_a_prefix(root: Path, fake_commands: FakeCommands) -> None:
    debian_grub(root, update_grub=False)
    signed = root / "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
    signed.parent.mkdir(parents=True)
    signed.write_bytes(b"MZ" + bytes(300))
    fake_commands.add(["chroot", str(root)], "")
    with pytest.raises(SyscloneError) as e:
        Grub2().install(root, BootTarget("uefi", ("/dev/vda1",)))
    assert "no /EFI/<directory>" in e.value.message
    assert not [c for c in fake_commands.calls if c[2] == "grub-install"]


def test_grub2_tools_of_rhel(root: Path, fake_commands: FakeCommands) -> None:
    touch(root, "usr/sbin/grub2-install", "usr/lib/grub/i386-pc/core.img")
    fake_commands.add(["chroot", str(root)], "")
    bl = best(BOOTLOADERS, root)
    assert isinstance(bl, Grub2RedHat)
    bl.install(root, BootTarget("bios", ("/dev/sda",)))
    assert fake_commands.calls[0] == ["chroot", str(root), "grub2-editenv", "/boot/grub2/grubenv",
                                      "create"]
    assert sorted(fake_commands.calls[1:]) == [
        ["chroot", str(root), "grub2-install", "--target=i386-pc", "--recheck", "/dev/sda"],
        ["chroot", str(root), "grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
    ]


@pytest.mark.parametrize(("firmware", "missing", "package"), [
    ("uefi", "usr/lib/grub/x86_64-efi", "grub-efi-amd64-bin"),
    ("bios", "usr/lib/grub/i386-pc", "grub-pc-bin"),
])
def test_grub_without_its_platform_modules(root: Path, fake_commands: FakeCommands,
                                           firmware: str, missing: str, package: str) -> None:
    debian_grub(root, bios=firmware != "bios", efi=firmware != "uefi")
    with pytest.raises(SyscloneError) as e:
        Grub2().install(root, BootTarget(firmware, ("/dev/vda",)))
    assert missing in e.value.message
    assert package in (e.value.hint or "")
    assert fake_commands.calls == []


def test_grub_install_failure(root: Path, fake_commands: FakeCommands) -> None:
    debian_grub(root)
    fake_commands.add(["chroot", str(root)], "")
    fake_commands.add(["chroot", str(root), "grub-install"], FakeResult(
        stderr="grub-install: error: cannot find EFI directory.\n", returncode=1))
    with pytest.raises(SyscloneError, match="cannot find EFI directory"):
        Grub2().install(root, BootTarget("uefi", ()))


def test_no_bootloader_in_the_image(root: Path) -> None:
    assert best(BOOTLOADERS, root) is None
    assert bootloader.Bootloader().fits(root) == 0
    assert initrd.InitrdTool().fits(root) == 0
