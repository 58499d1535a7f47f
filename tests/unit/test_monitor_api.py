"""imageserver.monitor, imageserver.api (a real server on a loopback port)
and imageserver.serve."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageserver import rsyncd
from imageserver.api import MAX_EVENT, ApiServer
from imageserver.instructions import LAYOUT_DIR, ServerPolicy
from imageserver.monitor import Monitor, client_id, format_event
from imageserver.serve import ServeConfig, free_port, serving
from imageserver.store import ImageStore
from sysclone.errors import SyscloneError
from sysclone.paths import StateRoot
from tests.conftest import FakeDaemon

# ------------------------------------------------------------- monitor ---


@pytest.mark.parametrize(("ev", "cid"), [
    ({"hostname": "node01", "mac": "52:54:00:12:34:56", "ip": "10.0.0.5"}, "node01"),
    ({"mac": "52:54:00:12:34:56", "ip": "10.0.0.5"}, "52_54_00_12_34_56"),
    ({"ip": "10.0.0.5"}, "10.0.0.5"),
    ({}, "unknown"),
    ({"hostname": "", "ip": "10.0.0.5"}, "10.0.0.5"),
    ({"hostname": "../../etc/passwd"}, ".._.._etc_passwd"),
    ({"hostname": "x" * 100}, "x" * 64),
    ({"hostname": 42}, "42"),
])
def test_client_id(ev, cid):
    assert client_id(ev) == cid


def test_record_appends_to_the_clients_log_and_tracks_state(tmp_path):
    mon = Monitor(tmp_path / "log")
    seen: list[dict[str, Any]] = []
    mon.subscribe(seen.append)
    mon.record({"hostname": "node01", "kind": "hello", "message": "agent 0.1 ready"})
    mon.record({"hostname": "node01", "kind": "phase", "phase": "partition",
                "status": "start", "title": "Partitioning /dev/vda"})
    mon.record({"hostname": "node01", "kind": "progress", "phase": "fetch", "percent": 40,
                "bytes": 100 << 20, "rate": 5 << 20})
    mon.record({"hostname": "node02", "kind": "failed", "phase": "fetch",
                "message": "rsync failed"})
    lines = (tmp_path / "log/node01.jsonl").read_text().splitlines()
    assert len(lines) == 3
    events = [json.loads(line) for line in lines]
    assert [e["kind"] for e in events] == ["hello", "phase", "progress"]
    assert all(isinstance(e["received"], float) for e in events)
    assert lines[0] == json.dumps(events[0], sort_keys=True)
    assert len(seen) == 4 and seen[3]["kind"] == "failed" and "received" in seen[3]
    snap = {s["client"]: s for s in mon.snapshot()}
    assert snap["node01"]["phase"] == "fetch"
    assert snap["node01"]["status"] == "start"
    assert snap["node01"]["percent"] == 40
    assert snap["node01"]["error"] is None
    assert snap["node02"]["error"] == "rsync failed"
    assert snap["node02"]["percent"] is None


def test_record_does_not_change_the_callers_event(tmp_path):
    mon = Monitor(tmp_path / "log")
    ev = {"ip": "10.0.0.9", "kind": "info", "message": "x"}
    mon.record(ev)
    assert "received" not in ev


def test_snapshot_is_a_copy(tmp_path):
    mon = Monitor(tmp_path / "log")
    mon.record({"hostname": "a", "phase": "detect"})
    snap = mon.snapshot()
    snap[0]["phase"] = "changed"
    assert mon.snapshot()[0]["phase"] == "detect"


@pytest.mark.parametrize(("ev", "line"), [
    ({"hostname": "n1", "kind": "phase", "phase": "partition", "status": "start",
      "title": "Partitioning /dev/vda"}, "[n1] partition: Partitioning /dev/vda"),
    ({"hostname": "n1", "kind": "phase", "phase": "detect", "status": "start"},
     "[n1] detect:"),
    ({"hostname": "n1", "kind": "phase", "phase": "fetch", "status": "done", "seconds": 12.345},
     "[n1] fetch: done in 12.3s"),
    ({"hostname": "n1", "kind": "phase", "phase": "fetch", "status": "skipped"}, None),
    ({"hostname": "n1", "kind": "progress", "phase": "fetch", "percent": 7,
      "bytes": 1536 << 20, "rate": 12.5 * 2**20},
     "[n1] fetch:   7% 1,536 MiB at 12.5 MiB/s"),
    ({"hostname": "n1", "kind": "progress", "phase": "fetch", "bytes": 3 << 20},
     "[n1] fetch: 3 MiB at 0.0 MiB/s"),
    ({"hostname": "n1", "kind": "failed", "phase": "bootloader", "message": "grub-install: x"},
     "[n1] FAILED in bootloader: grub-install: x"),
    ({"ip": "10.0.0.5", "kind": "hello", "message": "agent up"}, "[10.0.0.5] agent up"),
    ({"hostname": "n1", "kind": "done"}, "[n1] done"),
    ({"hostname": "n1", "kind": "debug", "message": "noise"}, None),
])
def test_format_event(ev, line):
    assert format_event(ev) == line


# ----------------------------------------------------------------- api ---

def make_state(tmp_path: Path) -> StateRoot:
    s = StateRoot(tmp_path / "root", tmp_path / "cache")
    (s.images / "deb12/etc").mkdir(parents=True)
    (s.images / "deb12/etc/hostname").write_text("golden\n")
    ImageStore(s).record("deb12", origin="bootstrap")
    (s.scripts / LAYOUT_DIR).mkdir(parents=True)
    (s.scripts / LAYOUT_DIR / "node.xml").write_text("<config/>\n")
    return s


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    return make_state(tmp_path)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One server for the module (stopping one takes half a second); tests
    that post events use their own client names."""
    st = make_state(tmp_path_factory.mktemp("api"))
    srv = ApiServer(("127.0.0.1", 0), st, ServerPolicy(rsync_port=8873), Monitor(st.logs))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def logs(srv: ApiServer) -> set[str]:
    d = srv.state.logs
    return {p.name for p in d.iterdir()} if d.is_dir() else set()


