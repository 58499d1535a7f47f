"""imageserver.sources: `--from SOURCE` parsed and checked before anything
runs (hosts, users, ports, modules and SSH options end up on command lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.sources import (
    DaemonSource,
    LocalSource,
    SshSource,
    parse_source,
    read_secret,
)
from sysclone.errors import ConfigError


@pytest.mark.parametrize(("text", "user", "host", "port"), [
    ("golden", "root", "golden", None),
    ("root@10.0.0.5", "root", "10.0.0.5", None),
    ("admin@golden.example.com:2222", "admin", "golden.example.com", 2222),
    ("ssh://root@127.0.0.1:2201", "root", "127.0.0.1", 2201),
    ("ssh://golden/", "root", "golden", None),
    ("[fe80::1]:22", "root", "fe80::1", 22),
    ("root@::1", "root", "::1", None),
])
def test_ssh_sources(text, user, host, port):
    s = parse_source(text)
    assert isinstance(s, SshSource)
    assert (s.user, s.host, s.port) == (user, host, port)


def test_ssh_argv_puts_the_users_options_first(tmp_path):
    key = tmp_path / "id"
    key.write_text("k")
    s = parse_source("ssh://root@127.0.0.1:2201", ssh_key=str(key),
                     ssh_options=("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"))
    argv = s.ssh_argv()
    assert argv[:3] == ["ssh", "-x", "-T"]
    # ssh keeps the first value of an option: the user's beat our defaults.
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert opts.index("StrictHostKeyChecking=no") < opts.index("StrictHostKeyChecking=accept-new")
    assert "BatchMode=yes" in opts
    assert argv[-6:] == ["-p", "2201", "-i", str(key), "-l", "root"]
    assert s.rsync_shell() == " ".join(argv)
    assert s.rsync_root() == "127.0.0.1:/"
    assert s.describe() == "root@127.0.0.1:2201"
    assert parse_source("[::1]:22").rsync_root() == "[::1]:/"


def test_port_as_an_ssh_option():
    s = parse_source("root@127.0.0.1", ssh_options=("Port=2222",))
    assert s.port is None and "Port=2222" in s.ssh_argv()


def test_rsync_sources(tmp_path):
    secret = tmp_path / "secret"
    s = parse_source("rsync://10.0.0.5/sysclone", secret_file=str(secret))
    assert s == DaemonSource("10.0.0.5", "sysclone", 873, "sysclone", secret)
    assert s.url(s.module) == "rsync://sysclone@10.0.0.5:873/sysclone/"
    assert s.url(s.facts_module, "facts.json") == \
        "rsync://sysclone@10.0.0.5:873/sysclone-facts/facts.json"
    s = parse_source("rsync://me@golden:8873/", secret_file=str(secret))
    assert (s.user, s.host, s.port, s.module) == ("me", "golden", 8873, "sysclone")


def test_local_directory(tmp_path):
    s = parse_source(str(tmp_path))
    assert s == LocalSource(tmp_path)
    assert s.describe() == str(tmp_path)


@pytest.mark.parametrize(("text", "kw", "says"), [
    ("-oProxyCommand=x", {}, "is not a source"),
    ("root@-oProxyCommand=x", {}, "is not a host name"),
    ("golden:0", {}, "is not a TCP port"),
    ("golden:65536", {}, "is not a TCP port"),
    ("golden:22x", {}, "is not a TCP port"),
    ("bad user@golden", {}, "user name 'bad user' is not valid"),
    ("-x@golden", {}, "is not a source"),
    ("golden_host", {}, "is not a host name"),
    ("ssh://golden/etc", {}, "an SSH source is a host, not a path"),
    ("line\nbreak", {}, "is not a source"),
    ("golden", {"ssh_options": ("Port 22",)}, "is not Key=Value"),
    ("golden", {"ssh_options": ("A=b c",)}, "is not Key=Value"),
    ("golden", {"ssh_options": ("A='x'",)}, "is not Key=Value"),
    ("golden", {"ssh_key": "/no/such/key"}, "SSH key /no/such/key not found"),
    ("golden", {"ssh_key": "/a key"}, "has spaces"),
    ("golden", {"secret_file": "/s"}, "--secret-file is for rsync:// sources"),
    ("rsync://golden/mod", {}, "needs --secret-file"),
    ("rsync://golden/a/b", {"secret_file": "/s"}, "rsync module 'a/b' is not valid"),
    ("rsync://golden/m", {"secret_file": "/s", "ssh_key": "/k"}, "are for SSH sources"),
    ("/no/such/dir", {}, "is not a directory"),
    ("rsync://golden/m", {"secret_file": "/s", "rsync_path": "sudo rsync"},
     "--rsync-path is for SSH sources"),
    ("/srv/old", {"rsync_path": "sudo rsync"}, "--rsync-path is for SSH sources"),
])
def test_bad_sources(text, kw, says):
    with pytest.raises(ConfigError, match=None) as e:
        parse_source(text, **kw)
    assert says in str(e.value)


def test_secret_file(tmp_path):
    p = tmp_path / "s"
    p.write_text("  abc123XYZ \n")
    assert read_secret(p) == "abc123XYZ"
    p.write_text("two words\n")
    with pytest.raises(ConfigError, match="does not hold one secret"):
        read_secret(p)
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        read_secret(tmp_path / "missing")
    assert isinstance(parse_source("rsync://h/m", secret_file=str(p)).secret_file, Path)


def test_one_ssh_connection_for_probe_and_rsync():
    from dataclasses import replace

    s = replace(parse_source("root@golden"), control_path="/tmp/x/%C")
    master, reuse = s.ssh_argv(master=True), s.ssh_argv()
    assert "ControlMaster=yes" in master and "ControlPersist=120" in master
    assert "ControlMaster=no" in reuse and "ControlPath=/tmp/x/%C" in reuse
    assert s.rsync_shell() == " ".join(reuse)
    assert "ControlPath" not in " ".join(parse_source("root@golden").ssh_argv(master=True))
