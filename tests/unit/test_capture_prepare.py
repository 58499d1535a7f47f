"""The golden-client script (imageserver/prepare/golden.py) and how the API
serves it: one file, standard library only, Python 3.9; the one-shot rsync
export it configures; the facts it shares with SSH captures."""

from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import urllib.request
import zipfile

import pytest

from imageserver import prepare
from imageserver.api import ApiServer
from imageserver.instructions import ServerPolicy
from imageserver.monitor import Monitor
from imageserver.prepare import golden

SOURCE = prepare.SCRIPT.read_text()


def test_runs_on_python_3_9_with_the_standard_library_only():
    tree = ast.parse(SOURCE, feature_version=(3, 9))  # no match, no X | Y at runtime...
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
    assert "from __future__ import annotations" in SOURCE  # annotations are not evaluated
    # Library calls newer than 3.9 that the parser cannot see:
    for newer in ("strict=", "removeprefix(", "removesuffix(", "datetime.UTC", "tomllib",
                  "TaskGroup", "ExceptionGroup"):
        assert newer not in SOURCE, newer


def test_fact_script_round_trip():
    nonce = "abc123"
    script = golden.fact_script(nonce)
    assert script.count(f"@@{nonce} out ") == len(golden.FACTS)
    # What /bin/sh prints for it: outputs between markers, a failing fact, and
    # output that tries to fake a marker without the nonce.
    printed = (f"@@{nonce} out hostname\ngolden\n\n@@{nonce} err hostname 0\n\n"
               f"@@{nonce} end hostname\n"
               f"@@{nonce} out mdadm\n\n@@{nonce} err mdadm 127\nsh: mdadm: not found\n"
               f"@@{nonce} end mdadm\n"
               f"@@{nonce} out fstab\n@@other end fstab\n/dev/sda1 / ext4 defaults 0 1\n\n"
               f"@@{nonce} err fstab 0\n\n@@{nonce} end fstab\n")
    facts = golden.parse_fact_stream(printed, nonce)
    assert facts["hostname"] == {"rc": 0, "out": "golden\n", "err": ""}
    assert facts["mdadm"] == {"rc": 127, "out": "", "err": "sh: mdadm: not found"}
    assert facts["fstab"]["out"] == "@@other end fstab\n/dev/sda1 / ext4 defaults 0 1\n"


def test_the_export_is_read_only_secret_and_for_the_server_only():
    conf = golden.render_rsyncd("/tmp/w", 8873, "sysclone", ["10.0.0.3", "fd00::3"], "")
    lines = [line.strip() for line in conf.splitlines()]
    for expected in ("read only = yes", "hosts allow = 10.0.0.3 fd00::3", "hosts deny = *",
                     "auth users = sysclone:ro", "secrets file = /tmp/w/secrets",
                     "strict modes = yes", "port = 8873", "[sysclone]", "path = /",
                     "exclude from = /tmp/w/exclude", "post-xfer exec = /bin/sh /tmp/w/post-xfer",
                     "[sysclone-facts]", "path = /tmp/w/facts"):
        assert expected in lines, expected
    assert not any(line.startswith("address") for line in lines)
    assert "address = 10.0.0.9" in golden.render_rsyncd("/w", 1, "m", ["1.2.3.4"], "10.0.0.9")


def args(**kw: object) -> argparse.Namespace:
    base = {"server": "10.0.0.3", "port": 873, "address": "", "module": "sysclone",
            "timeout": 3600, "secret_file": None}
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize(("kw", "says"), [
    ({"server": None}, "--server SERVER is required"),
    ({"server": "-oops"}, "is not a host"),
    ({"port": 0}, "--port must be 1-65535"),
    ({"timeout": 0}, "--timeout must be positive"),
    ({"module": "a/b"}, "--module must be"),
    ({"module": "a]b"}, "--module must be"),
])
def test_bad_options(kw, says):
    assert says in golden.check_args(args(**kw))
    assert golden.check_args(args()) == ""


def test_never_for_the_whole_world():
    with pytest.raises(golden.PrepareError, match="is not one host"):
        golden.server_addresses("0.0.0.0")
    assert golden.server_addresses("127.0.0.1") == ["127.0.0.1"]


def test_post_xfer_hook_reports_status_and_peer():
    hook = golden.POST_XFER % "/tmp/w"
    assert "$RSYNC_EXIT_STATUS" in hook.replace("{", "").replace(":-?}", "")
    assert "'/tmp/w/transfers'" in hook


class _Daemon:
    """The rsync daemon `_serve` watches: running until told otherwise."""

    returncode = None

    def poll(self):
        return self.returncode


def _serve(tmp_path, transfers: list[str], timeout: float = 5.0) -> int:
    (tmp_path / "transfers").write_text("".join(f"{t}\n" for t in transfers))
    a = argparse.Namespace(port=8730, module="sysclone", timeout=timeout)
    return golden._serve(a, _Daemon(), str(tmp_path), ["127.0.0.1"], "s3cret")


@pytest.mark.parametrize("status", ["0", "24"])
def test_the_export_stops_after_a_capture_the_server_keeps(tmp_path, capsys, status):
    # 24: files vanished while being read -- the image server keeps such a
    # capture (imageserver.transfer.VANISHED), so the export must stop too.
    assert _serve(tmp_path, [f"{status} 10.0.0.1"]) == 0
    assert "captured by 10.0.0.1; export stopped" in capsys.readouterr().out


def test_a_failed_transfer_leaves_the_export_waiting_until_the_timeout(tmp_path, capsys):
    assert _serve(tmp_path, ["23 10.0.0.1", "5 10.0.0.1"], timeout=0.5) == 1
    out, err = capsys.readouterr()
    assert "a transfer to 10.0.0.1 failed (rsync status 23); still waiting" in out
    assert "(rsync status 5)" in out
    assert "nobody captured this machine in 0.5 s; export stopped" in err


def test_the_export_waits_an_hour_by_default():
    p = argparse.ArgumentParser()
    golden.add_prepare_arguments(p)
    assert p.parse_args(["--server", "10.0.0.1"]).timeout == golden.DEFAULT_TIMEOUT == 3600


def test_the_api_serves_the_script_and_a_zipapp(tmp_path):
    from sysclone.paths import StateRoot

    state = StateRoot(tmp_path / "root", tmp_path / "cache")
    api = ApiServer(("127.0.0.1", 0), state, ServerPolicy(rsync_port=873), Monitor(state.logs))
    api.start()
    try:
        base = f"http://127.0.0.1:{api.port}"
        with urllib.request.urlopen(base + prepare.SCRIPT_PATH, timeout=5) as r:
            assert r.headers["Content-Type"].startswith("text/x-python")
            assert r.read().decode() == SOURCE
        with urllib.request.urlopen(base + prepare.ZIPAPP_PATH, timeout=5) as r:
            data = r.read()
    finally:
        api.stop()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    z = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(z.namelist()) == ["__main__.py", "golden.py"]
    assert z.read("golden.py").decode() == SOURCE
    assert prepare.zipapp() == data  # the same source gives the same bytes


def test_facts_main_prints_json(monkeypatch, capsys):
    monkeypatch.setattr(golden, "collect_facts", lambda: {"hostname": {"rc": 0, "out": "g"}})
    assert golden.main(["facts"]) == 0
    assert json.loads(capsys.readouterr().out)["hostname"]["out"] == "g"
