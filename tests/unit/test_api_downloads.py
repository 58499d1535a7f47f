"""The image server's new endpoints: the PXE tree and the boot environment
over HTTP (iPXE, UEFI HTTP boot, updateclient --autoinstall), the served
updateclient, and what /v1/update tells a client to sync to."""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
import zipfile
import zipimport
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageserver import updateclient
from imageserver.api import ApiServer
from imageserver.downloads import resolve_download
from imageserver.instructions import ServerPolicy
from imageserver.monitor import Monitor
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot


def make_state(root: Path) -> StateRoot:
    s = StateRoot(root / "root", root / "cache")
    (s.images / "web/etc").mkdir(parents=True)
    (s.images / "web/etc/hostname").write_text("golden\n")
    ImageStore(s).record("web", origin="bootstrap")
    (s.pxe / "grub").mkdir(parents=True)
    (s.pxe / "grub/grub.cfg").write_text("set timeout=0\n")
    (s.pxe / "ipxe.efi").write_bytes(b"\x4d\x5a" + bytes(5000))
    (s.pxe / "sysclone-pxe.json").write_text("{}")
    (s.pxe / ".lock").write_text("")
    be = s.bootenvs / "standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(b"bzImage")
    (be / "manifest.json").write_text('{"format": 1}')
    (root / "secret").write_text("not served")
    (s.pxe / "escape").symlink_to(root / "secret")
    return s


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    st = make_state(tmp_path_factory.mktemp("dl"))
    srv = ApiServer(("127.0.0.1", 0), st, ServerPolicy(rsync_port=8873), Monitor(st.logs))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def fetch(srv: ApiServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_pxe_tree_over_http(api):
    status, headers, body = fetch(api, "/boot/ipxe.efi")
    assert status == 200 and body == (api.state.pxe / "ipxe.efi").read_bytes()
    assert headers["Content-Type"] == "application/octet-stream"
    assert fetch(api, "/boot/grub/grub.cfg")[2] == b"set timeout=0\n"


def test_head_gives_the_size_only(api):
    # UEFI HTTP boot asks for the boot file's size first.
    status, headers, body = fetch(api, "/boot/ipxe.efi", "HEAD")
    assert status == 200 and headers["Content-Length"] == "5002" and body == b""
    assert fetch(api, "/boot/nope", "HEAD")[0] == 404
    assert fetch(api, "/v1/health", "HEAD")[0] == 404


@pytest.mark.parametrize("path", ["/boot/escape", "/boot/../cache/x", "/boot/%2e%2e/x",
                                  "/boot/sysclone-pxe.json", "/boot/.lock", "/boot/",
                                  "/boot/grub", "/boot//etc/passwd", "/v1/bootenv/../x",
                                  "/v1/bootenv/initrd.img", "/v1/bootenv/other"])
def test_nothing_else_is_served(api, path):
    status, _, body = fetch(api, path)
    assert status == 404, body
    assert json.loads(body)["error"] in ("ConfigError", "NotFound")


def test_the_boot_environment_over_http(api):
    assert fetch(api, "/v1/bootenv/kernel")[2] == b"bzImage"
    status, headers, _ = fetch(api, "/v1/bootenv/manifest.json")
    assert status == 200 and headers["Content-Type"] == "application/json"


def test_resolve_download_names_only_files_inside(tmp_path):
    s = make_state(tmp_path)
    assert resolve_download(s, "/boot/grub/grub.cfg")[1].startswith("text/plain")
    with pytest.raises(ConfigError):
        resolve_download(s, "/boot/escape")


def test_the_served_updateclient_is_the_file_in_the_package(api):
    status, headers, body = fetch(api, updateclient.SCRIPT_PATH)
    assert status == 200 and body == updateclient.SCRIPT.read_bytes()
    assert headers["Content-Type"].startswith("text/x-python")


def test_the_served_updateclient_zipapp_runs_its_bytecode(api, tmp_path):
    """The zipapp carries the package's file and its bytecode for this
    Python, which zipimport takes; a Python with another magic number falls
    back to the source."""
    status, headers, body = fetch(api, updateclient.ZIPAPP_PATH)
    assert status == 200 and headers["Content-Type"] == "application/zip"
    assert body == updateclient.zipapp()
    app = tmp_path / "updateclient.pyz"
    app.write_bytes(body)
    with zipfile.ZipFile(app) as z:
        assert z.read("updateclient.py") == updateclient.SCRIPT.read_bytes()
        pyc = z.read("updateclient.pyc")
    assert pyc[:4] == importlib.util.MAGIC_NUMBER
    assert zipimport.zipimporter(str(app)).get_filename("updateclient").endswith(".pyc")
    other = tmp_path / "other.pyz"
    with zipfile.ZipFile(app) as z, zipfile.ZipFile(other, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            out.writestr(name, b"\x00\x00\r\n" + data[4:] if name.endswith(".pyc") else data)
    assert zipimport.zipimporter(str(other)).get_filename("updateclient").endswith(".py")


def test_update_answer(api):
    api.state.logs.mkdir(parents=True, exist_ok=True)
    (api.state.logs / "node1.jsonl").write_text("\n".join(json.dumps(e) for e in (
        {"kind": "done", "hostname": "node1", "image": "web", "timings": {"plan": 1}},
        {"kind": "done", "hostname": "node1", "image": "web", "timings": {"finish": 1},
         # Agents report some files relative to the root (the initrd
         # tool's configuration); a line break or a `..` is never a path.
         "written": ["/etc/fstab", "/etc/hostname", "etc/dracut.conf.d/50-sysclone.conf",
                     "/etc/x\ny", "/etc/../root/.ssh", "/", "/etc/fstab"]},
    )) + "\n")
    status, _, body = fetch(api, "/v1/update?hostname=node1")
    assert status == 200
    answer = json.loads(body)
    assert answer["image"]["name"] == "web" and answer["image"]["rsync_port"] == 8873
    assert answer["image"]["module"] == "web"  # a plain directory: no versions
    assert answer["written"] == ["/etc/fstab", "/etc/hostname",
                                 "/etc/dracut.conf.d/50-sysclone.conf"]
    assert answer["overrides"] == []


@pytest.mark.parametrize(("query", "message"), [
    ("hostname=nobody", "no image named for this client"),
    ("hostname=n1&image=nosuch", "unknown image 'nosuch'"),
    ("hostname=../x&image=web", "host name '../x' is not valid"),
])
def test_update_refusals(api, query, message):
    status, _, body = fetch(api, f"/v1/update?{query}")
    assert status == 404 and message in json.loads(body)["message"]


def test_last_image_follows_updates_and_ignores_dry_runs():
    events = [{"kind": "done", "image": "a", "timings": {"finish": 1}},
              {"kind": "updated", "image": "b@3"},
              {"kind": "done", "image": "c", "timings": {"plan": 1}}]
    assert updateclient.last_image(events) == "b"
    assert updateclient.last_image([]) is None
