"""The versioned image store: versions made, shared, rolled back, pruned,
renamed and deleted; legacy images adopted; failures leaving no trace; the
rsync modules and install instructions that follow from it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from imageserver.instructions import LAYOUT_DIR, ClientQuery, ServerPolicy, resolve
from imageserver.names import ImageRef
from imageserver.rsyncd import RsyncdConfig, modules, render
from imageserver.seal import NewVersion, seal
from imageserver.store import ImageStore, UsageCache
from imageserver.versions import Versions
from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot
from tests.conftest import FakeResult

T0 = 1_700_000_000_000_000_000


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    return StateRoot(tmp_path / "root", tmp_path / "cache")


def write(tree: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = tree / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for p in sorted(tree.rglob("*"), reverse=True):  # fixed times: unchanged is unchanged
        os.utime(p, ns=(T0, T0))
    os.utime(tree, ns=(T0, T0))


def new_version(state: StateRoot, name: str, files: dict[str, bytes], **extra: bytes) -> int:
    v = Versions(state)
    with v.lock(name), v.stage(name) as s:
        write(s.tree, files)
        return seal(v, s, NewVersion("test", source="unit", dedupe=True, files=extra)).version


def listing(top: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(top)):
        for n in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, n))
            h.update(f"{dirpath}/{n} {st.st_mode} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()


FILES = {"etc/hostname": b"golden\n", "usr/bin/tool": os.urandom(40_000),
         "var/lib/db": b"x" * 9000}


def test_first_and_second_version_share_unchanged_files(state):
    store = ImageStore(state)
    assert new_version(state, "web", FILES) == 1
    assert store.path("web").is_symlink() and os.readlink(store.path("web")) == \
        ".versions/web/1/tree"
    assert store.names() == ["web"] and store.exists("web")
    assert (store.path("web") / "etc/hostname").read_bytes() == b"golden\n"
    assert new_version(state, "web", {**FILES, "etc/hostname": b"web1\n"}) == 2
    v = store.versions
    assert v.numbers("web") == [1, 2] and v.current("web") == 2
    t1, t2 = (v.version_dir("web", n) / "tree" for n in (1, 2))
    assert os.lstat(t1 / "usr/bin/tool").st_ino == os.lstat(t2 / "usr/bin/tool").st_ino
    assert os.lstat(t1 / "etc/hostname").st_ino != os.lstat(t2 / "etc/hostname").st_ino
    info = store.info("web")
    assert (info.version, info.origin, info.source) == (2, "test", "unit")
    assert store.info("web@1").version == 1
    vi = v.info("web", 2)
    assert vi.parent == 1 and vi.added_bytes < 40_000  # only the changed file is new
    shown = store.describe("web")
    assert shown["versions"] == [1, 2] and shown["current"] == 2
    # Version 2's manifest is what changed since version 1.
    assert "manifest.delta.jsonl.gz" in shown["records"] and shown["entries"] == 9
    assert "manifest.jsonl.gz" in store.describe("web@1")["records"]


def test_rollback_prune_delete(state):
    store = ImageStore(state)
    for i in range(4):
        new_version(state, "web", {**FILES, "etc/hostname": f"v{i}\n".encode()})
    store.rollback("web", 2)
    assert (store.path("web") / "etc/hostname").read_text() == "v1\n"
    with pytest.raises(ConfigError, match="web has no version 9"):
        store.rollback("web", 9)
    assert store.prune("web", keep=1) == [1, 3]  # 4 is newest, 2 is current
    assert store.versions.numbers("web") == [2, 4]
    with pytest.raises(ConfigError, match="keep at least one"):
        store.prune("web", keep=0)
    with pytest.raises(ConfigError, match="version 2 is the current version"):
        store.delete("web@2")
    store.delete("web@4")
    with pytest.raises(ConfigError, match="web has no version 4"):
        store.delete("web@4")
    store.delete("web")
    assert not store.path("web").exists() and not store.versions.vdir("web").exists()
    assert store.names() == []


def test_rename(state):
    store = ImageStore(state)
    new_version(state, "web", FILES)
    new_version(state, "db", FILES)
    with pytest.raises(ConfigError, match="'db' already exists"):
        store.rename("web", "db")
    store.rename("web", "www")
    assert store.names() == ["db", "www"]
    assert store.versions.current("www") == 1
    assert (store.path("www") / "etc/hostname").read_bytes() == b"golden\n"
    with pytest.raises(ConfigError, match="unknown image 'web'"):
        store.info("web")


def test_a_legacy_image_becomes_version_1(state):
    store = ImageStore(state)
    write(state.images / "old", FILES)
    store.record("old", origin="bootstrap", details={"suite": "bookworm"})
    assert store.info("old").version is None
    assert new_version(state, "old", {**FILES, "etc/hostname": b"new\n"}) == 2
    v = store.versions
    assert v.numbers("old") == [1, 2] and not v.is_legacy("old")
    one = v.info("old", 1)
    assert one.origin == "bootstrap" and one.details == {"suite": "bookworm", "adopted": True}
    assert not (state.images / "old.json").exists()
    t1 = v.version_dir("old", 1) / "tree"
    assert (t1 / "etc/hostname").read_bytes() == b"golden\n"
    assert os.lstat(t1 / "usr/bin/tool").st_ino == \
        os.lstat(store.path("old") / "usr/bin/tool").st_ino


def test_a_failure_while_staging_leaves_the_store_as_it_was(state):
    new_version(state, "web", FILES)
    before = listing(state.images)
    v = Versions(state)
    for name in ("web", "brand-new"):
        with pytest.raises(RuntimeError), v.lock(name), v.stage(name) as s:
            write(s.tree, FILES)
            raise RuntimeError("network lost")
        assert listing(state.images) == before
    # A staging directory left by a killed capture is cleaned by the next one.
    stale = v.vdir("web") / ".new-999-1"
    stale.mkdir()
    new_version(state, "web", FILES)
    assert not stale.exists()


def test_one_change_at_a_time(state):
    v = Versions(state)
    busy = f"web is being changed by another sysclone \\(pid {os.getpid()}\\)"
    with v.lock("web"), pytest.raises(SyscloneError, match=busy), v.lock("web"):
        pass


def test_a_pointer_gone_astray_is_an_error(state):
    new_version(state, "web", FILES)
    os.unlink(state.images / "web")
    os.symlink("/etc", state.images / "web")
    with pytest.raises(SyscloneError, match="points somewhere unexpected"):
        ImageStore(state).info("web")


def test_usage_is_never_stale(state):
    store = ImageStore(state)
    write(state.images / "legacy", FILES)
    first = store.record("legacy", origin="test").usage
    (state.images / "legacy/usr/bin/big").write_bytes(os.urandom(300_000))
    assert store.info("legacy").usage.bytes >= first.bytes + 300_000
    cache = UsageCache(ttl=60)
    memo = ImageStore(state, cache)
    a = memo.info("legacy").usage
    (state.images / "legacy/usr/bin/big").unlink()
    assert memo.info("legacy").usage == a  # memoized for the API
    assert store.info("legacy").usage.bytes < a.bytes


def test_rsync_modules_for_current_and_each_version(state):
    new_version(state, "web", FILES)
    new_version(state, "web", {**FILES, "etc/hostname": b"2\n"})
    write(state.images / "legacy", FILES)
    mods = {m: p for m, p, _ in modules(state)}
    assert mods == {"legacy": state.images / "legacy", "web": state.images / "web",
                    "web@1": state.images / ".versions/web/1/tree",
                    "web@2": state.images / ".versions/web/2/tree"}
    conf = render(state, RsyncdConfig(port=8873, hosts_allow=("10.0.0.0/24",)))
    assert "[web@1]\n    path = " in conf and "comment = image web (version 2)" in conf
    assert "read only = yes" in conf and "hosts allow = 10.0.0.0/24" in conf


LAYOUT = """<config><disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">
<part num="1" size="*" p_type="primary"/></disk>
<fsinfo line="10" real_dev="/dev/sda1" mp="/" fs="ext4"/></config>
"""


def test_instructions_name_the_version_and_find_the_captured_layout(state):
    new_version(state, "web", FILES, **{"layout.xml": LAYOUT.encode()})
    new_version(state, "web", FILES)  # no layout recorded for version 2
    policy = ServerPolicy(rsync_port=873)
    got = resolve(state, ClientQuery("node01", None, "web"), policy)
    assert got["image"]["name"] == "web"
    assert (got["image"]["version"], got["image"]["module"]) == (2, "web@2")
    assert got["layout"] is None
    got = resolve(state, ClientQuery("node01", None, "web@1"), policy)
    assert (got["image"]["version"], got["image"]["module"]) == (1, "web@1")
    assert got["layout"]["name"] == "web@1/layout.xml" and got["layout"]["text"] == LAYOUT
    # The server's own files: the image's wins over the capture, default loses.
    layouts = state.scripts / LAYOUT_DIR
    layouts.mkdir(parents=True)
    (layouts / "default.xml").write_text("<config/>")
    got = resolve(state, ClientQuery("node01", None, "web@1"), policy)
    assert got["layout"]["name"] == "web@1/layout.xml"
    (layouts / "node.xml").write_text("<config/>")
    assert resolve(state, ClientQuery("node01", None, "web@1"), policy)["layout"]["name"] == \
        "node.xml"
    with pytest.raises(ConfigError, match="web has no version 7"):
        resolve(state, ClientQuery("node01", None, "web@7"), policy)
    with pytest.raises(ConfigError, match="is not valid"):
        resolve(state, ClientQuery("node01", None, "../web"), policy)


def fake_cp(args: list[str]) -> FakeResult:
    """cp -a [--link|--reflink=auto] SRC/. DEST/, done in Python."""
    src, dst = args[-2].rstrip("."), args[-1]
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True, copy_function=(
        os.link if "--link" in args else shutil.copy2))
    for p in [Path(dst), *Path(dst).rglob("*")]:
        s = Path(src) / p.relative_to(dst)
        os.utime(p, ns=(os.lstat(s).st_atime_ns, os.lstat(s).st_mtime_ns),
                 follow_symlinks=False)
    return FakeResult()


def test_copy_shares_every_file(state, fake_commands):
    from imageserver.copyimage import copy_image

    new_version(state, "web", FILES, **{"layout.xml": LAYOUT.encode()})
    fake_commands.add(["cp", "-a", "--link"], fake_cp)
    sealed = copy_image(state, ImageRef.parse("web@1"), "web-copy")
    store = ImageStore(state)
    assert sealed.version == 1 and sealed.info.origin == "copy"
    assert sealed.info.source == "web@1"
    assert os.lstat(store.path("web") / "usr/bin/tool").st_ino == \
        os.lstat(store.path("web-copy") / "usr/bin/tool").st_ino
    assert (store.versions.version_dir("web-copy", 1) / "layout.xml").read_text() == LAYOUT
    assert sealed.hashed == 0  # the hashes came with the files
    with pytest.raises(ConfigError, match="same image"):
        copy_image(state, ImageRef.parse("web"), "web")


def test_chroot_works_on_a_private_copy(state, fake_commands):
    from imageserver.chroot import chroot_image

    new_version(state, "web", {**FILES, "usr/sbin/.keep": b"", "proc/.keep": b""})
    fake_commands.add(["cp", "-a", "--reflink=auto"], fake_cp)
    fake_commands.add(["mount"], FakeResult())
    fake_commands.add(["umount"], FakeResult())
    seen: list[Path] = []

    def apt_install(args: list[str]) -> FakeResult:
        tree = Path(args[1])
        seen.append(tree)
        assert (tree / "usr/sbin/policy-rc.d").read_text().endswith("exit 101\n")
        (tree / "usr/bin/new-tool").write_text("installed\n")
        return FakeResult()

    fake_commands.add(["chroot"], apt_install)
    r = chroot_image(state, "web", ["apt-get", "install", "-y", "tool"])
    # new-tool, and its directory's mtime; policy-rc.d came and went unseen
    assert r.sealed is not None and r.sealed.version == 2 and r.changes == 2
    store = ImageStore(state)
    assert (store.path("web") / "usr/bin/new-tool").read_text() == "installed\n"
    assert not (store.path("web") / "usr/sbin/policy-rc.d").exists()
    one = store.versions.version_dir("web", 1) / "tree"
    assert not (one / "usr/bin/new-tool").exists()  # the stored version is untouched
    assert os.lstat(one / "usr/bin/tool").st_ino == \
        os.lstat(store.path("web") / "usr/bin/tool").st_ino  # and shares what did not change
    assert seen[0] != store.path("web").resolve()
    mounts = [c for c in fake_commands.calls if c[0] in ("mount", "umount")]
    assert [c[-1].rsplit("/", 1)[-1] for c in mounts] == ["proc", "proc"]  # only dirs it has


def test_chroot_failure_or_no_change_stores_nothing(state, fake_commands):
    from imageserver.chroot import chroot_image

    new_version(state, "web", FILES)
    fake_commands.add(["cp", "-a", "--reflink=auto"], fake_cp)
    fake_commands.add(["chroot"], FakeResult(returncode=0))
    before = listing(state.images)
    assert chroot_image(state, "web", ["true"]).sealed is None
    fake_commands.add(["chroot"], FakeResult(returncode=3))
    with pytest.raises(SyscloneError, match="exited with status 3 in image web: nothing was "
                                            "stored"):
        chroot_image(state, "web", ["false"])
    assert listing(state.images) == before


def test_mounts_are_undone_in_reverse_order_even_on_failure(tmp_path, fake_commands):
    from imageserver.chroot import bound

    for d in ("proc", "sys", "dev/pts", "run"):
        (tmp_path / d).mkdir(parents=True)
    fake_commands.add(["mount"], FakeResult())
    fake_commands.add(["umount"], FakeResult(returncode=32))  # busy: lazily then
    with pytest.raises(RuntimeError), bound(tmp_path):
        raise RuntimeError("the command blew up")
    mounted = [c[-1] for c in fake_commands.calls if c[0] == "mount"]
    unmounted = [c[-1] for c in fake_commands.calls if c[0] == "umount" and "-l" in c]
    assert [Path(m).name for m in mounted] == ["proc", "sys", "dev", "pts", "run"]
    assert unmounted == list(reversed(mounted))
