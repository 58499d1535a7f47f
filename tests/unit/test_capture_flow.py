"""The capture's commands and their failures, faked by argv: the rsync
command line, what rsync's and ssh's words mean, the SSH fact probe, the
CLI's checks before anything runs, and the si_* front ends."""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import replace
from pathlib import Path

import pytest

from imageserver import probe
from imageserver.prepare.golden import FACTS
from imageserver.sources import LocalSource, parse_source
from imageserver.transfer import (
    CaptureError,
    DiskFull,
    endpoint,
    explain,
    pull_argv,
    run_rsync,
    take_lines,
)
from sysclone import sicompat
from sysclone.cli import main
from tests.conftest import DATA, FakeResult


def test_pull_argv_keeps_everything_and_links_unchanged_files(tmp_path):
    src = parse_source("ssh://root@golden:2222", ssh_options=("StrictHostKeyChecking=no",))
    argv = pull_argv(endpoint(src), tmp_path / "tree", tmp_path / "excludes",
                     [tmp_path / "v2", tmp_path / "v1"])
    for opt in ("--archive", "--hard-links", "--acls", "--xattrs", "--sparse", "--numeric-ids",
                "--modify-window=-1"):
        assert opt in argv
    assert "--one-file-system" not in argv and "-x" not in argv  # crosses into /boot, /var
    assert argv[argv.index("-e") + 1].startswith("ssh -x -T -o StrictHostKeyChecking=no")
    assert f"--filter=merge {tmp_path / 'excludes'}" in argv
    assert argv[-4:] == [f"--link-dest={tmp_path / 'v2'}", f"--link-dest={tmp_path / 'v1'}",
                         "golden:/", f"{tmp_path / 'tree'}/"]
    d = parse_source("rsync://golden:8873/sysclone", secret_file="/s")
    argv = pull_argv(endpoint(d, Path("/run/pw")), tmp_path, None)
    assert "--password-file=/run/pw" in argv
    assert argv[-2] == "rsync://sysclone@golden:8873/sysclone/"
    assert pull_argv(endpoint(parse_source(str(tmp_path))), tmp_path / "t", None)[-2] == \
        f"{tmp_path}/"


@pytest.mark.parametrize(("lines", "rc", "cls", "says"), [
    (['rsync: [receiver] write failed on "/x": No space left on device (28)'], 11, DiskFull,
     "the image store's filesystem is full"),
    (["@ERROR: auth failed on module sysclone"], 5, CaptureError, "refused the secret"),
    (["@ERROR: access denied to sysclone from host (10.0.0.3)"], 5, CaptureError,
     "does not export to this server"),
    (["root@golden: Permission denied (publickey,password)."], 255, CaptureError,
     "SSH refused the login"),
    (["ssh: connect to host golden port 22: Connection refused"], 255, CaptureError,
     "refused the connection"),
    (["ssh: Could not resolve hostname nowhere: Name or service not known"], 255,
     CaptureError, "does not resolve"),
    (["Timeout, server golden not responding.", "rsync: connection unexpectedly closed"], 12,
     CaptureError, "failed or was lost"),
    (["bash: line 1: rsync: command not found"], 12, CaptureError, "rsync is not installed"),
    ([], 20, CaptureError, "interrupted"),
    (["rsync: something odd", "rsync error: some error (code 99)"], 99, CaptureError,
     "rsync: something odd; rsync error: some error (code 99)"),
])
def test_what_failures_mean(lines, rc, cls, says):
    e = explain(rc, lines, "capture of web")
    assert type(e) is cls and says in e.message and e.message.startswith("capture of web: ")


def test_run_rsync_sees_messages_glued_to_progress(fake_commands):
    out = DATA / "agent/rsync-progress2-local.txt"
    fake_commands.add(["rsync"], FakeResult(
        stdout=out.read_text() + "  1,000  50%  1.00MB/s    0:00:00 (xfr#1, to-chk=1/3)"
        "rsync: [receiver] write failed on \"/t/f\": No space left on device (28)\n",
        returncode=11))
    with pytest.raises(DiskFull):
        run_rsync(["rsync", "x"], "capture")
    fake_commands.add(["rsync"], FakeResult(stdout="file has vanished: \"/tmp/x\"\n",
                                            returncode=24))
    assert run_rsync(["rsync", "x"], "capture") == ['file has vanished: "/tmp/x"']


