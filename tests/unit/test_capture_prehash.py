"""imageserver.prehash: files hashed as rsync names them, trusted only while
they are still the file that was hashed."""

from __future__ import annotations

import hashlib
import os

import pytest

from imageserver import manifest, prehash
from imageserver.prehash import OUT_FORMAT, Prehasher, is_item, reuse_from, unescape


def test_names_as_rsync_prints_them():
    assert OUT_FORMAT == "--out-format=%i %b %n"
    assert is_item(">f+++++++++ 1234 etc/passwd")
    assert is_item("cd+++++++++ 0 etc/")
    assert not is_item("sent 1,234 bytes  received 56 bytes")
    assert not is_item("rsync: [receiver] write failed")
    assert unescape("odd\\#012name \\#377") == os.fsdecode(b"odd\nname \xff")


def test_hashes_what_rsync_received_and_only_that(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0\n")
    (tmp_path / "etc/new\nline").write_text("odd\n")
    pre = Prehasher(tmp_path)
    assert pre.feed(">f+++++++++ 11 etc/passwd")
    assert pre.feed(">f+++++++++ 4 etc/new\\#012line")
    assert pre.feed("cd+++++++++ 0 etc/")  # a directory: named, not hashed
    assert pre.feed(">f+++++++++ 3 etc/never-arrived")
    assert not pre.feed("rsync: some message")
    hashes = pre.close()
    assert set(hashes) == {"/etc/passwd", "/etc/new\nline"}
    assert hashes["/etc/passwd"].sha256 == hashlib.sha256(b"root:x:0:0\n").hexdigest()
    known = reuse_from(hashes)
    assert known("/etc/passwd", os.lstat(tmp_path / "etc/passwd")) == \
        (hashes["/etc/passwd"].sha256, ())
    # Changed since (same size, another time): not trusted, the manifest reads it again.
    (tmp_path / "etc/passwd").write_text("root:y:0:0\n")
    os.utime(tmp_path / "etc/passwd", ns=(1, 1))
    assert known("/etc/passwd", os.lstat(tmp_path / "etc/passwd")) is None
    assert known("/etc/other", os.lstat(tmp_path / "etc/passwd")) is None


def test_extended_attributes_are_read_beside_and_kept_while_the_inode_is(tmp_path):
    """The workers read the new file's xattrs; the manifest takes them while
    the inode's ctime is the one they saw (another name for the file, a
    chmod, a setfattr change it), and reads them itself otherwise -- the
    hash stays good as long as the content's identity is."""
    f = tmp_path / "bin-ping"
    f.write_bytes(b"\x7fELF")
    os.setxattr(f, "user.note", b"v1")
    pre = Prehasher(tmp_path)
    pre.feed(">f+++++++++ 4 bin-ping")
    hashes = pre.close()
    note = (("user.note", hashlib.sha256(b"v1").hexdigest()),)
    assert hashes["/bin-ping"].xattrs == note
    known = reuse_from(hashes)
    sha = hashlib.sha256(b"\x7fELF").hexdigest()
    assert known("/bin-ping", os.lstat(f)) == (sha, note)
    os.link(f, tmp_path / "bin-ping6")  # rsync -H makes the other names later
    assert known("/bin-ping", os.lstat(f)) == (sha, None)
    # And what the manifest then records is what the file has.
    os.setxattr(f, "user.note", b"v2")
    entry = next(e for e in manifest.build(tmp_path, prehashed=known).entries
                 if e.path == "/bin-ping")
    assert entry.sha256 == sha
    assert entry.xattrs == (("user.note", hashlib.sha256(b"v2").hexdigest()),)


def test_a_manifest_takes_the_workers_xattrs(tmp_path, monkeypatch):
    """No second listxattr for a file the workers read (and one for the rest)."""
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    pre = Prehasher(tmp_path)
    pre.feed(">f+++++++++ 1 a")
    known = reuse_from(pre.close())
    read: list[str] = []
    real = manifest.read_xattrs
    monkeypatch.setattr(manifest, "read_xattrs", lambda p: read.append(p) or real(p))
    w = manifest.build(tmp_path, prehashed=known)
    assert sorted(os.path.basename(p) for p in read) == sorted([os.path.basename(tmp_path), "b"])
    assert w.prehashed == 1 and w.hashed == 1


@pytest.mark.parametrize(("cpus", "workers"), [(None, 1), (1, 1), (2, 1), (3, 2), (5, 4),
                                               (64, 4)])
def test_hashing_threads_leave_rsync_a_cpu(monkeypatch, cpus, workers):
    monkeypatch.setattr(prehash.os, "cpu_count", lambda: cpus)
    assert prehash.default_workers() == workers
