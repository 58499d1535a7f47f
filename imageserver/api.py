"""The image server's HTTP API: install instructions out, events in.

    GET  /v1/instructions?hostname=&mac=&image=&layout=&network_config=&script=
                                                         -> JSON instructions
    GET  /v1/scripts?hostname=&image=&network_config=&script=
                       -> which scripts and network configuration a client gets
    GET  /v1/luks-key?hostname=&image=&volume=   -> {"key": base64} (imageserver.lukskeys)
    POST /v1/events                                      <- JSON event
    POST /v1/initrd                                      <- JSON request, -> tar
    GET  /v1/initrd-listing?module=NAME@N   the image's initrds, listed (initrdlisting)
    GET  /v1/clients                                     -> monitor snapshot
    GET  /v1/health                                      -> "ok"
    GET  /v1/client/prepare.py        the golden-client script (curl ... | python3 - prepare)
    GET  /v1/client/sysclone-client.pyz   the same as a zipapp (python3 FILE prepare ...)
    GET  /v1/client/inventory.pyz     `sysclone client inventory` as a zipapp (python3 FILE)
    GET  /v1/inventory?client=NAME    the last inventory a client sent
    GET  /v1/client/updateclient.py   updateclient (curl ... | python3 - --server SERVER)
    GET  /v1/client/updateclient.pyz  the same as a zipapp, with its bytecode (python3 FILE ...)
    GET  /v1/update?hostname=&image=  what updateclient syncs to (imageserver.updateclient)
    GET  /v1/bootenv/FILE             the boot environment, for updateclient --autoinstall
    GET  /boot/PATH                   the PXE tree (ROOT/pxe): iPXE, UEFI HTTP boot

Errors are JSON objects {"error", "message", "hint"} with a 4xx status, so
the agent can show the server's own words on the client's console.
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from imageserver import clientinventory, downloads, initrdlisting, prepare, updateclient
from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.monitor import Monitor
from imageserver.store import ImageStore, UsageCache
from sysclone.errors import SyscloneError
from sysclone.paths import StateRoot

log = logging.getLogger(__name__)

# An inventory event carries the machine's inventory: a big server's modaliases,
# PCI devices and disks run to some hundred kB.
MAX_EVENT = 1024 * 1024
MAX_INITRD_REQUEST = 16 * 1024 * 1024


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], state: StateRoot, policy: ServerPolicy,
                 monitor: Monitor) -> None:
        super().__init__(address, _Handler)
        self.state = state
        self.policy = policy
        self.monitor = monitor
        # Usage figures are measured from the tree, memoized briefly: many
        # clients booting at once do not each walk the image.
        self.store = ImageStore(state, UsageCache(ttl=30.0))
        self._thread: threading.Thread | None = None
        # A client that finished its install boots its disk next time (netbootmond).
        from imageserver.netboot import NetbootSwitch

        monitor.subscribe(NetbootSwitch(state).on_event)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        # shutdown() waits for serve_forever(): it would hang if never started.
        if self._thread is not None:
            self.shutdown()
            self._thread = None
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api %s: " + format, self.client_address[0], *args)

    def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/v1/health":
            self._send(200, {"status": "ok"})
        elif url.path == "/v1/clients":
            self._send(200, self.server.monitor.snapshot())
        elif url.path == prepare.SCRIPT_PATH:
            self._send(200, prepare.script(), "text/x-python; charset=utf-8")
        elif url.path == prepare.ZIPAPP_PATH:
            self._send(200, prepare.zipapp(), "application/zip")
        elif url.path == clientinventory.ZIPAPP_PATH:
            self._send(200, clientinventory.zipapp(), "application/zip")
        elif url.path == "/v1/inventory":
            inv = self.server.monitor.inventory(q.get("client") or "")
            if inv is None:
                self._send(404, {"error": "NotFound",
                                 "message": f"no inventory from client {q.get('client')!r}"})
            else:
                self._send(200, inv)
        elif url.path == "/v1/instructions":
            query = ClientQuery(hostname=q.get("hostname") or None, mac=q.get("mac") or None,
                                image=q.get("image") or None, layout=q.get("layout") or None,
                                network_config=q.get("network_config") or None,
                                script=q.get("script") or None)
            try:
                body = resolve(self.server.state, query, self.server.policy,
                               store=self.server.store)
            except SyscloneError as e:
                self._send(HTTPStatus.NOT_FOUND, e.to_dict())
                return
            self._send(200, body)
        elif url.path == "/v1/scripts":
            self._scripts(q)
        elif url.path == updateclient.SCRIPT_PATH:
            self._send(200, updateclient.script(), "text/x-python; charset=utf-8")
        elif url.path == updateclient.ZIPAPP_PATH:
            self._send(200, updateclient.zipapp(), "application/zip")
        elif url.path == updateclient.UPDATE_PATH:
            try:
                self._send(200, updateclient.answer(self.server.state, self.server.policy,
                                                    self.server.store, q))
            except SyscloneError as e:
                self._send(HTTPStatus.NOT_FOUND, e.to_dict())
        elif downloads.is_download(url.path):
            self._download(url.path, body=True)
        elif url.path == initrdlisting.PATH:
            try:
                self._send(200, initrdlisting.answer(self.server.state, q))
            except SyscloneError as e:
                self._send(HTTPStatus.NOT_FOUND, e.to_dict())
        elif url.path == "/v1/luks-key":
            from imageserver import lukskeys

            try:
                self._send(200, lukskeys.answer(self.server.state.scripts, q))
            except SyscloneError as e:
                self._send(HTTPStatus.NOT_FOUND, e.to_dict())
        else:
            self._send(404, {"error": "NotFound", "message": f"no such endpoint {url.path}"})

    def do_HEAD(self) -> None:
        # UEFI HTTP boot asks for the size of its boot file first.
        path = urlsplit(self.path).path
        if downloads.is_download(path):
            self._download(path, body=False)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _download(self, path: str, *, body: bool) -> None:
        """A file of the PXE tree or the boot environment, streamed."""
        import shutil

        try:
            f, content_type = downloads.resolve_download(self.server.state, path)
        except SyscloneError as e:
            if body:
                self._send(HTTPStatus.NOT_FOUND, e.to_dict())
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
            return
        with f.open("rb") as src:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(f.stat().st_size))
            self.end_headers()
            if body:
                shutil.copyfileobj(src, self.wfile, 1 << 20)

    def _scripts(self, q: dict[str, str]) -> None:
        """What a client would run, without the contents (ReaR's `rear -s`)."""
        from imageserver import clientfiles, cluster

        state = self.server.state
        host = q.get("hostname") or None
        try:
            # As the instructions choose (imageserver.instructions.resolve).
            groups = cluster.load(state.scripts)
            image = (q.get("image") or groups.image_for(host)
                     or self.server.policy.default_image or "").split("@")[0]
            names = groups.group_names(host)
            scripts = clientfiles.scripts_for(state.scripts, host, names, image or None,
                                              q.get("script") or None, with_data=False)
            net = clientfiles.network_config_for(state.scripts, host, names, image or None,
                                                 q.get("network_config") or None, None)
        except SyscloneError as e:
            self._send(HTTPStatus.NOT_FOUND, e.to_dict())
            return
        self._send(200, {**scripts, "network_config": net["name"] if net else None})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if url.path == "/v1/initrd":
            self._initrd(length)
            return
        if url.path != "/v1/events":
            self._send(404, {"error": "NotFound", "message": f"no such endpoint {url.path}"})
            return
        if length <= 0 or length > MAX_EVENT:
            self._send(400, {"error": "BadRequest", "message": "event body size out of range"})
            return
        try:
            ev = json.loads(self.rfile.read(length))
            if not isinstance(ev, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._send(400, {"error": "BadRequest", "message": f"event is not JSON: {e}"})
            return
        ev.setdefault("ip", self.client_address[0])
        self.server.monitor.record(ev)
        self._send(200, {"status": "ok"})

    def _initrd(self, length: int) -> None:
        """POST /v1/initrd: build a client's generic initrd here, natively
        (imageserver.initrdbuild); answers a tar of what the tool wrote."""
        from imageserver import initrdbuild

        if length <= 0 or length > MAX_INITRD_REQUEST:
            self._send(400, {"error": "BadRequest", "message": "request body size out of range"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._send(400, {"error": "BadRequest", "message": f"request is not JSON: {e}"})
            return
        try:
            req = initrdbuild.InitrdRequest.from_json(body)
            data = initrdbuild.build(self.server.state, req)
        except SyscloneError as e:
            log.warning("initrd for %s: %s", self.client_address[0], e)
            self._send(HTTPStatus.UNPROCESSABLE_ENTITY, e.to_dict())
            return
        except Exception as e:  # a bug or the host's trouble: the client must hear of it
            log.exception("initrd build for %s failed", self.client_address[0])
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR,
                       {"error": type(e).__name__, "message": f"initrd build failed: {e}"})
            return
        self._send(200, data, "application/x-tar")