def test_rsync_output_read_in_pieces():
    """A capture's rsync output as the pipe gives it: pieces that end
    anywhere.  Every file reaches on_item once, progress updates never do
    (they start with \r; the one after each file ends with \n), a
    message glued to one is still found, and the status line gets the
    newest line of each piece."""
    data = (b"cd+++++++++ 0 ./\n"
            b"\r              0   0%    0.00kB/s    0:00:00 (xfr#1, to-chk=2/4)\n"
            b">f+++++++++ 39 etc/a b \n"
            b"\r          3,040   1%    0.00kB/s    0:00:00  "
            b"\r          3,040   1%    0.00kB/s    0:00:00 (xfr#2, to-chk=1/4)\n"
            b">f+++++++++ 41 odd\\#377name\n"
            b"\r          5,000  50%    1.90MB/s    0:00:00 (xfr#3, to-chk=0/4)"
            b"rsync: [receiver] write failed on \"/t/f\": No space left on device (28)\n"
            b"file has vanished: \"/x\"\n")
    for cut in range(1, len(data)):
        items: list[str] = []
        messages: list[str] = []
        shown: list[str] = []

        def on_item(line: str, items: list[str] = items) -> bool:
            if line[:2] in (">f", "cd"):
                items.append(line)
                return True
            return False
        rest = b""
        for piece in (data[:cut], data[cut:]):
            rest, latest = take_lines(rest + piece, on_item, messages)
            shown.append(latest)
        assert rest == b""
        assert items == ["cd+++++++++ 0 ./", ">f+++++++++ 39 etc/a b ",
                         ">f+++++++++ 41 odd\\#377name"], cut
        assert messages == ['rsync: [receiver] write failed on "/t/f": No space left on '
                            'device (28)', 'file has vanished: "/x"'], cut
        assert shown[-1] == 'file has vanished: "/x"'


def test_run_rsync_reads_a_last_line_without_its_newline(fake_commands):
    out = "".join(f"rsync: message {i}\n" for i in range(250))
    fake_commands.add(["rsync"], FakeResult(stdout=out + "rsync: last", returncode=99))
    with pytest.raises(CaptureError, match="rsync: message 248; rsync: message 249; "
                                           "rsync: last"):
        run_rsync(["rsync", "x"], "capture")


def stream(nonce: str, facts: dict[str, tuple[int, str]]) -> str:
    return "".join(f"@@{nonce} out {n}\n{out}\n@@{nonce} err {n} {rc}\n\n@@{nonce} end {n}\n"
                   for n, (rc, out) in facts.items())


def test_ssh_probe(fake_commands, monkeypatch):
    monkeypatch.setattr(probe.secrets, "token_hex", lambda n: "n0nce")
    src = parse_source("root@golden")
    sample = json.loads((DATA / "capture/facts-bios-gpt.json").read_text())
    facts = {name: (0, sample[name]["out"]) for name, _ in FACTS if name in sample}
    facts["rsync"] = (0, "rsync  version 3.2.7")
    fake_commands.add(["ssh"], FakeResult(stdout=stream("n0nce", facts)))
    got = probe.ssh_facts(src)
    assert got["lsblk"]["out"] == sample["lsblk"]["out"]
    call = fake_commands.calls[-1]
    assert call[0] == "ssh" and call[-3:] == ["golden", "/bin/sh", "-s"]
    facts["rsync"] = (127, "")
    fake_commands.add(["ssh"], FakeResult(stdout=stream("n0nce", facts)))
    with pytest.raises(CaptureError, match="rsync is not installed on the golden client "
                                           "root@golden"):
        probe.ssh_facts(src)
    fake_commands.add(["ssh"], FakeResult(stderr="root@golden: Permission denied (publickey).",
                                          returncode=255))
    with pytest.raises(CaptureError, match="SSH refused the login"):
        probe.ssh_facts(src)


