"""Work started in a thread now and waited for later: its failure is raised
in the thread that waits, not lost in its own."""

from __future__ import annotations

import threading

# Not typing's at run time: the agent's start does without typing (0.3 s
# under TCG), and the agent's hardware phase uses this.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")


def in_background(fn: Callable[[], T], name: str) -> Callable[[], T]:
    """Run fn() in a daemon thread from now on (one a lost connection or a
    stuck device never keeps the process alive for); the returned wait()
    joins it and returns what fn returned, or raises what it raised."""
    outcome: list[tuple[bool, Any]] = []

    def work() -> None:
        try:
            outcome.append((True, fn()))
        except BaseException as e:  # raised by wait(), in the waiting thread
            outcome.append((False, e))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()

    def wait() -> T:
        thread.join()
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return wait
