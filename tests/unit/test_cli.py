"""sysclone.cli: every subcommand's --help, one-line errors, and the
commands that need no root, no network and no real tool."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from imageserver import rsyncd
from imageserver.serve import free_port
from imageserver.store import ImageStore
from mkmedia import pxe
from sysclone.cli import build_parser, main
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from tests.conftest import FakeDaemon
from tests.unit.mediafakes import fake_bootfiles

LEAVES = {"image bootstrap", "image list", "image show", "image delete", "image capture",
          "image versions", "image rollback", "image prune", "image diff", "image verify",
          "image chroot", "image copy", "image rename", "client prepare", "client inventory",
          "kernel add", "kernel fetch", "kernel list", "bootenv build", "bootenv check", "serve",
          "pxe build", "demo", "params", "clients",
          "layout check", "layout plan", "layout convert",
          "media iso", "media usb", "media pxe", "bootserver", "updateclient", "push-update"}
GROUPS = {"image", "client", "kernel", "bootenv", "pxe", "layout", "media"}


def subcommands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
                ) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command path of the parser and its parser."""
    out: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[(*prefix, name)] = sub
                out.update(subcommands(sub, (*prefix, name)))
    return out


def words(text: str) -> str:
    return " ".join(text.split())


def test_the_command_tree_is_complete():
    tree = subcommands(build_parser())
    leaves = {" ".join(p) for p, sub in tree.items() if sub.get_default("fn")}
    assert leaves == LEAVES
    assert {" ".join(p) for p in tree} == LEAVES | GROUPS