def test_ssh_probe_of_some_facts_and_the_rest_beside_the_pull(fake_commands, monkeypatch):
    """Before the pull only BEFORE_PULL's facts are asked; RestOfFacts asks
    the others (without rsync's check, made already) and hands over what
    came, or the reason nothing did."""
    monkeypatch.setattr(probe.secrets, "token_hex", lambda n: "n0nce")
    src = parse_source("root@golden")
    fake_commands.add(["ssh"], FakeResult(stdout=stream("n0nce", {
        "rsync": (0, "rsync  version 3.2.7"), "lsblk": (0, "{}"), "findmnt": (0, "{}")})))
    first = probe.read_facts(src, None, before_pull=True)
    assert set(first) == set(probe.BEFORE_PULL)
    script = probe.fact_script("n0nce", probe.BEFORE_PULL)
    assert [n for n, _ in FACTS if f"@@n0nce out {n}\\n" in script] == list(probe.BEFORE_PULL)
    others = {n: (0, f"{n} output") for n, _ in FACTS if n not in probe.BEFORE_PULL}
    fake_commands.add(["ssh"], FakeResult(stdout=stream("n0nce", others)))
    rest = probe.RestOfFacts(src, first)
    assert rest.names == list(others)
    assert {n: f["out"] for n, f in rest.result().items()} == \
        {n: out for n, (_, out) in others.items()}
    fake_commands.add(["ssh"], FakeResult(stderr="Connection reset by peer", returncode=255))
    with pytest.raises(CaptureError, match="connection to the golden client failed"):
        probe.RestOfFacts(src, first).result()
    # Over the capture's shared connection: the first login is its master,
    # the rest goes through it and never becomes one.
    shared = replace(src, control_path="/run/sysclone-ssh/%C")
    answers = [stream("n0nce", {"rsync": (0, "rsync  version 3.2.7")}), stream("n0nce", others)]
    fake_commands.add(["ssh"], lambda argv: FakeResult(stdout=answers.pop(0)))
    probe.read_facts(shared, None, before_pull=True)
    probe.RestOfFacts(shared, first).result()
    login, rest = fake_commands.calls[-2:]
    assert "ControlMaster=yes" in login and "ControlPersist=120" in login
    assert "ControlMaster=no" in rest and not any(a.startswith("ControlPersist") for a in rest)


def test_the_shared_connection_closes_once_released_or_at_the_end(fake_commands):
    """release(): nothing more goes over SSH, so the master connection is
    told to exit in the background while the capture seals its version;
    the block's end waits for that.  Without release(), or when the
    capture fails, the end closes it.  Always once, and its socket
    directory goes."""
    from imageserver.capture import _one_connection

    fake_commands.add(["ssh"], FakeResult())
    exits = lambda: [c for c in fake_commands.calls if c[-3:-1] == ["-O", "exit"]]  # noqa: E731
    with _one_connection(parse_source("root@golden")) as (src, release):
        sockets = Path(src.control_path).parent
        assert sockets.is_dir() and not exits()
        release()
        release()
        done = exits()
    assert len(exits()) == 1 and exits()[0][-1] == "golden" and not sockets.exists()
    assert len(done) <= 1  # it may have run already, never twice
    with pytest.raises(RuntimeError), \
            _one_connection(parse_source("root@golden")) as (src, release):
        raise RuntimeError("the pull failed")
    assert len(exits()) == 2
    # A source that shares nothing: nothing to close.
    local = LocalSource(Path("/srv/golden"))
    with _one_connection(local) as (src, release):
        release()
    assert src is local and len(exits()) == 2


def test_local_probe_sees_the_mounts_below(fake_commands, tmp_path):
    mounts = {"filesystems": [
        {"target": "/", "source": "/dev/vda", "fstype": "ext4", "fsroot": "/"},
        {"target": "/mnt/disk", "source": "/dev/sdb1", "fstype": "ext4", "fsroot": "/"},
        {"target": "/mnt/disk/proc", "source": "proc", "fstype": "proc", "fsroot": "/"},
        {"target": "/mnt/diskette", "source": "/dev/fd0", "fstype": "vfat", "fsroot": "/"}]}
    fake_commands.add(["findmnt"], FakeResult(stdout=json.dumps(mounts)))
    got = probe.local_facts(LocalSource(Path("/mnt/disk")))
    fs = json.loads(got["findmnt"]["out"])["filesystems"]
    assert [m["target"] for m in fs] == ["/", "/proc"]


