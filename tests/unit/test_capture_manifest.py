"""imageserver.manifest and dedupe: every path described and hashed,
compared, saved and loaded; unchanged files shared with a stored version."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from imageserver import manifest, manifestchain
from imageserver.dedupe import dedupe


def tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/hostname").write_text("golden\n")
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.link(root / "bin/tool", root / "bin/tool2")
    (root / "link").symlink_to("etc/hostname")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "etc/hostname", "user.note", b"v1")
    fd = os.open(os.fsencode(root) + b"/odd\n\xff name", os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
    return root


def by_path(entries: list[manifest.Entry]) -> dict[str, manifest.Entry]:
    return {e.path: e for e in entries}


def test_build_describes_every_path(tmp_path):
    w = manifest.build(tree(tmp_path / "t"))
    e = by_path(w.entries)
    assert [x.path for x in w.entries][:3] == ["/", "/bin", "/bin/tool"]  # depth first, sorted
    assert e["/etc/hostname"].sha256 == hashlib.sha256(b"golden\n").hexdigest()
    assert e["/etc/hostname"].xattrs == (("user.note", hashlib.sha256(b"v1").hexdigest()),)
    assert e["/bin/tool2"].link == "/bin/tool" and e["/bin/tool"].link is None
    assert e["/bin/tool2"].sha256 == e["/bin/tool"].sha256
    assert e["/link"].type == "l" and e["/link"].target == "etc/hostname"
    assert e["/fifo"].type == "p" and e["/fifo"].sha256 is None
    odd = os.fsdecode(b"/odd\n\xff name")
    assert e[odd].mode == 0o600
    assert w.reused == 0 and w.new_bytes > 0


def test_save_and_load_round_trip(tmp_path):
    entries = manifest.build(tree(tmp_path / "t")).entries
    digest = manifest.save(entries, tmp_path / "m.jsonl.gz")
    assert digest == manifest.sha256_file(tmp_path / "m.jsonl.gz")
    assert manifest.load(tmp_path / "m.jsonl.gz") == entries


def test_lines_are_the_format_stored_manifests_have(tmp_path):
    """The shared encoder writes what json.dumps wrote before it: stored
    manifests and their entries_sha256 keep verifying (odd names too)."""
    entries = manifest.build(tree(tmp_path / "t")).entries
    for e in entries:
        assert manifest.line(e) == json.dumps(e.to_dict(), separators=(",", ":")) + "\n"
    lines = manifestchain.lines_of(entries)
    shuffled = entries[::-1]  # the digest is of manifest order, however given
    assert manifestchain.entries_digest(entries, lines) == \
        manifestchain.entries_digest(shuffled) == manifestchain.entries_digest(entries)
    manifestchain.save(tmp_path, entries, None, lines)
    assert manifest.load(tmp_path / manifestchain.FULL) == entries


def test_compare_says_what_changed(tmp_path):
    root = tree(tmp_path / "t")
    old = manifest.build(root).entries
    st = os.lstat(root / "bin/tool")
    with (root / "bin/tool").open("r+b") as f:
        f.write(b"\x7fELG")
    os.utime(root / "bin/tool", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.chmod(root / "etc/hostname", 0o600)
    os.setxattr(root / "etc/hostname", "user.note", b"v2")
    os.chown(root / "fifo", 1000, 1000)
    (root / "link").unlink()
    (root / "link").symlink_to("elsewhere")
    (root / "new").write_text("x")
    os.unlink(root / "bin/tool2")
    changes = {c.path: c for c in manifest.compare(old, manifest.build(root).entries,
                                                   ignore=frozenset({"mtime"}))}
    assert changes["/bin/tool"].what == ("content",)  # hard link gone, same inode group
    assert changes["/etc/hostname"].what == ("mode", "xattrs")
    assert changes["/fifo"].what == ("owner",)
    assert changes["/link"].what == ("link target",)
    assert changes["/new"].kind == "added" and changes["/bin/tool2"].kind == "removed"
    assert changes["/new"].describe() == "added    /new"
    assert changes["/etc/hostname"].describe() == "changed  /etc/hostname  (mode, xattrs)"
    assert manifest.Change(os.fsdecode(b"/a\n\xff"), "added").describe() == "added    /a\\n\\xff"


def test_reuse_skips_hashing(tmp_path):
    root = tree(tmp_path / "t")
    w = manifest.build(root, reuse=lambda rel, st: "f" * 64 if rel == "/bin/tool" else None)
    e = by_path(w.entries)
    assert e["/bin/tool"].sha256 == e["/bin/tool2"].sha256 == "f" * 64  # the group follows
    assert w.reused == 1


def test_dedupe_shares_identical_files_and_keeps_directory_times(tmp_path):
    base = tree(tmp_path / "base")
    new = tmp_path / "new"
    copy(base, new)
    (new / "etc/hostname").write_text("changed\n")
    base_entries = manifest.build(base).entries
    entries = manifest.build(new).entries
    d = dedupe(new, entries, base, base_entries)
    assert d.files == 3  # tool and tool2 (one group) and the odd empty file, not hostname
    assert os.lstat(new / "bin/tool").st_ino == os.lstat(base / "bin/tool").st_ino
    assert os.lstat(new / "bin/tool2").st_ino == os.lstat(base / "bin/tool").st_ino
    assert os.lstat(new / "etc/hostname").st_ino != os.lstat(base / "etc/hostname").st_ino
    # The tree is still exactly what its manifest says.
    assert manifest.compare(entries, manifest.build(new).entries) == []
    assert not list(new.rglob("*.tmp"))


def copy(src: Path, dst: Path) -> None:
    """A faithful copy without commands: modes, times, xattrs, hard links."""
    seen: dict[tuple[int, int], Path] = {}
    dst.mkdir()
    for rel, st in manifest.walk_tree(src):
        if rel == "/":
            continue
        s, d = Path(str(src) + rel), Path(str(dst) + rel)
        if os.path.isdir(s) and not os.path.islink(s):
            d.mkdir()
        elif os.path.islink(s):
            d.symlink_to(os.readlink(s))
        elif (st.st_dev, st.st_ino) in seen:
            os.link(seen[(st.st_dev, st.st_ino)], d)
            continue
        elif s.is_fifo():
            os.mkfifo(d)
        else:
            d.write_bytes(s.read_bytes())
            seen[(st.st_dev, st.st_ino)] = d
        for n in os.listxattr(s, follow_symlinks=False):
            os.setxattr(d, n, os.getxattr(s, n, follow_symlinks=False), follow_symlinks=False)
        if not os.path.islink(s):
            os.chmod(d, st.st_mode & 0o7777)
    for rel, st in reversed(list(manifest.walk_tree(src))):
        os.utime(str(dst) + rel if rel != "/" else dst, ns=(st.st_atime_ns, st.st_mtime_ns),
                 follow_symlinks=False)


def test_line_is_json_dumps_of_every_kind_of_entry():
    """line() builds the text itself: it must stay, byte for byte, what
    json.dumps of to_dict() gives (stored manifests' digests depend on it)."""
    odd = os.fsdecode(b"/odd \xff\n\"q\"\\ \xc3\xa9 \t")
    entries = [
        manifest.Entry("/", "d", 0o755, 0, 0, 1),
        manifest.Entry(odd, "f", 0o4755, 1000, 100, 2, 7, "ab" * 32,
                       xattrs=(("security.capability", "cd" * 32), ("user.é", "ef" * 32))),
        manifest.Entry("/f-unhashed", "f", 0o600, 0, 0, -5, 0, None),
        manifest.Entry("/h", "f", 0o644, 0, 0, 3, 1, "00" * 32, link=odd),
        manifest.Entry("/l", "l", 0o777, 0, 0, 4, target="../ü/\u2028x"),
        manifest.Entry("/dev/null", "c", 0o666, 0, 0, 5, rdev="1:3"),
        manifest.Entry("/p", "p", 0o600, 2**40, 2**33, 10**18),
    ]
    for e in entries:
        assert manifest.line(e) == json.dumps(e.to_dict(), separators=(",", ":")) + "\n"
        assert manifest.Entry.from_dict(json.loads(manifest.line(e))) == e
