"""Fake boot loaders for media tests: every file mkmedia.bootfiles names,
and pxelinux, under a directory standing for the host's /."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkmedia import bootfiles, pxe


def fake_bootfiles(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each file's content is its own name, so a test can tell them apart."""
    for f in vars(bootfiles).values():
        if isinstance(f, bootfiles.HostFile):
            p = root / f.path.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(Path(f.path).name.encode())
    pxelinux = root / "usr/lib/PXELINUX/pxelinux.0"
    pxelinux.parent.mkdir(parents=True, exist_ok=True)
    pxelinux.write_bytes(b"pxelinux.0")
    monkeypatch.setattr(bootfiles, "HOST", root)
    monkeypatch.setattr(pxe, "PXELINUX", pxelinux)
    monkeypatch.setattr(pxe, "SYSLINUX_BIOS", root / "usr/lib/syslinux/modules/bios")
    return root