def root_args(tmp_path: Path) -> list[str]:
    return ["--root", str(tmp_path / "root"), "--cache", str(tmp_path / "cache")]


def test_capture_checks_everything_before_running_anything(tmp_path, capsys, fake_commands):
    bad = tmp_path / "bad.exclude"
    bad.write_text("-oops\n")
    for argv, says in (
            (["web", "--from", str(tmp_path), "--exclude-from", str(bad)],
             f"{bad}:1: '-oops' does not parse as a filter rule"),
            (["web", "--from", "golden", "--ssh-option", "Port 22"], "is not Key=Value"),
            (["web"], "image capture needs --from SOURCE"),
            (["web", "--from", str(tmp_path), "--layout", str(bad)], "not well-formed XML"),
            (["w/eb", "--from", "golden"], "image name 'w/eb' is not valid"),
            (["web", "--from", str(tmp_path), "--rsync-path", "sudo rsync"],
             "--rsync-path is for SSH sources"),
            (["web", "--from", str(tmp_path), "--explicit-geometry"],
             "--explicit-geometry: a local directory has no disk layout"),
            (["web", "--from", "golden", "--layout", str(bad), "--explicit-geometry"],
             "--explicit-geometry and --layout")):
        assert main([*root_args(tmp_path), "image", "capture", *argv]) == 1
        err = [line for line in capsys.readouterr().err.splitlines()
               if not line.startswith("==>")]
        assert len(err) == 1 and says in err[0], (argv, err)
    assert [c for c in fake_commands.calls if c[0] != "findmnt"] == []
    assert not (tmp_path / "root/images").exists()


def test_capture_help_says_what_is_left_out(capsys):
    with pytest.raises(SystemExit):
        main(["image", "capture", "--help"])
    out = capsys.readouterr().out
    for words in ("pseudo, network and bind mounts", "/etc/sysclone/capture.exclude",
                  "- /tmp/**", "temporary files", "--no-default-excludes", "rsync://",
                  "export (`client prepare`) itself never serves /proc, /sys, /dev, /run"):
        assert words in out


@pytest.mark.parametrize(("fn", "argv", "expected"), [
    (sicompat.si_getimage, ["-golden-client", "10.0.0.5", "-image", "web", "-secret-file",
                            "/s", "--exclude", "/home"],
     ["image", "capture", "--from", "rsync://10.0.0.5/sysclone", "--secret-file", "/s",
      "--exclude", "/home", "--", "web"]),
    (sicompat.si_getimage, ["--golden-client", "g", "--im", "web", "--ssh-user", "admin",
                            "--exclude-file", "/x", "--update-script", "yes"],
     ["image", "capture", "--from", "ssh://admin@g", "--exclude-from", "/x", "--", "web"]),
    (sicompat.si_prepareclient, ["--server", "imgsrv", "--yes", "--my-modules"],
     ["client", "prepare", "--server", "imgsrv", "--timeout", "3600", "--port", "873"]),
    (sicompat.si_lsimage, ["--verbose"], ["image", "list"]),
    (sicompat.si_rmimage, ["web", "--force"], ["image", "delete", "--", "web"]),
    (sicompat.si_cpimage, ["web", "web2"], ["image", "copy", "--", "web", "web2"]),
    (sicompat.si_mvimage, ["-q", "web", "www"], ["-q", "image", "rename", "--", "web", "www"]),
    (sicompat.si_cpimage, ["web", "web2", "--force"], ["image", "copy", "--", "web", "web2"]),
    (sicompat.si_mvimage, ["web", "www", "-force"], ["image", "rename", "--", "web", "www"]),
    # Positionals after `--`: never read as sysclone's options.
    (sicompat.si_rmimage, ["--", "-x"], ["image", "delete", "--", "-x"]),
    (sicompat.si_cpimage, ["--", "web", "--root=/tmp/evil"],
     ["image", "copy", "--", "web", "--root=/tmp/evil"]),
    (sicompat.si_prepareclient, ["--server", "s", "--ssh-key", "/k", "--image", "web"],
     ["client", "prepare", "--server", "s", "--timeout", "3600", "--port", "873"]),
])
def test_systemimager_names(fn, argv, expected, monkeypatch, capsys):
    seen: list[list[str]] = []
    monkeypatch.setattr(sicompat.cli, "main", lambda a: seen.append(list(a)) or 0)
    assert fn(argv) == 0
    assert seen == [expected]
    err = capsys.readouterr().err
    if "--update-script" in argv:
        assert "--update-script: ignored (there are no .master scripts" in err