@pytest.mark.parametrize("path", sorted(LEAVES | GROUPS))
def test_every_help_works_and_describes_the_command(path, capsys):
    sub = subcommands(build_parser())[tuple(path.split())]
    assert sub.description and len(sub.description) > 10
    with pytest.raises(SystemExit) as e:
        main([*path.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sysclone {path}")
    assert words(sub.description) in words(out)


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("image", "kernel", "bootenv", "serve", "pxe", "demo", "params", "clients"):
        assert f"\n    {cmd} " in out
    assert "--root" in out and "--cache" in out and "--debug" in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "state"


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    cap = capsys.readouterr()
    lines = cap.err.splitlines()
    assert len(lines) == 1, cap.err
    assert cap.out == ""
    return lines[0]


@pytest.mark.parametrize("argv", [
    ["image", "show", "bad/name"],
    ["image", "delete", "bad/name"],
    ["image", "bootstrap", "bad/name", "--mirror", "http://deb.debian.org/debian"],
    ["image", "bootstrap", "bad/name"],
])
def test_bad_image_name_is_a_one_line_error(argv, root, capsys):
    assert main(["--root", str(root), *argv]) == 1
    assert one_line_error(capsys) == (
        "sysclone: error: image name 'bad/name' is not valid "
        "(a letter or digit first, then letters, digits, '.', '_', '+' or '-', "
        "at most 64 in all, no '..')")


def test_unknown_image_is_a_one_line_error(root, capsys):
    (root / "images/deb12").mkdir(parents=True)
    assert main(["--root", str(root), "image", "show", "nope"]) == 1
    assert one_line_error(capsys) == ("sysclone: error: unknown image 'nope' "
                                      "(known images: deb12)")
    assert main(["--root", str(root), "image", "delete", "nope"]) == 1
    assert one_line_error(capsys) == "sysclone: error: unknown image 'nope'"


def test_debug_shows_the_exception(root):
    with pytest.raises(ConfigError, match="is not valid"):
        main(["--debug", "--root", str(root), "image", "show", "bad/name"])


def test_root_from_the_environment(root, capsys, monkeypatch):
    (root / "images/deb12").mkdir(parents=True)
    monkeypatch.setenv("SYSCLONE_ROOT", str(root))
    assert main(["image", "show", "deb12"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "deb12"


def make_images(root: Path) -> None:
    state = StateRoot(root, root / "cache")
    for name, size in (("rhel9", 3 << 20), ("deb12", 1 << 20)):
        (state.images / name / "usr").mkdir(parents=True)
        (state.images / name / "usr/blob").write_bytes(os.urandom(size))
    ImageStore(state).record("deb12", origin="bootstrap", details={"suite": "bookworm"})


def test_image_list_show_delete(root, capsys):
    make_images(root)
    assert main(["--root", str(root), "image", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "VERSION", "VERSIONS", "ORIGIN", "SOURCE", "SIZE", "FILES",
                              "STORAGE"]
    # Images stored before versions existed: no number, one version, no
    # source, a plain directory.
    assert [line.split()[:4] for line in out[1:]] == [["deb12", "-", "1", "bootstrap"],
                                                      ["rhel9", "-", "1", "unknown"]]
    assert out[1].split()[4:] == ["1", "MiB", "1", "plain"]
    assert out[2].split()[4:] == ["3", "MiB", "1", "plain"]

    assert main(["--root", str(root), "image", "show", "deb12"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["origin"] == "bootstrap"
    assert shown["details"] == {"suite": "bookworm"}
    assert shown["usage"]["files"] == 1

    assert main(["--root", str(root), "image", "delete", "rhel9"]) == 0
    assert capsys.readouterr().err == "deleted image rhel9\n"
    assert not (root / "images/rhel9").exists()
    assert main(["--root", str(root), "-q", "image", "delete", "deb12"]) == 0
    assert capsys.readouterr().err == ""


def test_empty_lists(root, capsys):
    for argv, header in ((["image", "list"], "NAME VERSION VERSIONS ORIGIN SOURCE SIZE FILES "
                                                   "STORAGE"),
                         (["kernel", "list"], "NAME VERSION SOURCE MODULES FIRMWARE"),
                         (["clients"], "CLIENT LAST PHASE MESSAGE")):
        assert main(["--root", str(root), *argv]) == 0
        assert words(capsys.readouterr().out) == header


def test_clients_shows_the_last_event_of_each(root, capsys):
    logs = root / "log"
    logs.mkdir(parents=True)
    events = [{"kind": "hello", "message": "up"},
              {"kind": "phase", "phase": "fetch", "status": "start"},
              {"kind": "progress", "percent": 50}]
    (logs / "node01.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (logs / "node02.jsonl").write_text(json.dumps(
        {"kind": "failed", "phase": "partition", "message": "no disk " + "x" * 100}) + "\n")
    assert main(["--root", str(root), "clients"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["CLIENT", "LAST", "PHASE", "MESSAGE"]
    assert out[1].split() == ["node01", "progress", "fetch"]
    assert out[2].split()[:4] == ["node02", "failed", "partition", "no"]
    assert out[2].rstrip().endswith("x" * 52)  # message cut at 60 characters
    assert "x" * 53 not in out[2]


def test_clients_skip_a_line_cut_short_and_say_so(root, capsys):
    logs = root / "log"
    logs.mkdir(parents=True)
    # The last line cut short (a full disk, a crash), one not an object.
    (logs / "node01.jsonl").write_text(
        json.dumps({"kind": "phase", "phase": "fetch"}) + "\n[1, 2]\n" + '{"kind": "do')
    (logs / "node02.inventory.json").write_text('{"pci": [')
    assert main(["--root", str(root), "clients"]) == 0
    cap = capsys.readouterr()
    assert cap.out.splitlines()[1].split() == ["node01", "phase", "fetch"]
    assert cap.err.splitlines() == [f"warning: {logs}/node01.jsonl: 2 lines not an event, "
                                    "skipped"]
    assert main(["--root", str(root), "clients", "show", "node02"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "the inventory of client 'node02'" in err[0] \
        and "is not a JSON object" in err[0]


def test_params_describes_the_install_parameters(root, capsys):
    assert main(["--root", str(root), "params"]) == 0
    text = capsys.readouterr().out
    assert "si.image-name" in text and "IMAGENAME" in text
    assert main(["--root", str(root), "params", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| Parameter |")


def test_pxe_build(root, tmp_path, capsys, monkeypatch):
    fake_bootfiles(tmp_path / "host", monkeypatch)
    be = root / "bootenv/standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(b"k")
    (be / "initrd.img").write_bytes(b"i")
    assert main(["--root", str(root), "pxe", "build", "IMAGESERVER=10.0.2.2",
                 "IMAGENAME=deb12"]) == 0
    cfg = (root / "pxe/pxelinux.cfg/default").read_text()
    assert "    APPEND initrd=initrd.img IMAGESERVER=10.0.2.2 IMAGENAME=deb12\n" in cfg
    # `pxe build` is `media pxe`: GRUB EFI and iPXE too, and the switch is on.
    assert "linux /kernel IMAGESERVER=10.0.2.2 IMAGENAME=deb12 $sc_bootif" in (
        root / "pxe/grub/grub.cfg").read_text()
    assert (root / "pxe/bootx64.efi").read_bytes() == b"shimx64.efi.signed"
    assert (root / "pxe/ipxe/default.ipxe").is_file()
    err = capsys.readouterr().err
    assert err.startswith(f"PXE tree in {root}/pxe: boot files pxelinux.0 (BIOS), bootx64.efi "
                          "(UEFI, shim + GRUB), ipxe.efi / undionly.kpxe (iPXE), then "
                          "boot.ipxe\n")


def test_pxe_build_without_a_bootenv(root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pxe, "PXELINUX", tmp_path / "missing/pxelinux.0")
    assert main(["--root", str(root), "pxe", "build"]) == 1
    assert one_line_error(capsys).startswith("sysclone: error: ")


def test_bad_option_values_are_usage_errors(root, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--root", str(root), "serve", "--post-action", "explode"])
    assert e.value.code == 2
    assert "invalid choice: 'explode'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--root", str(root), "bootenv", "build", "--compression", "lz4"])


def test_serve_until_sigterm(root, capsys, monkeypatch):
    """`sysclone serve` answers clients, prints their events, stops on SIGTERM."""
    make_images(root)
    monkeypatch.setattr(rsyncd, "daemon", lambda argv, **kw: FakeDaemon())
    http_port = free_port()
    old = signal.getsignal(signal.SIGTERM)
    done: list[Any] = []

    def client(rsync_port: int) -> None:
        base = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(base + "/v1/health", timeout=2).close()
                break
            except OSError:
                time.sleep(0.05)
        req = urllib.request.Request(base + "/v1/events", data=json.dumps(
            {"hostname": "node01", "kind": "failed", "phase": "fetch",
             "message": "rsync died"}).encode())
        urllib.request.urlopen(req, timeout=5).close()
        done.append(True)
        if signal.getsignal(signal.SIGTERM) is not old:  # serve's handler, never the default
            os.kill(os.getpid(), signal.SIGTERM)

    with socket.socket() as rsync_sock:
        rsync_sock.bind(("127.0.0.1", 0))
        rsync_sock.listen()
        rsync_port = rsync_sock.getsockname()[1]
        t = threading.Thread(target=client, args=(rsync_port,), daemon=True)
        t.start()
        try:
            rc = main(["--root", str(root), "serve", "--rsync-port", str(rsync_port),
                       "--http-port", str(http_port)])
        finally:
            signal.signal(signal.SIGTERM, old)
        t.join(5)
    assert rc == 0 and done == [True]
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"serving images deb12, rhel9: rsync://127.0.0.1:{rsync_port}/  "
                      f"http://127.0.0.1:{http_port}/")
    assert "[node01] FAILED in fetch: rsync died" in err
    assert (root / "run/rsyncd.conf").is_file()
    assert json.loads((root / "log/node01.jsonl").read_text())["message"] == "rsync died"
