"""`sysclone image capture NAME --from SOURCE`: a golden client, into a new
version of an image.

    check the name, the source, the exclude files and the layout file
    -> lock the image -> read the client's facts the pull needs (rsync,
       mounts, disk use; over SSH the others -- partition tables, RAID,
       LVM, modules -- are read beside the pull)
    -> the filter (skipped mounts, excludes)
    -> pull / into a staging directory, unchanged files hard-linked from
       the current version (on btrfs: into a snapshot of it, rewriting only
       what changed) -> the client's disk layout -> manifest -> commit as
       the new current version

Nothing is written to the store before the pull, and a staging directory
that does not get committed (an error, Ctrl-C, a full disk) is removed: the
store is left exactly as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.storage.model import Layout
from agent.storage.sixml import load_layout, to_xml
from agent.storage.validate import validate
from imageserver import excludes as ex
from imageserver.goldenfacts import out as fact_out
from imageserver.goldenlayout import GoldenLayout, golden_layout
from imageserver.names import check_name
from imageserver.prehash import OUT_FORMAT, Prehasher, reuse_from
from imageserver.prepare.golden import skipped_mounts
from imageserver.probe import RestOfFacts, read_facts
from imageserver.seal import NewVersion, Sealed, seal
from imageserver.sources import DaemonSource, LocalSource, Source, SshSource, read_secret
from imageserver.sparsefiles import SparseFiles
from imageserver.sparsescan import ssh_sparse_files
from imageserver.transfer import (
    CaptureError,
    DiskFull,
    SparseSplit,
    endpoint,
    pull_argv,
    run_rsync,
    unshare_hard_links,
)
from imageserver.versions import Staging, VersionInfo, Versions
from sysclone.background import in_background
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.run import run

Progress = Callable[[str], None]
LINK_DESTS = 3  # rsync --link-dest against the newest versions (rsync allows 20)


@dataclass(frozen=True)
class CaptureOptions:
    name: str
    source: Source
    excludes: ex.ExcludeOptions = field(default_factory=ex.ExcludeOptions)
    layout_file: Path | None = None  # overrides the one read from the client
    exact_geometry: bool = False

    def __post_init__(self) -> None:
        # --explicit-geometry shapes the layout read from the golden client:
        # with none read (a local directory) or one given (--layout, used
        # as written) it would do nothing, so it is refused, not ignored.
        if self.exact_geometry and isinstance(self.source, LocalSource):
            raise ConfigError("--explicit-geometry: a local directory has no disk layout to "
                              "keep exactly", hint="--layout FILE records one, as written")
        if self.exact_geometry and self.layout_file is not None:
            raise ConfigError("--explicit-geometry and --layout: the layout file is recorded "
                              "as written", hint="drop --explicit-geometry")


@dataclass(frozen=True)
class CaptureResult:
    version: int
    info: VersionInfo
    layout: GoldenLayout | None
    seconds: float
    hashed: int
    shared: int


def capture(state: StateRoot, opts: CaptureOptions, progress: Progress | None = None
            ) -> CaptureResult:
    say = progress or (lambda line: None)
    t0 = time.monotonic()
    name = check_name(opts.name)
    user_rules = ex.user_rules(opts.excludes)  # every file checked before anything runs
    given_layout = _layout_file(opts.layout_file)
    v = Versions(state)
    with v.lock(name), _secret_file(state, opts.source) as password, \
            _one_connection(opts.source) as (source, release):
        say(f"reading {source.describe()}")
        facts = read_facts(source, password, before_pull=True)
        rules = [*ex.skipped_mount_rules(skipped_mounts(fact_out(facts, "findmnt"))),
                 *_store_rules(state, opts.source, name), *user_rules]
        with v.stage(name, from_parent=True) as s:
            _check_space(facts, s.dir, s.parent is None)
            say(f"pulling / from {opts.source.describe()}")
            sparse = ssh_sparse_files(source, fact_out(facts, "findmnt")) \
                if isinstance(source, SshSource) and s.seed is None else None
            # The other facts once the scan is done (it waits for nothing
            # but the client): beside the pull, which gives them time.
            rest = RestOfFacts(source, facts) if isinstance(source, SshSource) else None
            pre = Prehasher(s.tree)
            try:
                vanished = _pull(v, s, source, password, rules, say, pre, sparse)
            finally:
                hashes = pre.close()
            _check_captured(s.tree, name, opts.source)
            facts = {**facts, **rest.result()} if rest is not None else facts
            release()  # the client is asked nothing more
            golden = None if isinstance(opts.source, LocalSource) else \
                golden_layout(facts, exact=opts.exact_geometry)
            _generalize(s.tree, rules)
            sealed = _store(v, s, NewVersion(
                origin="capture", source=opts.source.describe(),
                details=_details(facts, opts.source),
                files=_records(facts, golden, given_layout),
                excludes=tuple(r.text for r in rules),
                warnings=(*(golden.warnings if golden else ()),
                          *(f"layout: {p}" for p in (golden.problems if golden else ())),
                          *vanished[:20]), prehashed=reuse_from(hashes)), say)
    return CaptureResult(sealed.version, sealed.info, golden, time.monotonic() - t0,
                         sealed.hashed, sealed.shared)


def _pull(v: Versions, s: Staging, source: Source, password: Path | None,
          rules: list[ex.Rule], say: Progress, pre: Prehasher,
          sparse: SparseFiles | None) -> list[str]:
    """rsync / into the staging tree, unchanged files hard-linked from the
    newest versions (or already there, in a snapshot of the current one),
    new ones hashed as they arrive; returns rsync's notes on files that
    vanished meanwhile.  With the client's sparse files known, in two runs:
    the rest without -S, then those with it (imageserver.sparsescan)."""
    (s.dir / "excludes").write_text(ex.render(rules))
    if s.seed is not None:
        unshare_hard_links(s.tree)
    links = [p for p in [s.parent_tree, *_older_trees(v, s.name, s.parent)] if p]
    ep = endpoint(source, password)
    what = f"capture of {s.name} from {source.describe()}"

    def pull(split: SparseSplit | None) -> list[str]:
        argv = pull_argv(ep, s.tree, s.dir / "excludes",
                         [] if s.seed is not None else links[:LINK_DESTS],
                         update=s.seed is not None, sparse=split)
        argv.insert(1, OUT_FORMAT)
        return run_rsync(argv, what, say, pre.feed)

    if sparse is not None and sparse.fallback:
        say(f"every file with rsync -S: {sparse.fallback}")
    if sparse is None or sparse.fallback or s.seed is not None:
        return pull(None)
    with tempfile.TemporaryDirectory(prefix="sysclone-sparse.") as tmp:
        lists = Path(tmp)
        (lists / "exclude").write_text("".join(f"/{p}\n" for p in sparse.paths))
        (lists / "files").write_text("".join(f"{p}\n" for p in sparse.paths))
        vanished = pull(SparseSplit(lists / "exclude", holes=False))
        if sparse.paths:
            say(f"{len(sparse.paths)} sparse files, with rsync -S")
            vanished += pull(SparseSplit(lists / "files", holes=True))
    return vanished


def _store(v: Versions, s: Staging, new: NewVersion, say: Progress) -> Sealed:
    try:
        return seal(v, s, new, say)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DiskFull(f"capture of {s.name}: the image store's filesystem is full",
                           hint="free space or prune old versions") from None
        raise


def _layout_file(path: Path | None) -> Layout | None:
    if path is None:
        return None
    layout = load_layout(path)
    validate(layout)
    return layout


@contextmanager
def _one_connection(source: Source) -> Iterator[tuple[Source, Callable[[], None]]]:
    """SSH: the probe's connection stays up and rsync reuses it (one login,
    one key exchange).  Yields the source to use and release(): nothing
    more goes over the connection, which then closes while the capture goes
    on (`ssh -O exit` took 10 ms of every capture's end); it is closed when
    the capture ends at the latest, however it ends."""
    if not isinstance(source, SshSource) or source.control_path:
        yield source, lambda: None
        return
    tmp = tempfile.mkdtemp(prefix="sysclone-ssh.")  # 0700; a short path for the socket
    shared = replace(source, control_path=f"{tmp}/%C")

    def close() -> None:
        run([*shared.ssh_argv(), "-O", "exit", shared.host], check=False, timeout=30)
    closing: list[Callable[[], None]] = []

    def release() -> None:
        if not closing:
            closing.append(in_background(close, "ssh-exit"))
    try:
        yield shared, release
    finally:
        if closing:
            closing[0]()  # waits for it
        else:
            close()
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def _secret_file(state: StateRoot, source: Source) -> Iterator[Path | None]:
    """The rsync:// secret, in a file only root can read (rsync insists)."""
    if not isinstance(source, DaemonSource) or source.secret_file is None:
        yield None
        return
    secret = read_secret(source.secret_file)
    state.run.mkdir(parents=True, exist_ok=True)
    path = state.run / f".capture-secret.{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        yield path
    finally:
        path.unlink(missing_ok=True)


def _store_rules(state: StateRoot, source: Source, name: str) -> list[ex.Rule]:
    """Never capture sysclone's own state into itself (an image server
    capturing its own /, or the state root given as the source): whatever
    of it lies at or below the source is left out."""
    why = "the image store itself"
    if isinstance(source, LocalSource):
        return _local_store_rules(state, source.path, name)
    if isinstance(source, SshSource) and source.host in ("127.0.0.1", "::1", "localhost"):
        return [ex.literal_exclude(str(state.root), why),
                ex.literal_exclude(str(state.cache_dir), why)]
    return []


def _own_parts(state: StateRoot) -> dict[str, Path]:
    """What of the state root is sysclone's (sysclone.paths), and the cache."""
    return {"images": state.images, "kernels": state.kernels, "boot environments":
            state.bootenvs, "scripts": state.scripts, "overrides": state.overrides,
            "PXE tree": state.pxe, "run directory": state.run, "initrds": state.initrds,
            "client logs": state.logs, "VM disks": state.vms, "cache": state.cache_dir}


def _local_store_rules(state: StateRoot, source: Path, name: str) -> list[ex.Rule]:
    # Real paths: a source or root reached through a symlink is the same place.
    base = Path(os.path.realpath(source))
    root = Path(os.path.realpath(state.root))
    images = Path(os.path.realpath(state.images))
    staging = Path(os.path.realpath(Versions(state).vdir(name)))
    what = "the image store itself"
    if (base == images or images in base.parents) and \
            (base == staging or base in staging.parents):
        # The store, or the part of it the new version is staged in: it
        # cannot be left out (it is the source), nor captured into itself.
        raise ConfigError(f"--from {source}: that is sysclone's own image store ({root})",
                          hint="copy an image with `sysclone image copy`")
    if base in root.parents:  # the whole state root lies inside the source
        places = [root, Path(os.path.realpath(state.cache_dir))]
    else:  # the source is the state root or in it: its parts
        places = [Path(os.path.realpath(p)) for p in _own_parts(state).values()]
    outer = [p for p in dict.fromkeys(places) if not any(q in p.parents for q in places)]
    return [ex.literal_exclude("/" + str(p.relative_to(base)), what)
            for p in outer if base in p.parents]


def _check_captured(tree: Path, name: str, source: Source) -> None:
    """A capture that brought nothing at all (every path excluded, an empty
    directory) is refused rather than stored and made current.  A tree of
    directories only is something: the rules may keep just those."""
    with os.scandir(tree) as entries:
        if next(entries, None) is not None:
            return
    raise ConfigError(f"capture of {name} from {source.describe()}: nothing was captured, "
                      "not one file", hint="check --exclude, --exclude-from and "
                                           f"{ex.SERVER_FILE}: they may leave everything out")


def _older_trees(v: Versions, name: str, parent: int | None) -> list[Path]:
    return [v.version_dir(name, n) / "tree" for n in reversed(v.numbers(name)) if n != parent]


def _check_space(facts: dict[str, Any], where: Path, first: bool) -> None:
    """A first capture needs about what the client's filesystems hold."""
    if not first or "lsblk" not in facts:
        return
    try:
        devs = json.loads(fact_out(facts, "lsblk") or "{}").get("blockdevices") or []
    except ValueError:
        return
    used = 0
    stack = list(devs)
    while stack:
        d = stack.pop()
        stack += d.get("children") or []
        # util-linux 2.37 and later list every mount point; older ones one.
        mounted = any(d.get("mountpoints") or []) or bool(d.get("mountpoint"))
        if d.get("fstype") not in ("swap", None) and mounted:
            with suppress(ValueError):
                used += int(d.get("fsused") or 0)
    free = shutil.disk_usage(where).free
    if used > free:
        raise DiskFull(f"the golden client holds {used / 2**30:.1f} GiB, the image store has "
                       f"{free / 2**30:.1f} GiB free", hint="free space, or --exclude what "
                                                             "the image does not need")


def _generalize(tree: Path, rules: list[ex.Rule]) -> None:
    """/etc/machine-id is left out (each clone must make its own); store it
    empty, which is what tells systemd to make one at first boot.  /etc keeps
    the client's mtime, so the rest of the tree still matches the client."""
    etc = tree / "etc"
    mid = etc / "machine-id"
    if not any(r.text == "- /etc/machine-id" for r in rules) or not etc.is_dir() \
            or etc.is_symlink() or mid.exists() or mid.is_symlink():
        return
    st = etc.stat()
    fd = os.open(mid, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
    os.close(fd)
    os.chmod(mid, 0o444)
    os.utime(mid, ns=(st.st_mtime_ns, st.st_mtime_ns))
    os.utime(etc, ns=(st.st_atime_ns, st.st_mtime_ns))


def _records(facts: dict[str, Any], golden: GoldenLayout | None,
             given: Layout | None) -> dict[str, bytes]:
    """What is kept beside the tree: the facts, the layout (given, or the
    client's when it is usable; an unusable one for the admin to fix), the
    client's loaded modules and modaliases (for UYOK boot environments)."""
    files = {"facts.json": json.dumps(facts, indent=1).encode()}
    if given is not None:
        files["layout.xml"] = to_xml(given).encode()
    elif golden is not None and golden.layout is not None:
        files["layout.xml" if golden.usable else "layout.rejected.xml"] = \
            to_xml(golden.layout).encode()
    for name in ("modules", "modaliases"):
        if fact_out(facts, name):
            files[name] = (fact_out(facts, name).rstrip("\n") + "\n").encode()
    return files


def _details(facts: dict[str, Any], source: Source) -> dict[str, Any]:
    d: dict[str, Any] = {"transport": source.kind}
    for key in ("hostname", "uname"):
        if fact_out(facts, key):
            d[key] = fact_out(facts, key).strip()
    for line in fact_out(facts, "os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            d["os"] = line.split("=", 1)[1].strip('"')
    return d


__all__ = ["CaptureError", "CaptureOptions", "CaptureResult", "capture"]
