"""Regenerating an installed client's initrd on the image server, at native
speed, with the image's own tool.

A generic initrd (initramfs-tools MODULES=most, dracut without host-only)
does not depend on the machine it is built on, only on the image and on a
few files the install writes (fstab, the resume device, crypttab,
mdadm.conf).  A client that needs one rebuilt can therefore ask the server:
the server mounts an overlay of the image (and the client's overrides) with
those files written on top, runs the image's update-initramfs or dracut in
a chroot of it, and sends back what the tool wrote under /boot (and its
bookkeeping under /var/lib/initramfs-tools).  The image itself is never
written to.  Under emulation this turns minutes of forks into seconds;
the last few results are kept, keyed by their inputs, for retries.
Host-only initrds are still built on the client, which is the only place
that knows its hardware.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tarfile
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

log = logging.getLogger(__name__)

MAX_FILES = 64
MAX_FILE_BYTES = 256 * 1024
KVER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}\Z")
TOOLS = ("initramfs-tools", "dracut")
# What the tools write that the client needs back.
RESULT_DIRS = ("boot/", "var/lib/initramfs-tools/")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class InitrdRequest:
    module: str  # NAME or NAME@N, as the client installed it
    kver: str
    tool: str
    files: dict[str, str]  # path relative to / -> text the install wrote
    overrides: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> InitrdRequest:
        try:
            req = cls(str(body["module"]), str(body["kver"]), str(body["tool"]),
                      {str(k): str(v) for k, v in dict(body.get("files") or {}).items()},
                      tuple(str(o) for o in body.get("overrides") or ()))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"initrd request is malformed: {e}") from None
        req.validate()
        return req

    def validate(self) -> None:
        from imageserver.names import ImageRef

        ImageRef.parse(self.module)
        if not KVER_RE.match(self.kver):
            raise ConfigError(f"initrd request: kernel version {self.kver!r} is not valid")
        if self.tool not in TOOLS:
            raise ConfigError(f"initrd request: tool {self.tool!r} cannot be run on the server",
                              hint="one of " + ", ".join(TOOLS))
        if len(self.files) > MAX_FILES:
            raise ConfigError(f"initrd request: more than {MAX_FILES} files")
        for path, text in self.files.items():
            parts = Path(path).parts
            if (not path or path.startswith("/") or ".." in parts or parts[0] != "etc"
                    or "\0" in path):
                raise ConfigError(f"initrd request: file {path!r} is not a path below /etc")
            if len(text.encode()) > MAX_FILE_BYTES:
                raise ConfigError(f"initrd request: {path} is larger than {MAX_FILE_BYTES} bytes")
        for o in self.overrides:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", o):
                raise ConfigError(f"initrd request: override {o!r} is not a valid name")

    def key(self, tree: Path) -> str:
        st = tree.stat()
        ident = {"tree": str(tree.resolve()), "ino": st.st_ino, "ctime": st.st_ctime_ns,
                 "kver": self.kver, "tool": self.tool, "files": sorted(self.files.items()),
                 "overrides": list(self.overrides)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def build(state: StateRoot, req: InitrdRequest) -> bytes:
    """The tar of what the image's tool wrote for this client (cached)."""
    from imageserver.names import ImageRef
    from imageserver.store import ImageStore

    tree = ImageStore(state).tree(ImageRef.parse(req.module))
    if not (tree / "lib/modules" / req.kver).is_dir() and \
            not (tree / "usr/lib/modules" / req.kver).is_dir():
        raise ConfigError(f"image {req.module} has no kernel {req.kver}")
    layers = [state.overrides / o for o in req.overrides]
    missing = [str(p) for p in layers if not p.is_dir()]
    if missing:
        raise ConfigError(f"initrd request: override(s) not found: {', '.join(missing)}")
    key = req.key(tree)
    cached = state.initrds / f"{key}.tar"
    with _lock(key):
        if cached.is_file():
            log.info("initrd for %s %s from the cache", req.module, req.kver)
            return cached.read_bytes()
        data = _build(state, req, tree, layers, key)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(cached)
        _prune(cached.parent)
        return data


# Clients differ (each names its own swap for resume), so the cache serves
# retries and identical reinstalls; a bounded number of builds is kept.
KEEP_BUILDS = 16


def _prune(top: Path) -> None:
    builds = sorted(top.glob("*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[KEEP_BUILDS:]:
        old.unlink(missing_ok=True)


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def _build(state: StateRoot, req: InitrdRequest, tree: Path, layers: list[Path],
           key: str) -> bytes:
    from agent.chroot import chroot_target, mounted
    from agent.configure.initrd import Dracut, InitramfsTools

    work = state.run / "initrd-build" / key
    shutil.rmtree(work, ignore_errors=True)
    upper, wdir, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, wdir, merged):
        d.mkdir(parents=True)
    lower = ":".join(str(p) for p in [*layers, tree])
    try:
        with ExitStack() as stack:
            stack.enter_context(mounted("overlay", merged, fstype="overlay",
                                        options=f"lowerdir={lower},upperdir={upper},"
                                                f"workdir={wdir}"))
            for path, text in sorted(req.files.items()):
                dest = merged / path
                dest.parent.mkdir(parents=True, exist_ok=True)
                if dest.is_symlink():
                    dest.unlink()
                dest.write_text(text)
            tool = InitramfsTools() if req.tool == "initramfs-tools" else Dracut()
            # The client's files decide as much as the image's: a host-only
            # configuration needs the client's hardware.
            if not tool.builds_generic(merged):
                raise ConfigError(f"the {req.tool} configuration of {req.module} with this "
                                  "client's files does not build a generic initrd",
                                  hint="build it on the client")
            if req.tool == "initramfs-tools":
                _no_resume_guess(merged)
            stack.enter_context(chroot_target(merged, efi=False))
            tool.regenerate(merged, [req.kver])
        return _collect(upper, req.kver)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _no_resume_guess(root: Path) -> None:
    """initramfs-tools guesses a resume device from the running system's
    swap when none is configured: here that would be the server's own."""
    conf = root / "etc/initramfs-tools/conf.d/resume"
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text("RESUME=none\n")


def _collect(upper: Path, kver: str) -> bytes:
    buf = io.BytesIO()
    added = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirs, files in os.walk(upper):
            dirs.sort()
            for f in sorted(files):
                p = Path(dirpath) / f
                rel = p.relative_to(upper).as_posix()
                if not rel.startswith(RESULT_DIRS) or kver not in rel or p.is_symlink():
                    continue
                tar.add(p, arcname=rel, recursive=False)
                added += 1
    if not added:
        raise ConfigError(f"the image's tool wrote no initrd for {kver}")
    return buf.getvalue()
