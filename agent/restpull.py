"""fetch-rest beside fetch: the image's deferred directories
(imageserver.fetchorder) pulled by a second rsync, in a thread of its own,
from the start of the bulk's pull -- or later, in the install's own order.

One rsync keeps one CPU busy at most (its receiver checksums and writes
every byte); two side by side, on disjoint parts of the image, keep two
busy: under emulation (TCG, 2 vCPUs) the demo image's two runs took
6.2-6.5 s side by side against 7.3-8.8 s one after the other, in one VM.
imageserver.fetchorder keeps every hard link within one part; directories
both runs create (/usr, /var) come out right, as each run sets their times
after its own changes.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable

# Two rsync runs at once hold two file lists and two sets of buffers: below
# this much memory the rest waits for the bulk.
BESIDE_MIN_RAM = 256 << 20

# pull_rest (agent.flow) with its install bound: `started` gets each rsync
# process, `stopping` is set when the install ends it early.
Pull = Callable[..., None]


def beside_bulk(deferred: bool, breaks: bool, ram_bytes: int) -> bool:
    """Whether fetch-rest runs beside fetch: only when the image has
    deferred directories, no breakpoint is set (one phase at a time, as
    Steps.concurrently) and the machine is not small."""
    return deferred and not breaks and ram_bytes >= BESIDE_MIN_RAM


class RestOfImage:
    """fetch-rest, in a thread of its own from the start of fetch (`beside`:
    begin), or later in the install's own order (finish)."""

    def __init__(self, pull: Pull, beside: bool) -> None:
        self._pull_rest = pull
        self.beside = beside
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._procs: list[subprocess.Popen[str]] = []  # its rsync, stopped on a failure
        self._stopping = threading.Event()

    def begin(self) -> None:
        """Start the pull now, in the background, when it runs beside the bulk."""
        if self.beside:
            self._thread = threading.Thread(target=self._pull, name="fetch-rest", daemon=True)
            self._thread.start()

    def _pull(self) -> None:
        try:
            self._pull_rest(started=self._procs.append, stopping=self._stopping)
        except BaseException as e:  # raised to whoever waits (finish)
            self._error = e
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self) -> None:
        """The rest: pulled here unless it is coming already; raises its failure."""
        if self._thread is None and not self._done.is_set():
            self._pull()
        self._done.wait()
        self.check()

    def check(self) -> None:
        """Raise the rest's failure now if it has failed already (beside
        the bulk): the install ends before configuring anything."""
        if self._done.is_set() and self._error is not None:
            raise self._error

    def arrived(self) -> bool:
        """Wait until the rest has come or failed; whether it came."""
        self._done.wait()
        return self._error is None

    def stop(self) -> None:
        """The install failed while the rest was coming: its rsync ends, and
        the thread with it, before the target is unmounted."""
        if self._thread is None:
            return
        self._stopping.set()
        for proc in self._procs:
            if proc.poll() is None:
                proc.terminate()
        self._thread.join()
