"""Progress reports: to the console, and to the monitor on the image server.

Events are plain JSON objects POSTed to the server's /v1/events.  A
background thread sends them so a slow or absent monitor never stalls the
install; events raised before the network is up wait in the queue.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time

from agent.markers import DONE_MARKER, FAILED_MARKER, READY_MARKER

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO


log = logging.getLogger(__name__)

POST_ATTEMPTS = 5
POST_TIMEOUT = 15.0

__all__ = ["DONE_MARKER", "FAILED_MARKER", "READY_MARKER", "Reporter"]


class Reporter:
    def __init__(self, console: TextIO = sys.stdout) -> None:
        self.console = console
        self.client: dict[str, Any] = {}
        self._url: str | None = None
        self._q: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending: list[dict[str, Any]] = []
        self.send_errors = 0

    def say(self, text: str) -> None:
        print(f"sysclone: {text}", file=self.console, flush=True)

    def connect(self, url: str) -> None:
        """Start sending to the monitor at `url` (http://host:port)."""
        self._url = url.rstrip("/") + "/v1/events"
        self._thread = threading.Thread(target=self._sender, name="reporter", daemon=True)
        self._thread.start()
        # Events raised before the network was up carry what was known of
        # the client then: no MAC or address yet, and no host name when it
        # came later (a USB disk's local.cfg).  They are sent as this
        # client's, or the monitor could not tell whose early phases they
        # were; what an event already says stays.
        for ev in self._pending:
            self._q.put({**self.client, **ev})
        self._pending.clear()

    def event(self, kind: str, **data: Any) -> None:
        ev = {"ts": round(time.time(), 3), "kind": kind, **self.client, **data}
        if self._thread is None:
            self._pending.append(ev)
        else:
            self._q.put(ev)

    def _post(self, ev: dict[str, Any]) -> None:
        # Imported by the sender thread, not before the ready marker: with
        # http.client, email and ssl it is 0.8 s of the agent's start under
        # emulation.
        import urllib.error
        import urllib.request

        assert self._url
        body = json.dumps(ev).encode()
        req = urllib.request.Request(self._url, data=body,
                                     headers={"Content-Type": "application/json"})
        # Generous: a busy server (or an emulated machine) is slow, and a lost
        # report is worse than a late one.
        for attempt in range(POST_ATTEMPTS):
            try:
                with urllib.request.urlopen(req, timeout=POST_TIMEOUT) as r:
                    r.read()
                return
            except (urllib.error.URLError, OSError) as e:
                log.debug("report to %s failed (%s), attempt %d", self._url, e, attempt + 1)
                if attempt + 1 < POST_ATTEMPTS:
                    time.sleep(min(2.0 ** attempt, 8.0))
        self.send_errors += 1

    def _sender(self) -> None:
        while True:
            ev = self._q.get()
            try:
                if ev is None:
                    return
                self._post(ev)
            finally:
                self._q.task_done()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until queued events are sent (bounded)."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._q.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
