"""Fetch a real standard kernel from the machine's Debian mirror.

Needs network to the mirror in /etc/apt's sources, gpgv,
debian-archive-keyring, dpkg-deb and depmod.  Set SYSCLONE_CACHE to share the
~45 MB of downloads between runs.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernels.aptsources import find_debian_mirror
from kernels.fetch import FetchError, http_fetch
from kernels.standard import fetch_standard
from kernels.tree import list_kernels, load
from sysclone.paths import StateRoot

pytestmark = pytest.mark.integration


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    cache = os.environ.get("SYSCLONE_CACHE")
    return StateRoot(tmp_path / "root", Path(cache) if cache else tmp_path / "cache")


def test_fetch_cloud_amd64_for_bookworm(state: StateRoot) -> None:
    mirror = find_debian_mirror(arch="amd64")
    seen: list[tuple[int, int]] = []
    tree = fetch_standard(state, "cloud-amd64", suite="bookworm", mirror=mirror.uri,
                          progress=lambda done, total: seen.append((done, total)))

    assert tree.path.parent == state.kernels
    assert tree.path.name == f"cloud-amd64-{tree.kver}"
    assert tree.kver.endswith("-cloud-amd64") and tree.kver.startswith("6.1.")
    assert tree.vmlinuz.is_file() and tree.vmlinuz.stat().st_size > 5_000_000
    alias = (tree.modules_dir / "modules.alias").read_text()
    assert "virtio_net" in alias
    for name in ("modules.dep", "modules.dep.bin", "modules.order", "modules.builtin"):
        assert (tree.modules_dir / name).is_file(), name
    assert tree.config is not None and "CONFIG_VIRTIO" in tree.config.read_text()

    data = json.loads((tree.path / "kernel.json").read_text())
    assert data["flavor"] == "cloud-amd64"
    assert data["kver"] == tree.kver
    assert data["package"]["name"] == f"linux-image-{tree.kver}"
    assert data["package"]["metapackage"] == "linux-image-cloud-amd64"
    assert len(data["package"]["sha256"]) == 64
    assert data["source"] == {"mirror": mirror.uri, "suite": "bookworm", "codename": "bookworm"}
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert (state.cache_dir / "debs" / f"{tree.package.sha256}.deb").is_file()

    # A second fetch finds the tree and downloads nothing but the InRelease.
    again = fetch_standard(state, "cloud-amd64", suite="bookworm", mirror=mirror.uri)
    assert again == tree == load(tree.path)
    assert list_kernels(state.kernels) == [tree]


# -- http_fetch against a server on the loopback interface --------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/file":
            body = b"x" * 300_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"y" * 10)
        elif self.path in ("/to-file", "/to-ftp"):
            self.send_response(302)
            target = "file:///etc/passwd" if self.path == "/to-file" else "ftp://127.0.0.1/x"
            self.send_header("Location", target)
            self.end_headers()
        elif self.path == "/to-file-ok":
            self.send_response(302)
            self.send_header("Location", "/file")
            self.end_headers()
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_fetch_on_loopback(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    buf = io.BytesIO()
    seen: list[tuple[int, int]] = []
    http_fetch(server + "/file", buf, lambda d, t: seen.append((d, t)))
    assert buf.getvalue() == b"x" * 300_000 and seen[-1] == (300_000, 300_000)

    http_fetch(server + "/to-file-ok", io.BytesIO())
    with pytest.raises(FetchError, match="HTTP 404") as e:
        http_fetch(server + "/missing", io.BytesIO())
    assert e.value.status == 404 and not e.value.transient
    # urllib itself refuses file://; ftp:// it would follow, we do not.
    with pytest.raises(FetchError, match="not allowed"):
        http_fetch(server + "/to-file", io.BytesIO())
    with pytest.raises(FetchError, match="only http and https"):
        http_fetch(server + "/to-ftp", io.BytesIO())
    with pytest.raises(FetchError) as short:
        http_fetch(server + "/short", io.BytesIO())
    assert short.value.transient
