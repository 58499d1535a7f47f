"""The agent's HTTP side, against a real HTTP server on 127.0.0.1: progress
events POSTed to the monitor (queued before the network is up), and the
image server's instructions, errors and unreachability."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from agent import report, server
from agent.report import Reporter
from agent.server import ImageServer, ServerError


class StubServer(ThreadingHTTPServer):
    """Records every request; answers with scripted (status, body, type)
    responses, then 200 {"status": "ok"}."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.requests: list[dict[str, Any]] = []
        self.responses: deque[tuple[int, bytes, str]] = deque()
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, status: int, body: Any, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.responses.append((status, data, ctype))


class _Handler(BaseHTTPRequestHandler):
    server: StubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.requests.append({"method": self.command, "path": self.path,
                                         "headers": dict(self.headers), "body": body})
            status, data, ctype = (self.server.responses.popleft() if self.server.responses
                                   else (200, b'{"status": "ok"}', "application/json"))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _handle
    do_POST = _handle


def start(port: int = 0) -> StubServer:
    srv = StubServer(port)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01},
                     daemon=True).start()
    return srv


def stop(srv: StubServer) -> None:
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    srv = start()
    try:
        yield srv
    finally:
        stop(srv)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the back-off sleeps (of the reporter's sender thread, of the
    image server client) instead of waiting them out; flush() polls as usual."""
    got: list[float] = []

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "reporter" or seconds >= 1:
            got.append(seconds)
        time.sleep(0.001)

    fake = SimpleNamespace(time=time.time, monotonic=time.monotonic, sleep=sleep)
    monkeypatch.setattr(report, "time", fake)
    monkeypatch.setattr(server, "time", fake)
    return got


# -- Reporter --------------------------------------------------------------------------------

def test_events_wait_for_the_network_then_go_in_order(stub: StubServer) -> None:
    rep = Reporter(console=io.StringIO())
    rep.client["hostname"] = "node07"
    rep.event("hello", message="booted")
    rep.client["mac"] = "02:fc:00:00:00:01"
    rep.event("phase", phase="network", status="start")
    time.sleep(0.05)
    assert stub.requests == []  # not connected: nothing sent, nothing lost
    rep.connect(stub.url + "/")
    rep.event("progress", phase="fetch", bytes=12_001_000, percent=80)
    rep.flush(timeout=10)

    assert [r["method"] for r in stub.requests] == ["POST"] * 3
    assert {r["path"] for r in stub.requests} == {"/v1/events"}
    assert {r["headers"]["Content-Type"] for r in stub.requests} == {"application/json"}
    evs = [json.loads(r["body"]) for r in stub.requests]
    assert [e["kind"] for e in evs] == ["hello", "phase", "progress"]
    # raised before the MAC was known, sent as this client's all the same
    assert evs[0] == {"ts": evs[0]["ts"], "kind": "hello", "hostname": "node07",
                      "mac": "02:fc:00:00:00:01", "message": "booted"}
    assert evs[1]["mac"] == "02:fc:00:00:00:01" and evs[1]["status"] == "start"
    assert evs[2]["bytes"] == 12_001_000
    assert abs(evs[0]["ts"] - time.time()) < 60
    assert rep.send_errors == 0


def test_early_events_are_sent_as_the_client_known_at_connect(stub: StubServer) -> None:
    """The host name from a USB disk's local.cfg, the MAC and address from
    the network phase: the hardware phase before them is this client's too
    (the monitor filed it under no client, and its phases looked missing)."""
    rep = Reporter(console=io.StringIO())
    rep.event("phase", phase="hardware", status="done")
    rep.client.update({"mac": "52:54:00:12:34:56", "ip": "10.0.2.15"})
    rep.event("phase", phase="network", status="done", ip="10.0.2.16")
    rep.client["hostname"] = "e2e-usb"
    rep.connect(stub.url)
    rep.event("phase", phase="monitor", status="done")
    rep.flush(timeout=10)
    evs = [json.loads(r["body"]) for r in stub.requests]
    assert [(e["phase"], e["hostname"], e["mac"]) for e in evs] == [
        ("hardware", "e2e-usb", "52:54:00:12:34:56"), ("network", "e2e-usb", "52:54:00:12:34:56"),
        ("monitor", "e2e-usb", "52:54:00:12:34:56")]
    assert [e["ip"] for e in evs] == ["10.0.2.15", "10.0.2.16", "10.0.2.15"]  # its own stays


def test_a_failed_post_is_retried(stub: StubServer, sleeps: list[float]) -> None:
    stub.answer(503, {"error": "Busy", "message": "try again"})
    rep = Reporter(console=io.StringIO())
    rep.connect(stub.url)
    rep.event("done", message="installed in 93s")
    rep.flush(timeout=10)
    bodies = [json.loads(r["body"])["kind"] for r in stub.requests]
    assert bodies == ["done", "done"]
    assert sleeps == [1.0]
    assert rep.send_errors == 0


def test_an_absent_monitor_never_stops_the_install(sleeps: list[float]) -> None:
    rep = Reporter(console=io.StringIO())
    rep.connect(f"http://127.0.0.1:{closed_port()}")
    rep.event("phase", phase="fetch", status="start")
    rep.event("phase", phase="fetch", status="done")
    rep.flush(timeout=10)
    assert rep.send_errors == 2
    assert sleeps[:4] == [1.0, 2.0, 4.0, 8.0]  # backing off between attempts


def test_say_and_flush_before_connect() -> None:
    out = io.StringIO()
    rep = Reporter(console=out)
    rep.say("[fetch] pull the image")
    rep.flush()  # not connected: returns at once
    assert out.getvalue() == "sysclone: [fetch] pull the image\n"


# -- ImageServer -----------------------------------------------------------------------------

INSTRUCTIONS = {"version": 1, "hostname": "node07",
                "image": {"name": "rocky9", "module": "rocky9", "rsync_port": 873,
                          "bytes": 3221225472, "files": 120000, "usage": {"/": 3221225472}},
                "layout": None, "overrides": [], "params": {}}


def test_instructions(stub: StubServer) -> None:
    stub.answer(200, INSTRUCTIONS)
    srv = ImageServer("127.0.0.1", stub.port)
    got = srv.instructions(hostname="node07", mac="02:fc:00:00:00:01", image=None, layout=None)
    assert got == INSTRUCTIONS
    (req,) = stub.requests
    url = urlsplit(req["path"])
    assert req["method"] == "GET" and url.path == "/v1/instructions"
    assert parse_qs(url.query) == {"hostname": ["node07"], "mac": ["02:fc:00:00:00:01"]}


def test_server_error_passes_the_servers_words_on(stub: StubServer,
                                                  sleeps: list[float]) -> None:
    stub.answer(404, {"error": "ConfigError", "message": "unknown image 'rocky10'",
                      "hint": "known images: debian12, rocky9"})
    with pytest.raises(ServerError) as e:
        ImageServer("127.0.0.1", stub.port).instructions(hostname="node07", mac=None,
                                                          image="rocky10", layout=None)
    assert e.value.message == "unknown image 'rocky10'"
    assert e.value.hint == "known images: debian12, rocky9"
    assert e.value.fields == {"status": 404}
    assert len(stub.requests) == 1  # an answer is final: no retry
    assert sleeps == []


def test_server_error_without_json(stub: StubServer) -> None:
    stub.answer(502, b"<html><body>Bad Gateway</body></html>", "text/html")
    with pytest.raises(ServerError) as e:
        ImageServer("127.0.0.1", stub.port).get("/v1/instructions", {})
    assert e.value.message == "image server answered 502"
    assert e.value.hint is None


def test_unreachable_server_after_retries(sleeps: list[float]) -> None:
    port = closed_port()
    with pytest.raises(ServerError) as e:
        ImageServer("127.0.0.1", port).instructions(hostname="node07", mac=None, image=None,
                                                    layout=None)
    assert e.value.message.startswith(f"image server 127.0.0.1:{port} is unreachable: ")
    assert "Connection refused" in e.value.message
    assert "sysclone serve" in (e.value.hint or "")
    assert sleeps == [2.0, 4.0, 5.0]  # between the 4 attempts, none after the last


def test_server_comes_up_during_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    port = closed_port()
    started: list[StubServer] = []

    def sleep(seconds: float) -> None:  # `sysclone serve` starts while we wait
        srv = start(port)
        srv.answer(200, INSTRUCTIONS)
        started.append(srv)

    monkeypatch.setattr(server, "time", SimpleNamespace(sleep=sleep))
    try:
        got = ImageServer("127.0.0.1", port).get("/v1/instructions", {"hostname": "node07"})
        assert got["image"]["name"] == "rocky9"
        assert len(started) == 1 and len(started[0].requests) == 1
    finally:
        for srv in started:
            stop(srv)


def test_image_server_url() -> None:
    assert ImageServer("10.0.0.2", 8181).url == "http://10.0.0.2:8181"
    assert ImageServer("fd00::2", 8181).url == "http://[fd00::2]:8181"
