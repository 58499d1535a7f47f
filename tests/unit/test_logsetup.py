"""The agent's log destinations follow the parameters: si.debug on the
console, si.log-server over UDP syslog (received here on a real socket),
si.term in the environment commands get."""

from __future__ import annotations

import io
import logging
import logging.handlers
import socket
import sys
from collections.abc import Iterator

import pytest

from agent import logsetup
from agent.logsetup import LogTargets
from sysclone.run import base_env


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    lg = logging.getLogger("sysclone-test-logsetup")
    lg.setLevel(logging.DEBUG)
    lg.propagate = False
    yield lg
    for h in list(lg.handlers):
        lg.removeHandler(h)


@pytest.fixture
def syslog_server() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(5)
        yield s


def syslog_handlers(lg: logging.Logger) -> int:
    return sum(isinstance(h, logging.handlers.SysLogHandler) for h in lg.handlers)


def apply(t: LogTargets, **kw: object) -> list[str]:
    args: dict[str, object] = {"debug": False, "log_server": None, "log_server_port": 514,
                               "term": None}
    args.update(kw)
    return t.apply(**args)  # type: ignore[arg-type]


def test_log_server_receives_the_log(logger: logging.Logger,
                                     syslog_server: socket.socket) -> None:
    port = syslog_server.getsockname()[1]
    t = LogTargets(logger)
    assert apply(t, log_server="127.0.0.1", log_server_port=port) == [
        f"log sent to syslog at 127.0.0.1:{port} (UDP)"]
    logger.warning("partition table written to %s", "/dev/vda")
    data, _ = syslog_server.recvfrom(4096)
    # local0 (16) * 8 + warning (4) = <132>
    assert data.decode().rstrip("\x00") == (
        "<132>sysclone-agent: WARNING sysclone-test-logsetup: partition table written to "
        "/dev/vda")
    logger.debug("not sent: below INFO")
    logger.info("sent")
    data, _ = syslog_server.recvfrom(4096)
    assert data.decode().rstrip("\x00").endswith(": sent")
    # Unchanged parameters change nothing; another server replaces the first.
    assert apply(t, log_server="127.0.0.1", log_server_port=port) == []
    assert apply(t, log_server="127.0.0.1", log_server_port=port + 1)[0].endswith(
        f":{port + 1} (UDP)")
    assert syslog_handlers(logger) == 1
    t.close()
    assert syslog_handlers(logger) == 0


def test_unresolvable_log_server_is_a_warning(logger: logging.Logger,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_host(*a: object, **k: object) -> object:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    t = LogTargets(logger)
    assert apply(t, log_server="logs.invalid") == [
        "warning: si.log-server: cannot send to logs.invalid:514: Name or service not known; "
        "the log stays local"]
    assert syslog_handlers(logger) == 0


def test_debug_lowers_the_console_only(logger: logging.Logger) -> None:
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.WARNING)
    log_file = logging.StreamHandler(io.StringIO())  # not the console
    log_file.setLevel(logging.WARNING)
    logger.addHandler(console)
    logger.addHandler(log_file)
    t = LogTargets(logger)
    assert apply(t, debug=False) == []
    assert console.level == logging.WARNING
    assert apply(t, debug=True) == ["debug messages on the console"]
    assert console.level == logging.DEBUG and log_file.level == logging.WARNING
    assert apply(t, debug=True) == []


def test_term_reaches_the_commands(logger: logging.Logger,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "linux")
    t = LogTargets(logger)
    assert apply(t, term="vt220") == ["TERM=vt220"]
    assert base_env()["TERM"] == "vt220"
    assert apply(t, term="vt220") == []
    assert apply(t, term=None) == []  # unset keeps what the boot environment has
    assert base_env()["TERM"] == "vt220"


def test_facility_is_local0_without_importing_handlers_at_start() -> None:
    # The literal stands for the constant logging.handlers holds (imported
    # only when a log server is named).
    assert logsetup.FACILITY == logging.handlers.SysLogHandler.LOG_LOCAL0
