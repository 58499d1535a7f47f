"""imageserver.prehash: files hashed as rsync names them, trusted only while
they are still the file that was hashed."""

from __future__ import annotations

import hashlib
import os

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
    assert hashes["/etc/passwd"][4] == hashlib.sha256(b"root:x:0:0\n").hexdigest()
    known = reuse_from(hashes)
    assert known("/etc/passwd", os.lstat(tmp_path / "etc/passwd")) == hashes["/etc/passwd"][4]
    # Changed since (same size, another time): not trusted, the manifest reads it again.
    (tmp_path / "etc/passwd").write_text("root:y:0:0\n")
    os.utime(tmp_path / "etc/passwd", ns=(1, 1))
    assert known("/etc/passwd", os.lstat(tmp_path / "etc/passwd")) is None
    assert known("/etc/other", os.lstat(tmp_path / "etc/passwd")) is None
