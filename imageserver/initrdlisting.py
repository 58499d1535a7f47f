"""The image's own initrds, listed on the image server, once per stored version.

The agent's initrd policy (`si.initrd=auto`, agent.configure.initrdpolicy)
keeps the image's initrd only after reading what it holds: its modules,
how it was built, what it names.  Read on the client, that is a
decompression of some 30 MB and a walk of thousands of cpio headers --
about 4 s under emulation, on the path to update-grub, which waits for the
decision.  A stored version never changes (imageserver.versions), so the
server reads each version's initrds once, natively, with the same reader
(agent.initramfs), and answers

    GET /v1/initrd-listing?module=NAME@N
        -> {"initrds": {"boot/initrd.img-KVER": {"size", "mtime", "listing"}}}

The agent uses a listing only for a file of the same path, size and
mtime as the one it fetched (an override may have replaced it); for
anything else it reads the file itself.  A compression the server has no
decompressor for is left out: the client then reads that one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from agent.server import INITRD_LISTING as PATH
from imageserver.treecache import once_per_tree
from sysclone.paths import StateRoot

log = logging.getLogger(__name__)

__all__ = ["PATH", "answer", "list_tree"]


def answer(state: StateRoot, query: dict[str, str]) -> dict[str, Any]:
    """The answer to GET /v1/initrd-listing for the module the query names."""
    from imageserver.names import ImageRef
    from imageserver.store import ImageStore
    from sysclone.errors import ConfigError

    module = query.get("module") or ""
    if not module:
        raise ConfigError("initrd listing: no module= given", hint="module=NAME@N")
    tree = ImageStore(state).tree(ImageRef.parse(module))
    return {"module": module, "initrds": _of_version(tree)}


def list_tree(tree: Path) -> dict[str, dict[str, Any]]:
    """Every installed kernel's initrd in `tree`, listed (see above)."""
    from agent.configure.initrd import InitrdTool, kernel_versions
    from agent.configure.initrdpolicy import wanted_in_initrd
    from agent.initramfs import DECOMPRESSORS, InitramfsError, read_listing
    from sysclone.errors import SyscloneError

    def decompressor(kind: str) -> list[str]:
        argv = list(DECOMPRESSORS[kind])
        if shutil.which(argv[0]) is None:
            raise InitramfsError(f"no {argv[0]} on the image server")
        return argv

    out: dict[str, dict[str, Any]] = {}
    for kver in kernel_versions(tree):
        path = InitrdTool().initrd_path(tree, kver)
        if path is None:
            continue
        rel = path.relative_to(tree).as_posix()
        st = path.stat()
        try:
            listing = read_listing(path, decompressor, wanted_in_initrd)
        except (SyscloneError, OSError) as e:
            # The client reads it itself, and says why if it cannot.
            log.info("initrd listing of %s: %s", path, e)
            continue
        out[rel] = {"size": st.st_size, "mtime": st.st_mtime_ns // 1_000_000_000,
                    "listing": listing.to_dict()}
    return out


_of_version = once_per_tree(list_tree, maxsize=32)
