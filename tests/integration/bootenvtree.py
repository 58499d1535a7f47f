"""Unpacking a built boot environment the way the kernel and stage 1 see
it, with the host's own tools (cpio, zstd, unsquashfs): a test of the
builder must not read its output with the builder's code."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _first_archive_end(data: bytes) -> int:
    """Offset just past the first newc archive and its zero padding."""
    pos = 0
    while True:
        if data[pos:pos + 6] not in (b"070701", b"070702"):
            raise AssertionError(f"no cpio header at {pos}")
        size, namesize = int(data[pos + 54:pos + 62], 16), int(data[pos + 94:pos + 102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1]
        pos += 110 + namesize
        pos += (4 - pos % 4) % 4
        pos += size
        pos += (4 - pos % 4) % 4
        if name == b"TRAILER!!!":
            break
    while pos < len(data) and data[pos] == 0:
        pos += 1
    return pos


def unpack(initrd: Path, dest: Path) -> Path:
    """The boot environment's final root (squashfs with stage 1's hot files
    laid over it), or the single archive's tree; returns the root."""
    data = initrd.read_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    if data[:6] in (b"070701", b"070702"):  # squashfs packing
        end = _first_archive_end(data)
        first = dest / "first"
        first.mkdir()
        subprocess.run(["cpio", "-id", "--quiet"], input=data[:end], cwd=first, check=True)
        stage1 = dest / "stage1"
        stage1.mkdir()
        raw = subprocess.run(["zstd", "-dc"], input=data[end:], capture_output=True,
                             check=True).stdout
        subprocess.run(["cpio", "-id", "--quiet"], input=raw, cwd=stage1, check=True)
        root = dest / "root"
        subprocess.run(["unsquashfs", "-q", "-d", str(root), str(first / "sysclone.sqsh")],
                       check=True, capture_output=True)
        # The overlay: /s1 above the squashfs.
        subprocess.run(["cp", "-a", f"{stage1}/s1/.", str(root)], check=True)
        return root
    root = dest / "root"
    root.mkdir()
    raw = subprocess.run(["zstd", "-dc", str(initrd)], capture_output=True, check=True).stdout
    subprocess.run(["cpio", "-id", "--quiet"], input=raw, cwd=root, check=True)
    return root


def stage1_tree(dest: Path) -> Path:
    return dest / "stage1"


def cleanup(dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
