"""sysclone.background: work in a thread, its result or failure where it is
waited for."""

from __future__ import annotations

import threading

import pytest

from sysclone.background import in_background


def test_the_result_comes_back_and_the_work_ran_beside() -> None:
    go = threading.Event()

    def work() -> str:
        assert go.wait(10)  # the caller goes on while this waits
        return threading.current_thread().name

    wait = in_background(work, "helper")
    go.set()
    assert wait() == "helper"
    assert wait() == "helper"  # asked again: the same


def test_a_failure_is_raised_in_the_thread_that_waits() -> None:
    def broken() -> None:
        raise OSError("udevd: cannot create the manager")

    wait = in_background(broken, "udev")
    with pytest.raises(OSError, match="cannot create the manager"):
        wait()
