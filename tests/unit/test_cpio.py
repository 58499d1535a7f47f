"""bootenv.cpio: the reproducible newc writer and its reader."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bootenv import cpio
from tests.conftest import DATA

HEADER = 110  # "070701" + 13 fields of 8 hex digits


def headers(archive: bytes) -> list[dict[str, Any]]:
    """Every header of a newc archive (trailer included), fields decoded."""
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor",
             "devminor", "rdevmajor", "rdevminor", "namesize", "check")
    out: list[dict[str, Any]] = []
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        h: dict[str, Any] = {
            n: int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i, n in enumerate(names)
        }
        name_end = pos + HEADER + int(h["namesize"])
        h["name"] = archive[pos + HEADER : name_end - 1].decode()
        assert archive[name_end - 1] == 0, "name not NUL-terminated"
        h["offset"] = pos
        out.append(h)
        if h["name"] == cpio.TRAILER:
            return out
        body = name_end + (4 - name_end % 4) % 4
        pos = body + int(h["filesize"])
        pos += (4 - pos % 4) % 4


def make_tree(top: Path, *, reverse: bool = False, mtime: int = 1_000_000_000) -> Path:
    """A small staging tree: dirs, a script, a data file, a symlink, an empty file."""
    items: list[tuple[str, str, bytes | str | None]] = [
        ("dir", "usr", None),
        ("dir", "usr/bin", None),
        ("file", "usr/bin/tool", b"#!/bin/sh\necho tool\n"),
        ("file", "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        ("file", "etc/empty", b""),
        ("link", "bin", "usr/bin"),
        ("file", "init", b"#!/bin/sh\nexec /usr/bin/tool\n"),
    ]
    for kind, rel, data in (reversed(items) if reverse else items):
        p = top / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            p.mkdir(exist_ok=True)
        elif kind == "file":
            assert isinstance(data, bytes)
            p.write_bytes(data)
            if rel in ("usr/bin/tool", "init"):
                p.chmod(p.stat().st_mode | 0o111)
        else:
            assert isinstance(data, str)
            p.symlink_to(data)
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (mtime, mtime), follow_symlinks=False)
    return top


def archive_of(top: Path, mtime: int = 1700000000) -> bytes:
    buf = io.BytesIO()
    entries = [*cpio.scan_tree(top), cpio.char_device("dev/console", 5, 1),
               cpio.Entry("dev", stat.S_IFDIR | 0o755)]
    size = cpio.write_archive(buf, entries, mtime=mtime)
    assert size == len(buf.getvalue())
    return buf.getvalue()


def test_scan_tree_lists_everything_sorted_with_normalized_modes(tmp_path):
    top = make_tree(tmp_path / "t")
    (top / "etc/passwd").chmod(0o600)
    (top / "usr/bin/tool").chmod(0o700)
    entries = {e.path: e for e in cpio.scan_tree(top)}
    assert sorted(entries) == ["bin", "etc", "etc/empty", "etc/passwd", "init", "usr",
                               "usr/bin", "usr/bin/tool"]
    assert entries["etc"].mode == stat.S_IFDIR | 0o755
    assert entries["etc/passwd"].mode == stat.S_IFREG | 0o644
    assert entries["usr/bin/tool"].mode == stat.S_IFREG | 0o755
    assert entries["bin"].mode == stat.S_IFLNK | 0o777
    assert entries["bin"].data == b"usr/bin"
    assert entries["usr/bin/tool"].source == top / "usr/bin/tool"
    assert entries["usr/bin/tool"].size == len(b"#!/bin/sh\necho tool\n")


def test_scan_tree_symlink_to_directory_is_a_symlink_not_followed(tmp_path):
    top = tmp_path / "t"
    (top / "usr/lib").mkdir(parents=True)
    (top / "usr/lib/libc.so.6").write_bytes(b"\x7fELF")
    (top / "lib").symlink_to("usr/lib")
    paths = [e.path for e in cpio.scan_tree(top)]
    assert paths == ["lib", "usr", "usr/lib", "usr/lib/libc.so.6"]


def test_scan_tree_refuses_special_files(tmp_path):
    top = tmp_path / "t"
    top.mkdir()
    os.mkfifo(top / "fifo")
    with pytest.raises(ValueError, match="unsupported file type"):
        list(cpio.scan_tree(top))


def test_normal_mode_strips_setuid_and_umask_effects():
    assert cpio._normal_mode(stat.S_IFREG | 0o4755) == stat.S_IFREG | 0o755
    assert cpio._normal_mode(stat.S_IFREG | 0o600) == stat.S_IFREG | 0o644
    assert cpio._normal_mode(stat.S_IFREG | 0o100) == stat.S_IFREG | 0o755
    assert cpio._normal_mode(stat.S_IFDIR | 0o700) == stat.S_IFDIR | 0o755


def test_round_trip_names_modes_and_contents(tmp_path):
    top = make_tree(tmp_path / "t")
    members = list(cpio.read_archive(archive_of(top)))
    assert [m[0] for m in members] == ["bin", "dev", "dev/console", "etc", "etc/empty",
                                       "etc/passwd", "init", "usr", "usr/bin", "usr/bin/tool"]
    got = {name: (mode, data) for name, mode, data in members}
    assert got["usr/bin/tool"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\necho tool\n")
    assert got["etc/passwd"] == (stat.S_IFREG | 0o644, b"root:x:0:0:root:/root:/bin/sh\n")
    assert got["etc/empty"] == (stat.S_IFREG | 0o644, b"")
    assert got["bin"] == (stat.S_IFLNK | 0o777, b"usr/bin")
    assert got["usr"] == (stat.S_IFDIR | 0o755, b"")
    assert got["dev/console"] == (stat.S_IFCHR | 0o600, b"")


def test_dev_console_is_char_device_5_1(tmp_path):
    hdrs = {h["name"]: h for h in headers(archive_of(make_tree(tmp_path / "t")))}
    console = hdrs["dev/console"]
    assert stat.S_ISCHR(console["mode"])
    assert (console["rdevmajor"], console["rdevminor"]) == (5, 1)
    assert console["filesize"] == 0
    # Every other member has no device number.
    assert all((h["rdevmajor"], h["rdevminor"]) == (0, 0)
               for n, h in hdrs.items() if n != "dev/console")


def test_headers_root_owned_fixed_mtime_sequential_inodes(tmp_path):
    hdrs = headers(archive_of(make_tree(tmp_path / "t"), mtime=1234567890))
    members, trailer = hdrs[:-1], hdrs[-1]
    assert [h["ino"] for h in members] == list(range(1, len(members) + 1))
    assert {(h["uid"], h["gid"]) for h in members} == {(0, 0)}
    assert {h["mtime"] for h in members} == {1234567890}
    assert {h["check"] for h in hdrs} == {0}
    assert {h["nlink"] for h in members if stat.S_ISDIR(h["mode"])} == {2}
    assert {h["nlink"] for h in members if not stat.S_ISDIR(h["mode"])} == {1}
    assert trailer["name"] == "TRAILER!!!"
    assert all(h["offset"] % 4 == 0 for h in hdrs)


def test_archive_is_padded_to_512_byte_blocks(tmp_path):
    data = archive_of(make_tree(tmp_path / "t"))
    assert len(data) % 512 == 0
    last = headers(data)[-1]
    end = int(last["offset"]) + HEADER + len(b"TRAILER!!!\0")
    assert data[end:] == b"\0" * (len(data) - end)


def test_empty_archive_is_just_a_trailer():
    buf = io.BytesIO()
    assert cpio.write_archive(buf, []) == 512
    assert list(cpio.read_archive(buf.getvalue())) == []
    assert [h["name"] for h in headers(buf.getvalue())] == ["TRAILER!!!"]


def test_same_tree_gives_identical_bytes_whatever_mtimes_order_and_umask(tmp_path):
    a = make_tree(tmp_path / "a", mtime=1_000_000_000)
    old = os.umask(0o077)
    try:
        b = make_tree(tmp_path / "b", reverse=True, mtime=1_600_000_000)
    finally:
        os.umask(old)
    # The umask really produced different permissions on disk...
    assert (a / "etc/passwd").stat().st_mode != (b / "etc/passwd").stat().st_mode
    assert (a / "usr").stat().st_mode != (b / "usr").stat().st_mode
    # ...and different owners too, where we may change them.
    if os.geteuid() == 0:
        for dirpath, dirnames, filenames in os.walk(b):
            for n in dirnames + filenames:
                os.chown(os.path.join(dirpath, n), 1234, 5678, follow_symlinks=False)
    assert archive_of(a) == archive_of(b)


def test_different_contents_give_different_bytes(tmp_path):
    a = make_tree(tmp_path / "a")
    b = make_tree(tmp_path / "b")
    (b / "etc/passwd").write_bytes(b"root:x:0:0::/:/bin/sh\n")
    assert archive_of(a) != archive_of(b)
    # and the archive mtime is the only thing that SOURCE_DATE_EPOCH changes
    assert archive_of(a, mtime=1) != archive_of(a, mtime=2)


def test_entries_are_sorted_so_parents_come_first(tmp_path):
    buf = io.BytesIO()
    entries = [cpio.Entry("a/b", stat.S_IFREG | 0o644, b"x"),
               cpio.Entry("a-b", stat.S_IFREG | 0o644, b"y"),
               cpio.Entry("a", stat.S_IFDIR | 0o755)]
    cpio.write_archive(buf, entries)
    assert [n for n, _, _ in cpio.read_archive(buf.getvalue())] == ["a", "a-b", "a/b"]


def test_duplicate_entries_are_refused():
    entries = [cpio.Entry("dev/console", stat.S_IFREG | 0o644),
               cpio.char_device("dev/console", 5, 1)]
    with pytest.raises(ValueError, match="duplicate initramfs entry: dev/console"):
        cpio.write_archive(io.BytesIO(), entries)


@pytest.mark.parametrize("length", range(9))
def test_padding_for_every_name_and_data_length(length):
    """Names and bodies of every length modulo 4 round-trip."""
    name = "f" * (length + 1)
    data = bytes(range(length * 3))
    buf = io.BytesIO()
    cpio.write_archive(buf, [cpio.Entry(name, stat.S_IFREG | 0o644, data),
                             cpio.Entry("z", stat.S_IFREG | 0o644, b"end")])
    assert list(cpio.read_archive(buf.getvalue())) == [
        (name, stat.S_IFREG | 0o644, data), ("z", stat.S_IFREG | 0o644, b"end")]


def test_read_archive_rejects_garbage():
    with pytest.raises(ValueError, match="bad cpio magic at offset 0"):
        list(cpio.read_archive(b"070707" + b"0" * 200))


def test_read_archive_reads_gnu_cpio_output():
    """An archive written by GNU cpio 2.13 (`cpio -o -H newc --reproducible`)."""
    data = (DATA / "bootenv" / "gnu-cpio-newc.cpio").read_bytes()
    got = {n: (m, d) for n, m, d in cpio.read_archive(data)}
    assert sorted(got) == [".", "dir", "dir/a.txt", "dir/sub", "dir/sub/b", "link"]
    assert got["dir/a.txt"] == (stat.S_IFREG | 0o644, b"hi\n")
    assert got["dir/sub/b"] == (stat.S_IFREG | 0o755, b"xxxxx")
    assert got["link"] == (stat.S_IFLNK | 0o777, b"dir/a.txt")
    assert got["dir"][0] == stat.S_IFDIR | 0o755
