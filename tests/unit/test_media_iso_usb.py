"""mkmedia.iso, mkmedia.usb and mkmedia.localcfg without running a tool:
what is staged, the commands run (faked by argv), and the checks that
keep `media usb --device` off the wrong disk."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bootenv.cpio import read_archive
from mkmedia import localcfg, usb
from mkmedia.iso import MediumSpec, build_iso
from mkmedia.usb import DeviceFacts, build_image, check_device, layout, sfdisk_script
from sysclone.cli import main
from sysclone.errors import ConfigError
from tests.conftest import FakeCommands, FakeResult
from tests.unit.mediafakes import fake_bootfiles

GB = 10**9


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MediumSpec:
    fake_bootfiles(tmp_path / "host", monkeypatch)
    be = tmp_path / "bootenv"
    be.mkdir()
    (be / "kernel").write_bytes(b"k" * 1000)
    (be / "initrd.img").write_bytes(b"i" * 2000)
    return MediumSpec(be / "kernel", be / "initrd.img", "console=ttyS0 IMAGESERVER=10.0.0.3",
                      "HOSTNAME=node1\n")


def test_local_cfg_archive_puts_the_file_where_either_packing_reads_it():
    members = {name: (mode, data) for name, mode, data in
               read_archive(localcfg.initrd_archive("IMAGENAME=web\n"))}
    assert members["local.cfg"][1] == b"IMAGENAME=web\n"
    assert members["s1/local.cfg"][1] == b"IMAGENAME=web\n"
    assert stat.S_ISDIR(members["s1"][0])
    assert len(localcfg.initrd_archive("x")) % 512 == 0  # the kernel reads 512-byte blocks


def test_local_cfg_is_checked_when_the_medium_is_made(tmp_path):
    cfg = tmp_path / "local.cfg"
    cfg.write_text("IMAGESERVER=10.0.0.3\nsi.imagename=web\n")
    with pytest.raises(ConfigError, match=r"si\.imagename: unknown install parameter"):
        localcfg.read_checked(cfg)
    cfg.write_text("IMAGESERVER=10.0.0.3\nMY_VAR=1\n")
    text, warnings = localcfg.read_checked(cfg)
    assert text.startswith("IMAGESERVER") and "unknown parameter MY_VAR" in warnings[0]
    with pytest.raises(ConfigError, match="no such file"):
        localcfg.read_checked(tmp_path / "nope")


def xorriso(argv: list[str]) -> FakeResult:
    Path(argv[argv.index("-o") + 1]).write_bytes(b"iso")
    return FakeResult()


def test_iso(tmp_path, spec, fake_commands: FakeCommands):
    out = tmp_path / "out/boot.iso"
    fake_commands.add(["mkfs.vfat"], "")
    fake_commands.add(["mmd"], "")
    fake_commands.add(["mcopy"], "")
    fake_commands.add(["xorriso"], xorriso)
    work = tmp_path / "work"
    assert build_iso(out, spec, work) == out
    assert out.read_bytes() == b"iso"
    iso = work / "iso"
    token = spec.token()
    assert (iso / f"sysclone/medium-{token}").is_file()
    assert (iso / ".disk/info").read_text().startswith("sysclone boot medium")
    assert (iso / "sysclone/local.cfg").read_text() == "HOSTNAME=node1\n"
    assert dict((n, d) for n, _, d in read_archive((iso / "sysclone/localcfg.img").read_bytes())
                )["local.cfg"] == b"HOSTNAME=node1\n"
    assert "APPEND initrd=/sysclone/initrd.img,/sysclone/localcfg.img console=ttyS0" in (
        iso / "isolinux/isolinux.cfg").read_text()
    grub = (iso / "boot/grub/grub.cfg").read_text()
    assert f"search --no-floppy --set=root --file /sysclone/medium-{token}" in grub
    assert "initrd /sysclone/initrd.img /sysclone/localcfg.img" in grub
    [xo] = [c for c in fake_commands.calls if c[0] == "xorriso"]
    for a, b in (("-isohybrid-mbr", str(tmp_path / "host/usr/lib/ISOLINUX/isohdpfx.bin")),
                 ("-b", "isolinux/isolinux.bin"), ("-e", "boot/efi.img")):
        assert xo[xo.index(a) + 1] == b
    assert "-isohybrid-gpt-basdat" in xo and xo[-1] == str(iso)
    copies = {c[-1]: c[-2] for c in fake_commands.calls if c[0] == "mcopy"}
    assert copies["::/EFI/BOOT/BOOTX64.EFI"].endswith("shimx64.efi.signed")
    assert copies["::/EFI/BOOT/grubx64.efi"].endswith("gcdx64.efi.signed")
    assert "::/EFI/BOOT/grub.cfg" in copies  # the fallback when GRUB's search fails


def test_iso_without_local_cfg_has_one_initrd(tmp_path, spec, fake_commands):
    for tool in ("mkfs.vfat", "mmd", "mcopy"):
        fake_commands.add([tool], "")
    fake_commands.add(["xorriso"], xorriso)
    plain = MediumSpec(spec.kernel, spec.initrd, spec.append)
    build_iso(tmp_path / "a.iso", plain, tmp_path / "w")
    assert not (tmp_path / "w/iso/sysclone/localcfg.img").exists()
    assert "initrd=/sysclone/initrd.img " in (tmp_path / "w/iso/isolinux/isolinux.cfg"
                                              ).read_text()


def test_usb_layout_and_partition_table():
    lay = layout(30 << 20, 64)
    assert lay.esp_start == 1 << 20 and lay.esp_size % (1 << 20) == 0
    assert lay.data_start == lay.esp_start + lay.esp_size and lay.data_size == 64 << 20
    script = sfdisk_script(lay)
    assert 'name="sysclone-boot", attrs="LegacyBIOSBootable"' in script
    assert f"type={usb.ESP_TYPE}" in script and 'name="sysclone-data"' in script
    with pytest.raises(ConfigError, match="--data-size 4: from 8 to 32768 MiB"):
        layout(1, 4)


def test_usb_image(tmp_path, spec, fake_commands):
    for tool in ("sfdisk", "mkfs.vfat", "mmd", "mcopy", "syslinux"):
        fake_commands.add([tool], "")
    out = build_image(tmp_path / "usb.img", spec)
    mbr = out.read_bytes()[:512]
    # the BIOS boot code, and nothing over the partition table after it
    assert mbr[:10] == b"gptmbr.bin" and mbr[10:] == bytes(502)
    calls = fake_commands.calls
    [sl] = [c for c in calls if c[0] == "syslinux"]
    assert sl[sl.index("--offset") + 1] == str(1 << 20) and sl[-1].endswith(".usb.img.tmp")
    labels = [c[c.index("-n") + 1] for c in calls if c[0] == "mkfs.vfat"]
    assert labels == ["SYSCLONE", "SYSCLONECFG"]
    copies = {c[-1]: c[-2] for c in calls if c[0] == "mcopy"}
    assert copies["::/EFI/BOOT/grubx64.efi"].endswith("grubx64.efi.signed")
    assert "::/EFI/debian/grub.cfg" in copies and "::/local.cfg" in copies
    # local.cfg goes on the writable partition, not into a second initrd
    assert "::/sysclone/localcfg.img" not in copies


def facts(**kw) -> DeviceFacts:
    d = dict(path="/dev/sdb", name="sdb", size=16 * GB, removable=True, transport="usb",
             mounted=(), is_partition=False)
    d.update(kw)
    return DeviceFacts(**d)


@pytest.mark.parametrize(("kw", "force", "message"), [
    ({"mounted": ("/media/stick",)}, True, "is mounted on /media/stick"),
    ({"is_partition": True}, True, "is a partition"),
    ({"removable": False, "transport": ""}, False, "is not a removable disk"),
    ({"size": 500 * GB}, False, "is 500 GB, larger than --max-size 64 GB"),
])
def test_device_checks(kw, force, message):
    with pytest.raises(ConfigError, match=message):
        check_device(facts(**kw), max_bytes=64 * GB, force=force)


def test_force_writes_a_fixed_or_big_disk_but_never_a_mounted_one():
    check_device(facts(removable=False, size=2000 * GB), max_bytes=64 * GB, force=True)
    check_device(facts(), max_bytes=64 * GB, force=False)


def test_device_facts_of_something_that_is_not_a_disk(tmp_path):
    with pytest.raises(ConfigError, match="is not a block device"):
        usb.device_facts("/dev/null")
    with pytest.raises(ConfigError, match="No such file"):
        usb.device_facts(str(tmp_path / "nope"))


def test_media_usb_needs_one_target(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "media", "usb"]) == 1
    assert "give --output FILE (a disk image) or --device DEV" in capsys.readouterr().err
    assert main(["--root", str(tmp_path), "media", "usb", "--output", "a", "--device", "b"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--output and --device exclude each other" in err[0], err
    assert main(["--root", str(tmp_path), "media", "usb", "--device", "/dev/null"]) == 1
    assert "is not a block device" in capsys.readouterr().err


def test_media_iso_command_checks_before_building(tmp_path, capsys, monkeypatch):
    fake_bootfiles(tmp_path / "host", monkeypatch)
    root = tmp_path / "root"
    be = root / "bootenv/standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(b"k")
    (be / "initrd.img").write_bytes(b"i")
    assert main(["--root", str(root), "media", "iso"]) == 1
    assert "--output FILE is required" in capsys.readouterr().err
    out = tmp_path / "x.iso"
    assert main(["--root", str(root), "media", "iso", "--output", str(out), "--append",
                 "si.hostnme=x"]) == 1
    assert "si.hostnme: unknown install parameter" in capsys.readouterr().err
    assert main(["--root", str(root), "media", "iso", "--output", str(out), "--append",
                 "a\nb"]) == 1
    assert "control character" in capsys.readouterr().err
    assert main(["--root", str(root), "media", "iso", "--output", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    # Resolved as the agent resolves them at its start: what it would
    # refuse on every client that boots the medium is refused here.
    cfg = tmp_path / "local.cfg"
    cfg.write_text("si.netmask=255.255.255.0\nsi.gateway=10.1.0.1\n")
    for extra, says in ((["--append", "si.dl-protocol=torrent"], "si.dl-protocol: 'torrent'"),
                        (["--append", "si.break=bogus"], "si.break: 'bogus' is not a step"),
                        (["--append", "si.ip-address=10.0.0.5", "--local-cfg", str(cfg)],
                         "si.gateway: '10.1.0.1' is outside 10.0.0.0/24")):
        assert main(["--root", str(root), "media", "iso", "--output", str(out), *extra]) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not out.exists()


def test_media_usb_data_size_is_checked_up_front(tmp_path, capsys):
    """Too large, the image file failed at the end with the file system's
    own "File too large", naming neither the option nor its limit."""
    out = tmp_path / "u.img"
    assert main(["--root", str(tmp_path), "media", "usb", "--output", str(out),
                 "--data-size", "999999999"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--data-size 999999999: from 8 to 32768 MiB" in err[0], err
    assert not out.exists()


def test_an_output_file_in_the_image_store_is_named_as_given(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    out = root / "images/x.iso"
    assert main(["--root", str(root), "media", "iso", "--output", str(out)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"--output {out}: is inside the image store" in err[0], err