def get(srv: ApiServer, path: str) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{srv.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.headers["Content-Type"] == "application/json"
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def post(srv: ApiServer, path: str, body: bytes) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_health(api):
    assert api.port > 0
    assert get(api, "/v1/health") == (200, {"status": "ok"})


def test_instructions(api):
    status, body = get(api, "/v1/instructions?hostname=node07&mac=52:54:00:aa:bb:cc"
                            "&image=deb12")
    assert status == 200
    assert body["hostname"] == "node07"
    assert body["image"]["name"] == "deb12"
    assert body["image"]["rsync_port"] == 8873
    assert body["layout"]["name"] == "node.xml"  # node07 -> base host name "node"


def test_instructions_errors_are_json_with_hint(api):
    status, body = get(api, "/v1/instructions?hostname=node07&image=sles")
    assert status == 404
    assert body == {"error": "ConfigError", "message": "unknown image 'sles'",
                    "hint": "known images: deb12"}
    status, body = get(api, "/v1/instructions?hostname=node07")
    assert status == 404
    assert body["message"] == "no image named for this client"
    status, body = get(api, "/v1/instructions?image=deb12&layout=missing")
    assert status == 404 and "disks layout 'missing' not found" in body["message"]


def test_unknown_endpoints(api):
    assert get(api, "/v2/anything") == (404, {"error": "NotFound",
                                              "message": "no such endpoint /v2/anything"})
    status, body = post(api, "/v1/instructions", b"{}")
    assert status == 404 and body["error"] == "NotFound"


def test_post_event_is_recorded_with_the_senders_address(api):
    ev = {"hostname": "node77", "kind": "phase", "phase": "fetch", "status": "start"}
    assert post(api, "/v1/events", json.dumps(ev).encode()) == (200, {"status": "ok"})
    logged = json.loads((api.state.logs / "node77.jsonl").read_text())
    assert logged["ip"] == "127.0.0.1"
    assert logged["phase"] == "fetch"
    status, clients = get(api, "/v1/clients")
    assert status == 200
    assert [(c["phase"], c["status"]) for c in clients if c["client"] == "node77"] == [
        ("fetch", "start")]


def test_post_event_keeps_an_ip_the_client_gave(api):
    post(api, "/v1/events", json.dumps({"ip": "10.1.2.3", "kind": "hello"}).encode())
    assert json.loads((api.state.logs / "10.1.2.3.jsonl").read_text())["ip"] == "10.1.2.3"


@pytest.mark.parametrize(("body", "message"), [
    (b"not json", "event is not JSON"),
    (b"[1, 2]", "event is not JSON: not an object"),
    (b"\"text\"", "not an object"),
])
def test_post_bad_events(api, body, message):
    before = logs(api)
    status, reply = post(api, "/v1/events", body)
    assert status == 400
    assert reply["error"] == "BadRequest"
    assert message in reply["message"]
    assert logs(api) == before


def test_post_empty_event(api):
    req = urllib.request.Request(f"http://127.0.0.1:{api.port}/v1/events", data=b"",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400


def test_post_oversized_event_is_refused_unread(api):
    before = logs(api)
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.putrequest("POST", "/v1/events")
        conn.putheader("Content-Length", str(MAX_EVENT + 1))
        conn.endheaders(b"{}")
        r = conn.getresponse()
        assert r.status == 400
        assert json.loads(r.read())["message"] == "event body size out of range"
    finally:
        conn.close()
    assert logs(api) == before


def test_stop_without_start_does_not_hang(state):
    srv = ApiServer(("127.0.0.1", 0), state, ServerPolicy(rsync_port=873), Monitor(state.logs))
    t = threading.Thread(target=srv.stop, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "ApiServer.stop() hangs when the server never started"


# --------------------------------------------------------------- serve ---

def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_serving_runs_api_and_rsyncd_together(state, monkeypatch):
    daemons: list[FakeDaemon] = []

    def daemon(argv, **kw):
        assert argv[:3] == ["rsync", "--daemon", "--no-detach"]
        daemons.append(FakeDaemon())
        return daemons[-1]

    monkeypatch.setattr(rsyncd, "daemon", daemon)
    with socket.socket() as rsync_port:  # stands in for the daemon's socket
        rsync_port.bind(("127.0.0.1", 0))
        rsync_port.listen()
        cfg = ServeConfig(address="127.0.0.1", rsync_port=rsync_port.getsockname()[1],
                          http_port=0, default_image="deb12", post_action="poweroff")
        with serving(state, cfg) as srv:
            assert get(srv.api, "/v1/health") == (200, {"status": "ok"})
            status, body = get(srv.api, "/v1/instructions?hostname=n1")
            assert status == 200
            assert body["image"]["name"] == "deb12"
            assert body["image"]["rsync_port"] == cfg.rsync_port
            assert body["params"] == {"si.post-action": "poweroff"}
            assert srv.monitor.log_dir == state.logs
            port = srv.api.port
            assert daemons[0].poll() is None
    assert daemons[0].returncode is not None  # stopped with the server
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_serving_http_port_in_use(state):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = ServeConfig(http_port=busy.getsockname()[1])
        with pytest.raises(SyscloneError, match=f"cannot listen on 127.0.0.1:{cfg.http_port}"
                           ) as e, serving(state, cfg):
            pass
    assert e.value.hint == "choose another port with --http-port"


def test_serving_reports_rsync_failure_instead_of_hanging(state, monkeypatch):
    def daemon(argv, **kw):
        raise SyscloneError("command not found: rsync")

    monkeypatch.setattr(rsyncd, "daemon", daemon)
    result: list[BaseException] = []

    def go() -> None:
        try:
            with serving(state, ServeConfig(http_port=0, rsync_port=1)):
                pass
        except BaseException as e:
            result.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "serving() hangs when the rsync daemon fails to start"
    assert [str(e) for e in result] == ["command not found: rsync"]


def test_the_agents_inventory_event_is_kept_and_served(api: ApiServer) -> None:
    """The agent sends its inventory after its hello, in an event of its
    own: the server keeps the last one per client, prints nothing for it,
    and GET /v1/inventory answers it."""
    ev = {"kind": "inventory", "hostname": "inv-node", "mac": "52:54:00:00:00:07",
          "inventory": {"collector": "sysclone-agent", "pci": [], "install_nic": None}}
    assert format_event(ev) is None
    status, _ = post(api, "/v1/events", json.dumps(ev).encode())
    assert status in (200, 202, 204)
    status, inv = get(api, "/v1/inventory?client=inv-node")
    assert status == 200
    assert inv["collector"] == "sysclone-agent"
    assert inv["install_nic"] == "52:54:00:00:00:07"  # the sender's MAC when it named none