def test_ctrl_c_during_rsync_is_raised_once_rsync_has_stopped(fake_commands, request):
    """Ctrl-C goes to rsync and KeyboardInterrupt comes after it, never in
    the middle of what on_item does (handing files to hashing threads: a
    KeyboardInterrupt inside a thread's start became "RuntimeError: release
    unlocked lock" and a traceback)."""
    fake_commands.add(["rsync"], FakeResult(stdout=">f+++++++++ 1 a\n>f+++++++++ 1 b\n"))
    seen: list[str] = []
    # As at a terminal: a test run started as a background job inherits
    # SIGINT ignored, which the capture rightly leaves alone.
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, earlier))

    def on_item(line: str) -> bool:
        seen.append(line)
        if len(seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
        return True

    with pytest.raises(KeyboardInterrupt):
        run_rsync(["rsync", "x"], "capture", on_item=on_item)
    assert seen == [">f+++++++++ 1 a", ">f+++++++++ 1 b"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(("fn", "argv", "says"), [
    (sicompat.si_prepareclient, ["--server", "s", "--no-rsyncd"],
     "si_prepareclient: --no-rsyncd is not supported: the one-shot export"),
    (sicompat.si_prepareclient, ["--server", "s", "-e", "/dev/sdb"],
     "si_prepareclient: --exclude-disk is not supported"),
    (sicompat.si_prepareclient, ["--server", "s", "--explicit-geometry", "/dev/sda"],
     "sysclone image capture --explicit-geometry"),
    (sicompat.si_cpimage, ["a", "b", "--server", "other"],
     "si_cpimage: --server is not supported: sysclone copies within this server's store"),
    (sicompat.si_cpimage, ["a", "b", "--ssh-user", "root"], "si_cpimage: --ssh-user"),
    (sicompat.si_getimage, ["--golden-client", "g", "--image", "w", "--ssh-user", "root",
                            "--secret-file", "/s"],
     "si_getimage: --secret-file is for a si_prepareclient export"),
])
def test_systemimager_options_that_would_do_otherwise_are_refused(fn, argv, says,
                                                                    monkeypatch, capsys):
    """Ignored, these would do something else than asked (export anyway,
    keep the disk, act on this server): one line, nothing run."""
    seen: list[list[str]] = []
    monkeypatch.setattr(sicompat.cli, "main", lambda a: seen.append(list(a)) or 0)
    assert fn(argv) == 2 and seen == []
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and says in err[0], err


def _lsblk_facts(*children: dict) -> dict:
    tree = {"blockdevices": [{"name": "vda", "type": "disk", "children": list(children)}]}
    return {"lsblk": {"rc": 0, "out": json.dumps(tree)}}


@pytest.mark.parametrize("mounted", [{"mountpoints": ["/"]}, {"mountpoint": "/"}],
                         ids=["util-linux 2.37+", "older util-linux"])
def test_a_first_capture_checks_the_store_has_room_before_the_pull(tmp_path, monkeypatch,
                                                                    mounted):
    """What the client's mounted filesystems hold, against the store's free
    space, before anything is pulled (swap and unmounted ones do not count)."""
    from imageserver import capture as cap

    monkeypatch.setattr(cap.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(100 << 30, 90 << 30, 10 << 30))
    facts = _lsblk_facts({"name": "vda1", "fstype": "ext4", "fsused": str(12 << 30), **mounted},
                         {"name": "vda2", "fstype": "swap", "fsused": None},
                         {"name": "vda3", "fstype": "ext4", "fsused": str(50 << 30)})
    with pytest.raises(DiskFull, match=r"the golden client holds 12\.0 GiB, the image store "
                                       r"has 10\.0 GiB free"):
        cap._check_space(facts, tmp_path, first=True)
    cap._check_space(facts, tmp_path, first=False)  # later versions share unchanged files
    small = _lsblk_facts({"name": "vda1", "fstype": "ext4", "fsused": str(9 << 30), **mounted})
    cap._check_space(small, tmp_path, first=True)
