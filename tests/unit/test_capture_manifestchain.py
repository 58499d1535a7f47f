"""Manifests stored as deltas: a version's list is the same whether it is
read whole or through a chain; removing a base makes its dependents whole;
verify notices a tampered delta or base."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from imageserver import manifestchain
from imageserver.manifest import Entry
from imageserver.names import ImageRef
from imageserver.seal import NewVersion, load_manifest, seal
from imageserver.store import ImageStore
from imageserver.verify import verify
from imageserver.versions import Versions
from sysclone.paths import StateRoot

T0 = 1_700_000_000_000_000_000


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    return StateRoot(tmp_path / "root", tmp_path / "cache")


def version(state: StateRoot, files: dict[str, bytes]) -> int:
    v = Versions(state)
    with v.lock("web"), v.stage("web") as s:
        for rel, data in files.items():
            p = s.tree / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        for p in sorted(s.tree.rglob("*"), reverse=True):
            os.utime(p, ns=(T0, T0))
        os.utime(s.tree, ns=(T0, T0))
        return seal(v, s, NewVersion("test", dedupe=True)).version


def e(path: str, sha: str = "a" * 64, t: str = "f") -> Entry:
    return Entry(path, t, 0o644, 0, 0, T0, 3 if t == "f" else 0, sha if t == "f" else None)


def test_a_delta_holds_only_what_changed_and_reads_back_whole(tmp_path):
    old = [e("/", t="d"), e("/a", t="d"), e("/a/b"), e("/a-b"), e("/gone"), e("/z")]
    new = [e("/", t="d"), e("/a", t="d"), e("/a/b", "b" * 64), e("/a/c"), e("/a-b"), e("/z")]
    v1, v2 = tmp_path / "1", tmp_path / "2"
    v1.mkdir()
    v2.mkdir()
    manifestchain.save(v1, old, None)
    manifestchain.save(v2, new, (1, old))
    with gzip.open(v2 / manifestchain.DELTA, "rt") as f:
        lines = f.read().splitlines()
    assert lines[0] == '{"base": 1}' and len(lines) == 4  # changed, added, removed
    assert manifestchain.load(v2) == new  # in manifest order too
    assert manifestchain.entries_digest(manifestchain.load(v2) or []) == \
        manifestchain.entries_digest(new)
    assert manifestchain.base_of(v2) == 1 and manifestchain.chain_length(v2) == 1


def test_pruning_a_base_makes_its_dependents_whole(state):
    files = {"etc/hostname": b"v0\n", "usr/bin/tool": b"x" * 5000}
    for i in range(4):
        assert version(state, {**files, "etc/hostname": f"v{i}\n".encode()}) == i + 1
    v = Versions(state)
    before = {n: load_manifest(v.version_dir("web", n)) for n in (3, 4)}
    assert [manifestchain.chain_length(v.version_dir("web", n)) for n in (1, 2, 3, 4)] == \
        [0, 1, 2, 3]
    assert ImageStore(state).prune("web", keep=2) == [1, 2]
    assert manifestchain.base_of(v.version_dir("web", 3)) is None  # whole now
    assert manifestchain.base_of(v.version_dir("web", 4)) == 3
    assert {n: load_manifest(v.version_dir("web", n)) for n in (3, 4)} == before
    assert all(verify(state, ImageRef("web", n)).ok for n in (3, 4))


def test_verify_catches_a_tampered_delta_or_base(state):
    version(state, {"etc/hostname": b"one\n"})
    version(state, {"etc/hostname": b"two\n"})
    v = Versions(state)
    base = v.version_dir("web", 1) / manifestchain.FULL
    entries = manifestchain.load(v.version_dir("web", 1)) or []
    # The base's manifest rewritten to claim other content for a file that
    # version 2 shares with it.
    forged = [Entry(x.path, x.type, 0o600, x.uid, x.gid, x.mtime_ns, x.size, x.sha256)
              if x.path == "/etc" else x for x in entries]
    from imageserver import manifest
    manifest.save(forged, base)
    assert not verify(state, ImageRef("web", 2)).manifest_ok
    assert not verify(state, ImageRef("web", 1)).manifest_ok
