"""Reading a zstd-compressed initramfs through the real zstd, as the agent
reads an image's initrd (unit tests cover the parsing with gzip)."""

from __future__ import annotations

import io
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.initramfs import DECOMPRESSORS, read_listing
from bootenv import cpio


def test_zstd_initrd_through_the_decompressor(tmp_path: Path) -> None:
    if not shutil.which("zstd"):
        pytest.fail("zstd is not installed (ci/setup.sh installs it)")
    raw = io.BytesIO()
    entries = [cpio.Entry("conf", stat.S_IFDIR | 0o755),
               cpio.Entry("conf/initramfs.conf", stat.S_IFREG | 0o644, data=b"MODULES=most\n"),
               *(cpio.Entry(f"usr/lib/modules/k/m{i}.ko", stat.S_IFREG | 0o644,
                            data=bytes(range(256)) * 64) for i in range(50))]
    cpio.write_archive(raw, entries)
    packed = subprocess.run(["zstd", "-q", "-c"], input=raw.getvalue(), capture_output=True,
                            check=True).stdout
    early = io.BytesIO()
    cpio.write_archive(early, [cpio.Entry("early", stat.S_IFREG | 0o644, data=b"ucode")])
    p = tmp_path / "initrd.img"
    p.write_bytes(early.getvalue() + packed)
    li = read_listing(p, lambda k: list(DECOMPRESSORS[k]), wanted=lambda x: x.startswith("conf/"))
    assert li.has("early") and li.has("usr/lib/modules/k/m49.ko")
    assert li.text("conf/initramfs.conf") == "MODULES=most\n"
    assert len(li.module_names()) == 50
