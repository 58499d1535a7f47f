"""bootenv.staging: installing host files (and their symlinks and libraries)
into an initramfs staging tree, from a fake Debian host root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bootenv.staging import Staging, parse_ldd
from sysclone.errors import SyscloneError
from tests.conftest import DATA

LDD = DATA / "bootenv"
MULTIARCH = "usr/lib/x86_64-linux-gnu"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\0" * 56
RSYNC_LIBS = ["libacl.so.1.1.2301", "libpopt.so.0", "liblz4.so.1", "libzstd.so.1",
              "libxxhash.so.0", "libcrypto.so.3", "libz.so.1", "libc.so.6"]


def sample(name: str) -> str:
    return (LDD / name).read_text()


def _file(p: Path, data: bytes, mode: int) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    p.chmod(mode)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A merged-/usr Debian host root, as on the build machines."""
    h = tmp_path / "host"
    for d in ("usr/bin", "usr/sbin", MULTIARCH, "usr/lib64", "usr/share/doc/rsync"):
        (h / d).mkdir(parents=True)
    for d in ("bin", "sbin", "lib", "lib64"):
        (h / d).symlink_to(f"usr/{d}")
    _file(h / "usr/bin/rsync", ELF + b"rsync", 0o755)
    _file(h / "usr/sbin/mke2fs", ELF + b"mke2fs", 0o755)
    (h / "usr/sbin/mkfs.ext4").symlink_to("mke2fs")
    _file(h / "usr/bin/script", b"#!/bin/sh\n", 0o755)
    _file(h / "usr/share/doc/rsync/README", b"docs\n", 0o644)
    for lib in RSYNC_LIBS:
        _file(h / MULTIARCH / lib, ELF + lib.encode(), 0o644)
    (h / MULTIARCH / "libacl.so.1").symlink_to("libacl.so.1.1.2301")
    _file(h / MULTIARCH / "ld-linux-x86-64.so.2", ELF + b"ld.so", 0o755)
    # Debian's loader link is absolute.
    (h / "usr/lib64/ld-linux-x86-64.so.2").symlink_to(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    return h


@pytest.fixture
def staging(tmp_path: Path, host: Path) -> Staging:
    top = tmp_path / "root"
    top.mkdir()
    return Staging(top, host_root=host)


def fake_ldd(fake_commands, host: Path) -> None:
    """ldd answers from captured output, for exactly the files it is asked about."""
    fake_commands.add(["ldd", str(host / "usr/bin/rsync")], sample("ldd-rsync.txt"))
    fake_commands.add(["ldd", str(host / "usr/sbin/mke2fs")], sample("ldd-libacl.txt"))
    for lib in RSYNC_LIBS:
        if lib != "libc.so.6":
            fake_commands.add(["ldd", str(host / MULTIARCH / lib)], sample("ldd-libacl.txt"))
    fake_commands.add(["ldd", str(host / MULTIARCH / "libc.so.6")], sample("ldd-libc.txt"))
    fake_commands.add(["ldd", str(host / MULTIARCH / "ld-linux-x86-64.so.2")],
                      sample("ldd-ld-linux.txt"))


def ldd_calls(fake_commands) -> list[str]:
    return [c[1] for c in fake_commands.calls if c[0] == "ldd"]


# ------------------------------------------------------------------ ldd ---

def test_parse_ldd_real_output():
    assert parse_ldd(sample("ldd-rsync.txt"), "rsync") == [
        "/lib/x86_64-linux-gnu/libacl.so.1", "/lib/x86_64-linux-gnu/libpopt.so.0",
        "/lib/x86_64-linux-gnu/liblz4.so.1", "/lib/x86_64-linux-gnu/libzstd.so.1",
        "/lib/x86_64-linux-gnu/libxxhash.so.0", "/lib/x86_64-linux-gnu/libcrypto.so.3",
        "/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2"]


def test_parse_ldd_skips_vdso_and_static():
    assert parse_ldd(sample("ldd-libc.txt"), "libc") == ["/lib64/ld-linux-x86-64.so.2"]
    assert parse_ldd(sample("ldd-static.txt"), "ldconfig") == []
    assert parse_ldd("", "x") == []


def test_parse_ldd_missing_library_is_an_error():
    with pytest.raises(SyscloneError, match=r"^/usr/bin/rsync: shared library libxxhash\.so\.0 "
                                            r"not found on the host$"):
        parse_ldd(sample("ldd-rsync-missing-lib.txt"), "/usr/bin/rsync")


# ------------------------------------------------------- basic writing ---

def test_path_maps_absolute_and_relative_into_top(staging):
    assert staging.path("/usr/bin/x") == staging.top / "usr/bin/x"
    assert staging.path("etc/passwd") == staging.top / "etc/passwd"


def test_write_sets_mode_and_records(staging):
    staging.write("etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    staging.write("init", b"#!/bin/sh\n", 0o755)
    assert (staging.top / "etc/passwd").read_text() == "root:x:0:0::/root:/bin/sh\n"
    assert (staging.top / "etc/passwd").stat().st_mode & 0o777 == 0o644
    assert (staging.top / "init").stat().st_mode & 0o777 == 0o755
    assert {"etc/passwd", "init"} <= staging.installed


def test_symlink_is_idempotent_but_refuses_conflicts(staging):
    staging.symlink("bin", "usr/bin")
    staging.symlink("bin", "usr/bin")
    assert os.readlink(staging.top / "bin") == "usr/bin"
    with pytest.raises(SyscloneError, match="initramfs path bin already exists"):
        staging.symlink("bin", "usr/sbin")
    staging.write("etc/mtab", "x")
    with pytest.raises(SyscloneError, match="already exists"):
        staging.symlink("etc/mtab", "../proc/self/mounts")


def test_copy_keeps_source_mode_unless_told(staging, host):
    staging.copy(host / "usr/bin/script", "/usr/bin/a")
    staging.copy(host / "usr/bin/script", "/usr/bin/b", mode=0o600)
    assert (staging.top / "usr/bin/a").stat().st_mode & 0o777 == 0o755
    assert (staging.top / "usr/bin/b").stat().st_mode & 0o777 == 0o600
    assert (staging.top / "usr/bin/a").read_bytes() == b"#!/bin/sh\n"


# ------------------------------------------------------------- install ---

def test_install_binary_follows_libraries_and_symlinks(staging, host, fake_commands):
    fake_ldd(fake_commands, host)
    assert staging.install_binary("rsync") == "/usr/bin/rsync"
    top = staging.top
    assert (top / "usr/bin/rsync").read_bytes() == ELF + b"rsync"
    assert (top / "usr/bin/rsync").stat().st_mode & 0o777 == 0o755
    # /lib -> usr/lib and /lib64 -> usr/lib64, recreated as on the host
    assert os.readlink(top / "lib") == "usr/lib"
    assert os.readlink(top / "lib64") == "usr/lib64"
    # every library, at its real place, symlinks included
    for lib in RSYNC_LIBS:
        assert (top / MULTIARCH / lib).read_bytes() == ELF + lib.encode()
    assert os.readlink(top / MULTIARCH / "libacl.so.1") == "libacl.so.1.1.2301"
    assert (top / MULTIARCH / "libacl.so.1.1.2301").stat().st_mode & 0o777 == 0o644
    # the loader: absolute link kept, its target copied
    assert os.readlink(top / "usr/lib64/ld-linux-x86-64.so.2") == \
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    assert (top / MULTIARCH / "ld-linux-x86-64.so.2").read_bytes() == ELF + b"ld.so"
    # nothing the host did not give: no stray files
    files = sorted(str(p.relative_to(top)) for p in top.rglob("*") if p.is_file()
                   and not p.is_symlink())
    assert files == sorted(["usr/bin/rsync", f"{MULTIARCH}/ld-linux-x86-64.so.2",
                            *(f"{MULTIARCH}/{lib}" for lib in RSYNC_LIBS)])


def test_ldd_runs_once_per_file(staging, host, fake_commands):
    fake_ldd(fake_commands, host)
    staging.install_binary("rsync")
    staging.install_binary("mkfs.ext4")  # needs libacl and libc again
    staging.install("/usr/bin/rsync")
    calls = ldd_calls(fake_commands)
    assert len(calls) == len(set(calls))
    assert str(host / MULTIARCH / "libc.so.6") in calls
    assert str(host / "usr/sbin/mke2fs") in calls


def test_install_binary_by_alias_symlink(staging, host, fake_commands):
    fake_ldd(fake_commands, host)
    assert staging.install_binary("mkfs.ext4") == "/usr/sbin/mkfs.ext4"
    assert os.readlink(staging.top / "usr/sbin/mkfs.ext4") == "mke2fs"
    assert (staging.top / "usr/sbin/mke2fs").read_bytes() == ELF + b"mke2fs"
    assert "/usr/sbin/mkfs.ext4" in staging.installed
    assert "/usr/sbin/mke2fs" in staging.installed


def test_install_through_symlinked_directory(staging, host, fake_commands):
    """/sbin/mke2fs on a merged-/usr host is /usr/sbin/mke2fs behind /sbin -> usr/sbin."""
    fake_ldd(fake_commands, host)
    staging.install("/sbin/mke2fs")
    assert os.readlink(staging.top / "sbin") == "usr/sbin"
    assert (staging.top / "usr/sbin/mke2fs").is_file()
    assert "/sbin/mke2fs" in staging.installed


def test_install_binary_missing_tool(staging):
    with pytest.raises(SyscloneError, match="tool 'mdadm' is not installed on the build host"
                       ) as e:
        staging.install_binary("mdadm")
    assert e.value.hint and "Debian package" in e.value.hint


def test_install_missing_path(staging):
    with pytest.raises(SyscloneError, match="/usr/lib/udev/ata_id is not on the build host"):
        staging.install("/usr/lib/udev/ata_id")


def test_install_non_elf_executable_runs_no_ldd(staging, fake_commands):
    staging.install("/usr/bin/script")  # an unregistered ldd call would fail the test
    assert (staging.top / "usr/bin/script").read_bytes() == b"#!/bin/sh\n"
    assert ldd_calls(fake_commands) == []


def test_install_without_following_libs(staging, fake_commands):
    staging.install("/usr/bin/rsync", follow_libs=False)
    assert (staging.top / "usr/bin/rsync").is_file()
    assert ldd_calls(fake_commands) == []


def test_install_plain_data_file_and_directory(staging, fake_commands):
    staging.install("/usr/share/doc/rsync/README")
    staging.install("/usr/share/doc")
    assert (staging.top / "usr/share/doc/rsync/README").read_bytes() == b"docs\n"
    assert (staging.top / "usr/share/doc").is_dir()
    assert ldd_calls(fake_commands) == []


def test_install_normalizes_paths(staging, host, fake_commands):
    fake_ldd(fake_commands, host)
    staging.install("/usr/bin/../bin/rsync")
    assert "/usr/bin/rsync" in staging.installed
    assert (staging.top / "usr/bin/rsync").is_file()


def test_needed_libs_of_non_elf_is_empty(staging, host, fake_commands):
    assert staging.needed_libs(host / "usr/share/doc/rsync/README") == []
    assert fake_commands.calls == []


def test_missing_library_on_host_fails_the_install(staging, host, fake_commands):
    fake_commands.add(["ldd", str(host / "usr/bin/rsync")], sample("ldd-rsync-missing-lib.txt"))
    with pytest.raises(SyscloneError, match=r"libxxhash\.so\.0 not found on the host"):
        staging.install_binary("rsync")
