"""Server-built initrds: what a client may ask for (imageserver.initrdbuild)
and what it accepts back (agent.configure.initrd.unpack_result).  The build
itself runs the image's own tool in a chroot: end-to-end tests cover it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from agent.configure.initrd import unpack_result
from imageserver.initrdbuild import InitrdRequest
from sysclone.errors import ConfigError, SyscloneError

KVER = "6.1.0-50-cloud-amd64"


def request(**over: object) -> dict[str, object]:
    body: dict[str, object] = {"module": "golden@3", "kver": KVER, "tool": "initramfs-tools",
                               "files": {"etc/fstab": "UUID=x / ext4 defaults 0 1\n"},
                               "overrides": ["all"]}
    body.update(over)
    return body


def test_a_sound_request_is_accepted() -> None:
    req = InitrdRequest.from_json(request())
    assert req.module == "golden@3" and req.files == {"etc/fstab": "UUID=x / ext4 defaults 0 1\n"}
    assert req.key(Path("/")) == req.key(Path("/"))
    other = InitrdRequest.from_json(request(files={"etc/fstab": "changed\n"}))
    assert other.key(Path("/")) != req.key(Path("/"))


@pytest.mark.parametrize("over, why", [
    ({"module": "../etc"}, "not valid"),
    ({"module": "golden@x"}, "version .x. is not valid"),
    ({"kver": "../../boot"}, "kernel version"),
    ({"kver": "6.1 ; rm -rf /"}, "kernel version"),
    ({"tool": "mkinitcpio"}, "cannot be run on the server"),
    ({"files": {"/etc/passwd": "x"}}, "below /etc"),
    ({"files": {"etc/../root/.ssh/authorized_keys": "x"}}, "below /etc"),
    ({"files": {"usr/bin/mkinitramfs": "x"}}, "below /etc"),
    ({"files": {"etc/big": "x" * 300_000}}, "larger than"),
    ({"overrides": ["../images/other"]}, "override"),
    ({"kver": None, "module": None}, "malformed"),
])
def test_bad_requests_are_refused(over: dict[str, object], why: str) -> None:
    body = request(**over)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ConfigError, match=why):
        InitrdRequest.from_json(body)


def tar_of(entries: dict[str, bytes | None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/shadow"
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_the_answer_is_written_into_the_installed_system(tmp_path: Path) -> None:
    data = tar_of({f"boot/initrd.img-{KVER}": b"initrd",
                   f"var/lib/initramfs-tools/{KVER}": b"sha1 /boot/initrd\n"})
    assert unpack_result(data, tmp_path, KVER) == [f"boot/initrd.img-{KVER}",
                                                    f"var/lib/initramfs-tools/{KVER}"]
    assert (tmp_path / f"boot/initrd.img-{KVER}").read_bytes() == b"initrd"
    assert not list(tmp_path.glob("boot/.*"))  # no temporary file left


@pytest.mark.parametrize("entries, why", [
    ({"etc/shadow": b"x"}, "unexpected entry"),
    ({f"boot/../etc/initrd.img-{KVER}": b"x"}, "unexpected entry"),
    ({f"boot/initrd.img-{KVER}": None}, "unexpected entry"),
    ({"boot/initrd.img-5.10.0-28-amd64": b"x"}, "unexpected entry"),
    ({f"var/lib/initramfs-tools/{KVER}": b"x"}, "no initrd"),
])
def test_an_unexpected_answer_is_refused(tmp_path: Path, entries: dict[str, bytes | None],
                                         why: str) -> None:
    with pytest.raises(SyscloneError, match=why):
        unpack_result(tar_of(entries), tmp_path, KVER)
    assert not (tmp_path / "etc").exists()


def test_garbage_is_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(SyscloneError, match="not a tar archive"):
        unpack_result(b"<html>502 Bad Gateway</html>", tmp_path, KVER)
