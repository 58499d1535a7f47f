"""Layouts on the server side: `sysclone layout check|plan|convert`, the
instructions carrying TOML layouts with their format, LUKS keys served to
clients, and the agent's plan phase fetching them (never showing them)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent import flow
from agent.disks import Disk, NoProbe
from agent.planner import make_plan
from agent.report import FAILED_MARKER
from agent.storage import layoutfile
from imageserver import lukskeys
from imageserver.api import ApiServer
from imageserver.instructions import LAYOUT_DIR, ClientQuery, ServerPolicy, resolve
from imageserver.monitor import Monitor
from imageserver.store import ImageStore
from sysclone.cli import main
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from tests.unit.test_flow import FakeImageServer, Machine, dhcp, machine  # noqa: F401

GiB = 1 << 30
DATA = Path(__file__).resolve().parent / "data"
LAYOUTS = DATA / "layouts"
UUIDS = re.compile(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{8}(:[0-9a-f]{8}){3}"
                   r"|[0-9A-F]{4}-[0-9A-F]{4}")


def run(tmp_path: Path, *argv: str) -> int:
    return main(["--root", str(tmp_path / "root"), *argv])


# -- sysclone layout -------------------------------------------------------------------------

def test_check_good_layouts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in sorted(LAYOUTS.glob("*.toml"))] + \
        [str(p) for p in sorted((DATA / "si").glob("disks-layout-*.xml"))]
    assert run(tmp_path, "layout", "check", *files) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{f}: ok ({n} disk(s), {m} fstab line(s))" for f, n, m in zip(
        files, [1, 2, 3, 2, 1, 1, 2, 1], [5, 2, 5, 3, 3, 6, 10, 4], strict=True)]


@pytest.mark.parametrize(("name", "disks", "fw", "agent_disks"), [
    ("raid1-lvm.toml", "8G,8G", None, [Disk("sda", 8 * GiB), Disk("sdb", 8 * GiB)]),
    ("btrfs-subvolumes.toml", "10G", "bios", [Disk("sda", 10 * GiB)]),
    ("luks-raid5-lvm.toml", "20G:bus=nvme,20G:bus=nvme,20G:bus=nvme", "uefi",
     [Disk(n, 20 * GiB, transport="nvme") for n in ("sda", "sdb", "sdc")]),
])
def test_plan_prints_what_the_agent_plans(name: str, disks: str, fw: str | None,
                                          agent_disks: list[Disk], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["layout", "plan", str(LAYOUTS / name), "--disk", disks, "--hostname", "node1"]
    assert run(tmp_path, *argv, *(["--firmware", fw] if fw else [])) == 0
    out, err = capsys.readouterr()
    agent = make_plan(instructions={"image": {"name": "IMAGE"}, "layout": {
        "name": name, "format": "toml", "text": (LAYOUTS / name).read_text()}},
        server="IMAGESERVER", hostname="node1", targets=agent_disks, fw=fw or "bios",
        ram_bytes=2 * GiB, have_tool=lambda t: True, probe=NoProbe())
    # The same lines, but for the identifiers each plan draws anew.
    assert UUIDS.sub("U", out) == UUIDS.sub("U", agent.describe() + "\n")
    assert "nothing was written" in err


def test_plan_refuses_what_the_agent_refuses(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "layout", "plan", str(LAYOUTS / "raid1-lvm.toml"), "--disk",
               "8G") == 1
    assert "layout raid1-lvm.toml needs 2 disks, this machine has 1 usable: /dev/sda" in \
        capsys.readouterr().err
    assert run(tmp_path, "layout", "plan", str(LAYOUTS / "raid1-lvm.toml"), "--disk",
               "8G,8G", "--firmware", "uefi") == 1
    assert "is for BIOS machines" in capsys.readouterr().err
    assert run(tmp_path, "layout", "plan", str(LAYOUTS / "raid1-lvm.toml")) == 1
    assert "layout plan needs --disk SIZE[,SIZE...]" in capsys.readouterr().err
    assert run(tmp_path, "layout", "plan", str(LAYOUTS / "raid1-lvm.toml"), "--disk",
               "8X") == 1
    assert "--disk 8X: '8X' is not a size" in capsys.readouterr().err


def test_plan_checks_the_boot_environments_tools(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bootenv = tmp_path / "be"
    bootenv.mkdir()
    (bootenv / "manifest.json").write_text('{"inputs": {"tool_groups": ["core", "ext4"]}}')
    assert run(tmp_path, "layout", "plan", str(LAYOUTS / "raid1-lvm.toml"), "--disk",
               "8G,8G", "--bootenv", str(bootenv)) == 1
    assert "this boot environment cannot build layout raid1-lvm.toml (mdadm is missing)" in \
        capsys.readouterr().err


def test_plan_with_a_stored_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = StateRoot(tmp_path / "root", tmp_path / "cache")
    (state.images / "web/etc").mkdir(parents=True)
    (state.images / "web/etc/big").write_bytes(b"x" * 100_000)
    ImageStore(state).record("web", origin="test")
    assert run(tmp_path, "layout", "plan", str(LAYOUTS / "btrfs-subvolumes.toml"), "--disk",
               "10G", "--image", "web") == 0
    out = capsys.readouterr().out
    assert out.startswith("install image web from rsync://IMAGESERVER:873/web/ as HOSTNAME")


@pytest.mark.parametrize("name", ["raid1-lvm.toml", "btrfs-subvolumes.toml", "keep-data.toml"])
def test_convert_both_ways(name: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    xml, toml = tmp_path / "l.xml", tmp_path / "l.toml"
    assert run(tmp_path, "layout", "convert", str(LAYOUTS / name), "-o", str(xml)) == 0
    assert run(tmp_path, "layout", "convert", str(xml), "-o", str(toml)) == 0
    assert xml.read_text().lstrip().startswith("<!--")
    original = layoutfile.load(LAYOUTS / name)
    assert layoutfile.load(xml) == original == layoutfile.load(toml)
    assert run(tmp_path, "layout", "convert", str(xml), "--to", "xml") == 0
    assert layoutfile.parse(capsys.readouterr().out, "out.xml") == original


def test_convert_refuses_what_xml_cannot_say(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "l.xml"
    assert run(tmp_path, "layout", "convert", str(LAYOUTS / "luks-raid5-lvm.toml"), "-o",
               str(out)) == 1
    assert "which SystemImager XML cannot express" in capsys.readouterr().err
    assert not out.exists()


def test_convert_warns_about_problems(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "layout", "convert", str(LAYOUTS / "bad/x24-no-root.xml")) == 0
    out, err = capsys.readouterr()
    assert "[[fsinfo]]" in out
    assert "warning: " in err and "no <fsinfo> mounts /" in err


# -- the image server ------------------------------------------------------------------------

@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    s = StateRoot(tmp_path / "root", tmp_path / "cache")
    (s.images / "deb12/etc").mkdir(parents=True)
    (s.images / "deb12/etc/hostname").write_text("golden\n")
    ImageStore(s).record("deb12", origin="bootstrap")
    (s.scripts / LAYOUT_DIR).mkdir(parents=True)
    return s


def test_toml_layouts_are_served_with_their_format(state: StateRoot) -> None:
    d = state.scripts / LAYOUT_DIR
    (d / "node.toml").write_text((LAYOUTS / "raid1-lvm.toml").read_text())
    (d / "default.xml").write_text("<config/>")
    got = resolve(state, ClientQuery("node07", None, "deb12"), ServerPolicy(873))["layout"]
    assert (got["name"], got["format"]) == ("node.toml", "toml")
    assert layoutfile.parse(got["text"], got["name"], got["format"]).disks[0].dev == "/dev/sda"
    # XML wins for the same name; asked for by name, either.
    (d / "node.xml").write_text("<config/>")
    got = resolve(state, ClientQuery("node07", None, "deb12"), ServerPolicy(873))["layout"]
    assert (got["name"], got["format"]) == ("node.xml", "systemimager-xml")
    got = resolve(state, ClientQuery("x", None, "deb12", layout="node.toml"),
                  ServerPolicy(873))["layout"]
    assert got["format"] == "toml"


def test_luks_keys_are_looked_up_like_layouts(state: StateRoot) -> None:
    keys = state.scripts / lukskeys.KEY_DIR
    (keys / "node07").mkdir(parents=True)
    (keys / "node07/cryptsys.key").write_text("host volume key\n")
    (keys / "deb12.key").write_text("image key\n")
    assert lukskeys.find_key(state.scripts, "node07", "deb12", "cryptsys")[1] == \
        b"host volume key"  # one trailing newline is not part of it
    assert lukskeys.find_key(state.scripts, "node07", "deb12", "other")[1] == b"image key"
    assert lukskeys.find_key(state.scripts, "web1", "deb12", "x")[1] == b"image key"
    with pytest.raises(ConfigError, match="no LUKS key for volume x of web1"):
        lukskeys.find_key(state.scripts, "web1", "rhel9", "x")
    with pytest.raises(ConfigError, match="is not a LUKS volume name"):
        lukskeys.find_key(state.scripts, "web1", "deb12", "../../etc/shadow")
    (keys / "bad.key").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="must be text"):
        lukskeys.find_key(state.scripts, "bad", None, "x")
    answer = lukskeys.answer(state.scripts, {"hostname": "node07", "image": "deb12@2",
                                             "volume": "cryptsys"})
    assert base64.b64decode(answer["key"]) == b"host volume key"
    assert answer["name"] == "luks-keys/node07/cryptsys.key"


def test_the_api_serves_keys(state: StateRoot) -> None:
    from agent.server import ImageServer, ServerError

    (state.scripts / lukskeys.KEY_DIR).mkdir()
    (state.scripts / lukskeys.KEY_DIR / "default.key").write_text("k3y")
    api = ApiServer(("127.0.0.1", 0), state, ServerPolicy(873), Monitor(state.logs))
    api.start()
    try:
        client = ImageServer("127.0.0.1", api.port)
        assert client.luks_key(hostname="n1", image="deb12", volume="root") == b"k3y"
        (state.scripts / lukskeys.KEY_DIR / "default.key").unlink()
        with pytest.raises(ServerError) as e:
            client.luks_key(hostname="n1", image="deb12", volume="root")
        assert e.value.message == "no LUKS key for volume root of n1"
    finally:
        api.stop()


# -- the agent's plan phase ------------------------------------------------------------------

@pytest.fixture
def luks_machine(machine: Machine, monkeypatch: pytest.MonkeyPatch  # noqa: F811
                 ) -> Machine:
    text = (LAYOUTS / "luks-raid5-lvm.toml").read_text()
    machine.answers["layout"] = {"name": "luks.toml", "format": "toml", "text": text}
    monkeypatch.setattr(flow, "firmware", lambda: "uefi")
    monkeypatch.setattr(flow.disklib, "list_disks", lambda: [
        Disk(n, 20 * GiB, transport="nvme") for n in ("nvme0n1", "nvme1n1", "nvme2n1")])
    # The layout selects its disks: the agent reads their WWNs and by-path names.
    monkeypatch.setattr(flow.disklib, "BY_PATH", machine.tmp / "no-by-path")
    machine.commands.add(["lsblk", "-J", "-d", "-o", "NAME,WWN"], '{"blockdevices": []}')
    return machine


class KeyServer(FakeImageServer):
    keys: ClassVar[dict[str, bytes]] = {}

    def luks_key(self, *, hostname: str | None, image: str | None, volume: str) -> bytes:
        self.asked.append({"key": volume, "hostname": hostname, "image": image})
        if volume not in self.keys:
            from agent.server import ServerError

            raise ServerError(f"no LUKS key for volume {volume} of {hostname}",
                              hint="put one in ROOT/scripts/luks-keys/", status=404)
        return self.keys[volume]


def _with_key_server(m: Machine, monkeypatch: pytest.MonkeyPatch, keys: dict[str, bytes]
                     ) -> None:
    KeyServer.keys = keys
    monkeypatch.setattr(flow, "ImageServer", lambda host, port: KeyServer(
        host, port, m.answers, m.asked, m.during_instructions))


def test_the_plan_fetches_each_key_from_the_server(luks_machine: Machine, dhcp: Any,  # noqa: F811
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _with_key_server(luks_machine, monkeypatch, {"cryptsys": b"s3cret-from-server"})
    rc, rep = luks_machine.install("IMAGESERVER=10.0.2.2 HOSTNAME=node7 si.dry-run")
    assert rc == 0, rep.lines
    assert {"key": "cryptsys", "hostname": "node7", "image": "deb12"} in luks_machine.asked
    assert "LUKS keys from the image server for cryptsys" in rep.lines
    # The image must carry what boots from this storage: mdadm, lvm, cryptsetup.
    # One listing asks for them all, with the image's own marker file.
    [listing] = [c for c in luks_machine.ran() if c[0] == "rsync"]
    listed = {a.split("/./", 1)[1] for a in listing if "/./" in a}
    assert {"etc/hostname", "usr/sbin/cryptsetup", "usr/sbin/mdadm", "usr/sbin/lvm"} <= listed
    # root is on LUKS: the initrd unlocks it
    assert "usr/share/initramfs-tools/hooks/cryptroot" in listed
    text = "\n".join(rep.lines) + repr(luks_machine.log)
    assert "s3cret" not in text


def test_a_missing_key_stops_the_plan(luks_machine: Machine, dhcp: Any,  # noqa: F811
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _with_key_server(luks_machine, monkeypatch, {})
    rc, rep = luks_machine.install("IMAGESERVER=10.0.2.2 HOSTNAME=node7")
    assert rc == 1
    assert rep.lines[-1] == (f"{FAILED_MARKER}: [plan] LUKS volume cryptsys: no key: no LUKS "
                             "key for volume cryptsys of node7 (put one in "
                             "ROOT/scripts/luks-keys/)")
    assert "partition" not in rep.phases()


def test_si_luks_key_is_used_and_never_shown(luks_machine: Machine, dhcp: Any,  # noqa: F811
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _with_key_server(luks_machine, monkeypatch, {})
    rc, rep = luks_machine.install("IMAGESERVER=10.0.2.2 si.luks-key=hunter2 si.dry-run")
    assert rc == 0, rep.lines
    assert not any("key" in a for a in luks_machine.asked)
    assert any(line.startswith("LUKS key from si.luks-key (kernel command line")
               for line in rep.lines)
    assert any("si.luks-key" in line and "(secret)" in line for line in rep.lines)
    assert "hunter2" not in "\n".join(rep.lines) + repr(luks_machine.log)


def test_an_image_without_the_tools_is_refused(luks_machine: Machine, dhcp: Any,  # noqa: F811
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import rsync_listing

    _with_key_server(luks_machine, monkeypatch, {"cryptsys": b"k"})
    luks_machine.commands.add(["rsync", "--list-only"], rsync_listing(
        missing=("usr/sbin/cryptsetup", "sbin/cryptsetup")))
    rc, rep = luks_machine.install("IMAGESERVER=10.0.2.2 si.dry-run")
    assert rc == 1
    assert "[plan] layout luks.toml needs cryptsetup in the installed system, and image " \
           "deb12 has none: it could not assemble its disks at boot (install cryptsetup in " \
           "the golden image)" in rep.lines[-1]
