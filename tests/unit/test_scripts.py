"""Pre-install and post-install scripts: chosen and ordered by the image
server as SystemImager named them, sent with the instructions, and run by
the agent (commands faked) with their output reported and a failure
stopping the install with the script's name.  The network configuration's
lookup on the server rides along: same names, same directory tree."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from agent.configure import scripts as scriptlib
from agent.configure.scripts import Script, ScriptFailed, from_instructions, run_scripts
from imageserver import clientfiles
from imageserver.api import ApiServer
from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.monitor import Monitor
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from tests.conftest import FakeCommands, FakeResult

SI = Path(__file__).resolve().parent / "data" / "si"

# What an admin's scripts directory holds: every class, an editor backup,
# a README, names that look like scripts but are not.
PRE = ["99all.harmless_example_script", "10all.dma_on", "20deb12.partition_check",
       "05node.bios", "30compute.ib", "40node07.fix", "50node07.cluster.example.fqdn",
       "15all.zap~", "README", "1all.one_digit", "10alldone.not_a_class",
       "10node071.other_host", "60raid.test"]


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    s = StateRoot(tmp_path / "root", tmp_path / "cache")
    (s.images / "deb12/etc").mkdir(parents=True)
    (s.images / "deb12/etc/hostname").write_text("golden\n")
    ImageStore(s).record("deb12", origin="bootstrap")
    for stage in clientfiles.STAGES:
        (s.scripts / stage).mkdir(parents=True)
    for name in PRE:
        (s.scripts / "pre-install" / name).write_text(f"#!/bin/sh\necho {name}\n")
    return s


# -- choosing and ordering (the image server) -----------------------------------------------

def test_classes_in_systemimagers_order() -> None:
    assert clientfiles.script_classes("node07.cluster.example", ("compute",), "deb12") == [
        "all", "deb12", "node", "compute", "node07", "node07.cluster.example"]
    assert clientfiles.script_classes(None, (), "deb12", "raid") == ["all", "deb12", "raid"]


def test_scripts_run_class_by_class_then_by_number(state: StateRoot) -> None:
    got = clientfiles.scripts_for(state.scripts, "node07.cluster.example", ("compute",),
                                  "deb12", with_data=False)
    assert [e["name"] for e in got["pre-install"]] == [
        "10all.dma_on", "99all.harmless_example_script",  # all, by number
        "20deb12.partition_check",  # the image
        "05node.bios",  # the base host name, whatever its number
        "30compute.ib",  # the groups
        "40node07.fix",  # the host name
        "50node07.cluster.example.fqdn"]
    assert got["post-install"] == []


def test_a_client_gets_its_own_scripts_only(state: StateRoot) -> None:
    got = clientfiles.scripts_for(state.scripts, "web3", (), "rhel9", with_data=False)
    assert [e["name"] for e in got["pre-install"]] == ["10all.dma_on",
                                                       "99all.harmless_example_script"]


def test_script_name_adds_a_class_run_last(state: StateRoot) -> None:
    got = clientfiles.scripts_for(state.scripts, "web3", (), "deb12", "raid", with_data=False)
    assert [e["name"] for e in got["pre-install"]][-1] == "60raid.test"
    assert got["pre-install"][-1]["class"] == "raid"


def test_script_name_that_matches_nothing_stops_the_client(state: StateRoot) -> None:
    with pytest.raises(ConfigError) as e:
        clientfiles.scripts_for(state.scripts, "web3", (), "deb12", "gpu")
    assert e.value.message.startswith("si.script-name=gpu: no script of that class in ")
    assert e.value.hint == "name one NNgpu.description (two digits, the class, a period)"
    with pytest.raises(ConfigError, match="not a script class name"):
        clientfiles.scripts_for(state.scripts, "web3", (), "deb12", "../x")


def test_scripts_carry_their_contents_and_digest(state: StateRoot) -> None:
    got = clientfiles.scripts_for(state.scripts, "web3", (), "deb12")
    e = got["pre-install"][0]
    data = base64.b64decode(e["data"])
    assert data == b"#!/bin/sh\necho 10all.dma_on\n"
    assert e["sha256"] == hashlib.sha256(data).hexdigest()


def test_an_oversized_script_is_refused(state: StateRoot) -> None:
    (state.scripts / "post-install/10all.huge").write_bytes(b"#" * (clientfiles.MAX_SCRIPT + 1))
    with pytest.raises(ConfigError, match=r"post-install script 10all\.huge is larger than"):
        clientfiles.scripts_for(state.scripts, "web3", (), "deb12")


def test_instructions_carry_scripts_and_network_config(state: StateRoot) -> None:
    (state.scripts / "post-install/10deb12.motd").write_text("#!/bin/sh\necho motd\n")
    nc = state.scripts / clientfiles.NETWORK_DIR
    nc.mkdir()
    (nc / "node.xml").write_text((SI / "net-config.xml").read_text())
    (nc / "default.xml").write_text("<config/>")
    image_with(state, "usr/sbin/NetworkManager")
    q = ClientQuery(hostname="node07", mac=None, image="deb12")
    got = resolve(state, q, ServerPolicy(rsync_port=873))
    assert [e["name"] for e in got["scripts"]["post-install"]] == ["10deb12.motd"]
    assert "40node07.fix" in [e["name"] for e in got["scripts"]["pre-install"]]
    # node07 -> the base host name's file, before default.xml
    assert got["network_config"]["name"] == "node.xml"
    # No configuration at all: the install NIC alone, nothing sent.
    (nc / "node.xml").unlink()
    (nc / "default.xml").unlink()
    assert resolve(state, q, ServerPolicy(rsync_port=873))["network_config"] is None


def image_with(state: StateRoot, *files: str) -> None:
    tree = ImageStore(state).path("deb12")
    for f in files:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        (tree / f).touch()


def test_network_config_looked_up_and_checked_against_the_image(state: StateRoot) -> None:
    nc = state.scripts / clientfiles.NETWORK_DIR
    nc.mkdir()
    (nc / "node").write_text((SI / "net-config.xml").read_text())  # without .xml works too
    q = ClientQuery(hostname="node07", mac=None, image="deb12")
    # An image with netplan: it has no InfiniBand type, refused before any disk.
    image_with(state, "usr/sbin/netplan")
    with pytest.raises(ConfigError, match=r"the image's network style \(netplan\) cannot "
                                          r"express .*infiniband interfaces"):
        resolve(state, q, ServerPolicy(rsync_port=873))
    # With NetworkManager (and no netplan) it goes through, with warnings.
    (ImageStore(state).path("deb12") / "usr/sbin/netplan").unlink()
    image_with(state, "usr/sbin/NetworkManager")
    got = resolve(state, q, ServerPolicy(rsync_port=873))["network_config"]
    assert got["name"] == "node" and got["style"] == "NetworkManager"
    assert got["text"] == (SI / "net-config.xml").read_text()
    assert any("alias 1: gateway 10.1.5.1 is not used" in w for w in got["warnings"])


def test_network_config_named_by_the_client(state: StateRoot) -> None:
    nc = state.scripts / clientfiles.NETWORK_DIR
    nc.mkdir()
    (nc / "bonded.xml").write_text("<config><if dev='eth0' type='Ethernet' control='nm'>"
                                   "<primary bootproto='dhcp'/></if></config>")
    image_with(state, "usr/sbin/NetworkManager")
    q = ClientQuery(hostname="node07", mac=None, image="deb12", network_config="bonded")
    assert resolve(state, q, ServerPolicy(rsync_port=873))["network_config"]["name"] == \
        "bonded.xml"
    q = ClientQuery(hostname="node07", mac=None, image="deb12", network_config="missing")
    with pytest.raises(ConfigError, match="network configuration 'missing' not found"):
        resolve(state, q, ServerPolicy(rsync_port=873))
    q = ClientQuery(hostname="node07", mac=None, image="deb12", network_config="../bonded")
    with pytest.raises(ConfigError, match="not found"):
        resolve(state, q, ServerPolicy(rsync_port=873))


def test_a_malformed_network_config_is_refused_at_the_server(state: StateRoot) -> None:
    nc = state.scripts / clientfiles.NETWORK_DIR
    nc.mkdir()
    (nc / "default.xml").write_text("<config><if dev='eth0'/></config>")
    with pytest.raises(ConfigError, match=r"default\.xml: .*type= is required"):
        resolve(state, ClientQuery(hostname="x", mac=None, image="deb12"),
                ServerPolicy(rsync_port=873))


def test_the_api_lists_what_a_client_would_run(state: StateRoot) -> None:
    srv = ApiServer(("127.0.0.1", 0), state, ServerPolicy(rsync_port=873), Monitor(state.logs))
    srv.start()
    try:
        url = f"http://127.0.0.1:{srv.port}/v1/scripts?hostname=node07&image=deb12@3"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert [e["name"] for e in body["pre-install"]][:3] == [
            "10all.dma_on", "99all.harmless_example_script", "20deb12.partition_check"]
        assert "data" not in body["pre-install"][0]
        assert body["network_config"] is None
        try:
            urllib.request.urlopen(url + "&script=nothing", timeout=10)
            raise AssertionError("expected 404")
        except urllib.error.HTTPError as e:
            assert e.code == 404
            assert "si.script-name=nothing" in json.loads(e.read())["message"]
    finally:
        srv.stop()


# -- running them (the agent) ---------------------------------------------------------------

def instr(stage: str, *scripts: tuple[str, bytes]) -> dict[str, Any]:
    return {"scripts": {stage: [{"name": n, "sha256": hashlib.sha256(d).hexdigest(),
                                 "data": base64.b64encode(d).decode()} for n, d in scripts]}}


def test_from_instructions_checks_names_and_digests() -> None:
    got = from_instructions(instr("pre-install", ("10all.a", b"#!/bin/sh\n")))
    assert got["pre-install"] == (Script("pre-install", "10all.a", b"#!/bin/sh\n"),)
    assert got["post-install"] == ()
    bad = instr("post-install", ("10all.a", b"x"))
    bad["scripts"]["post-install"][0]["sha256"] = "0" * 64
    with pytest.raises(ScriptFailed, match=r"post-install script 10all\.a arrived damaged"):
        from_instructions(bad)
    with pytest.raises(ScriptFailed, match=r"bad name '\.\./evil'"):
        from_instructions(instr("pre-install", ("../evil", b"x")))
    assert from_instructions({}) == {"pre-install": (), "post-install": ()}


class Events:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.events: list[tuple[str, dict[str, Any]]] = []

    def report(self) -> scriptlib.Reporter:
        return scriptlib.Reporter(self.said.append,
                                  lambda kind, **data: self.events.append((kind, data)))


def test_scripts_run_in_order_with_their_variables(tmp_path: Path,
                                                   fake_commands: FakeCommands,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[list[str], dict[str, str], Any]] = []
    real = fake_commands.popen

    def popen(args: list[str], **kw: Any) -> Any:
        seen.append((args, kw.get("env") or {}, kw.get("cwd")))
        return real(args, **kw)

    monkeypatch.setattr("sysclone.run._popen", popen)
    d = tmp_path / "pre"
    fake_commands.add([f"{d}/10all.a"], "formatting nothing\nsecond line\n")
    fake_commands.add([f"{d}/20web.b"], "")
    ev = Events()
    scripts = (Script("pre-install", "10all.a", b"#!/bin/sh\necho a\n"),
               Script("pre-install", "20web.b", b"#!/bin/sh\n"))
    run_scripts(scripts, d, str(d), {"IMAGENAME": "web", "HOSTNAME": "node07"}, ev.report())
    assert [a for a, _, _ in seen] == [[f"{d}/10all.a"], [f"{d}/20web.b"]]
    env = seen[0][1]
    assert env["IMAGENAME"] == "web" and env["SYSCLONE_STAGE"] == "pre-install"
    assert env["PATH"]  # the trimmed environment of sysclone.run, plus the variables
    assert seen[0][2] == d  # run where they lie, as SystemImager did
    assert (d / "10all.a").read_bytes() == b"#!/bin/sh\necho a\n"
    assert (d / "10all.a").stat().st_mode & 0o777 == 0o755
    assert (d / "variables.txt").read_text() == "HOSTNAME=node07\nIMAGENAME=web\n"
    assert ev.said[:3] == ["pre-install script 1/2: 10all.a", "  10all.a: formatting nothing",
                           "  10all.a: second line"]
    kinds = [(k, d.get("script")) for k, d in ev.events]
    assert kinds == [("script-output", "10all.a"), ("script", "10all.a"),
                     ("script", "20web.b")]
    assert ev.events[0][1]["lines"] == ["formatting nothing", "second line"]
    assert ev.events[1][1]["returncode"] == 0
    assert ev.events[1][1]["output"] == "formatting nothing\nsecond line"


def test_post_install_scripts_run_chrooted(tmp_path: Path, fake_commands: FakeCommands) -> None:
    root = tmp_path / "sysroot"
    fake_commands.add(["chroot", str(root), "/tmp/post-install/10all.x"], "done\n")
    ev = Events()
    run_scripts((Script("post-install", "10all.x", b"#!/bin/sh\n"),),
                root / "tmp/post-install", "/tmp/post-install", {}, ev.report(), target=root)
    assert fake_commands.calls == [["chroot", str(root), "/tmp/post-install/10all.x"]]
    assert (root / "tmp/post-install/variables.txt").is_file()


def test_a_failing_script_stops_the_stage_with_its_name(tmp_path: Path,
                                                        fake_commands: FakeCommands) -> None:
    d = tmp_path / "pre"
    fake_commands.add([f"{d}/10all.a"], FakeResult(stdout="checking disks\nno disk sdb\n",
                                                   returncode=3))
    ev = Events()
    with pytest.raises(ScriptFailed) as e:
        run_scripts((Script("pre-install", "10all.a", b"#!/bin/sh\n"),
                     Script("pre-install", "20all.b", b"#!/bin/sh\n")), d, str(d), {},
                    ev.report())
    assert e.value.message == "pre-install script 10all.a failed with exit code 3: no disk sdb"
    assert e.value.fields["script"] == "10all.a"
    assert fake_commands.calls == [[f"{d}/10all.a"]]  # 20all.b never ran
    assert ev.events[-1] == ("script", {"phase": "pre-install", "script": "10all.a",
                                        "returncode": 3, "seconds": ev.events[-1][1]["seconds"],
                                        "output": "checking disks\nno disk sdb"})


def test_a_script_whose_interpreter_is_missing(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def popen(args: list[str], **kw: Any) -> Any:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr("sysclone.run._popen", popen)
    d = tmp_path / "pre"
    with pytest.raises(ScriptFailed) as e:
        run_scripts((Script("pre-install", "10all.py", b"#!/usr/bin/python3\nprint(1)\n"),),
                    d, str(d), {}, Events().report())
    assert e.value.message == ("pre-install script 10all.py cannot be run: its interpreter "
                               "#!/usr/bin/python3 is not in the boot environment")


def test_long_output_is_sent_in_batches_and_its_tail_kept(tmp_path: Path,
                                                          fake_commands: FakeCommands) -> None:
    d = tmp_path / "pre"
    out = io.StringIO()
    for n in range(3000):
        out.write(f"line {n:05d} " + "x" * 20 + "\n")
    fake_commands.add([f"{d}/10all.a"], out.getvalue())
    ev = Events()
    run_scripts((Script("pre-install", "10all.a", b"#!/bin/sh\n"),), d, str(d), {},
                ev.report())
    batches = [data["lines"] for kind, data in ev.events if kind == "script-output"]
    assert sum(len(b) for b in batches) == 3000
    assert max(len(b) for b in batches) == scriptlib.BATCH_LINES
    final = ev.events[-1][1]["output"]
    assert len(final) <= scriptlib.OUTPUT_TAIL
    assert final.endswith("line 02999 " + "x" * 20)
