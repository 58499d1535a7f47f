"""The boot environment's find_library: by soname where ldconfig's cache is
missing (an initramfs), unchanged elsewhere."""

from __future__ import annotations

from pathlib import Path

from agent.frozen import soname_finder


def _original(name: str) -> str | None:
    return f"original:{name}"


def test_without_ld_cache_finds_the_library_by_soname(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libudev.so.1").write_bytes(b"")
    find = soname_finder(_original, (str(lib),), ld_cache=str(tmp_path / "no-cache"))
    assert find("udev") == "libudev.so.1"
    assert find("kmod") == "original:kmod"  # not there: the usual lookup


def test_with_ld_cache_the_usual_lookup_answers(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libudev.so.1").write_bytes(b"")
    cache = tmp_path / "ld.so.cache"
    cache.write_bytes(b"")
    find = soname_finder(_original, (str(lib),), ld_cache=str(cache))
    assert find("udev") == "original:udev"
