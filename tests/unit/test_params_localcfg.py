"""local.cfg: VARIABLE=value files, shell style."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

import pytest

from agent.params import (
    DlProtocol,
    HostPort,
    PostAction,
    Source,
    parse_local_cfg,
    read_local_cfg,
)
from agent.storage.diskspec import DiskPath
from sysclone.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data" / "params"


def values(layer) -> dict:
    return {name: layer.value(name) for name in layer.settings}


def test_compat_template_is_all_comments(compat):
    layer = read_local_cfg(compat / "local.cfg")
    assert values(layer) == {}
    assert layer.warnings == ()
    assert layer.name == f"local.cfg at {compat / 'local.cfg'}"
    assert layer.source is Source.LOCAL_CFG_INITRD


def test_compat_template_uncommented_reads_every_documented_variable(compat):
    # Uncomment every "#VARIABLE=value" line of the real template.
    lines = []
    for line in (compat / "local.cfg").read_text().splitlines():
        m = re.fullmatch(r"#([A-Z_]+=\S+)( \(.*\))?", line)
        lines.append(m.group(1) if m else line)
    layer = parse_local_cfg("\n".join(lines), name="uncommented template")
    got = values(layer)
    assert got["si.hostname"] == "www1"
    assert got["si.domainname"] == "systemimager.org"
    assert got["si.image-server"] == HostPort("10.0.0.3")
    assert got["si.script-name"] == "compute_node"
    assert got["si.image-name"] == "oracle_db_server-1.0"
    assert got["si.ether-sleep"] == 35
    assert got["si.log-server"] == "10.0.0.3"
    assert got["si.log-server-port"] == 514
    assert got["si.tmpfs-staging"] is False
    assert got["si.install-iface"] == "eth0"
    assert got["si.ip-address"] == ipaddress.ip_address("10.0.0.99")
    assert got["si.netmask"] == 24
    assert got["si.network-address"] == ipaddress.ip_address("10.0.0.0")
    assert got["si.broadcast"] == ipaddress.ip_address("10.0.0.255")
    assert got["si.gateway"] == ipaddress.ip_address("10.0.0.1")
    assert got["si.gateway-iface"] == "eth0"
    assert got["si.flamethrower-directory-portbase"] == 9000
    assert got["si.dl-protocol"] is DlProtocol.TORRENT  # BITTORRENT=y
    assert got["si.monitor-server"] == "10.0.0.3"
    assert got["si.monitor-console"] is True
    # The BitTorrent tuning variables are not install parameters of sysclone.
    unknown = sorted(re.search(r"unknown parameter (\w+)", w).group(1)  # type: ignore[union-attr]
                     for w in layer.warnings)
    assert unknown == ["BITTORRENT_POLLING_TIME", "BITTORRENT_SEED_WAIT",
                       "BITTORRENT_STAGING", "BITTORRENT_UPLOAD_MIN"]


def test_filled_in_local_cfg():
    path = DATA / "local.cfg"
    layer = read_local_cfg(path, source=Source.LOCAL_CFG_MEDIUM)
    assert layer.source is Source.LOCAL_CFG_MEDIUM
    assert values(layer) == {
        "si.hostname": "server7",
        "si.domainname": "mydomain.com",
        "si.install-iface": "eth0",
        "si.ip-address": ipaddress.ip_address("192.168.1.7"),
        "si.netmask": 24,
        "si.network-address": ipaddress.ip_address("192.168.1.0"),
        "si.broadcast": ipaddress.ip_address("192.168.1.255"),
        "si.gateway": ipaddress.ip_address("192.168.1.254"),
        "si.gateway-iface": "eth0",  # $DEVICE
        "si.image-server": HostPort("192.168.1.203"),
        "si.image-name": "oracle_db_server-1.0",
        "si.ether-sleep": 35,
        "si.log-server": "192.168.1.203",
        "si.log-server-port": 514,
        "si.tmpfs-staging": False,
        "si.monitor-server": "192.168.1.203",
        "si.monitor-console": True,
        "si.script-name": "compute_node",  # the second assignment wins
    }
    server = layer.get("si.image-server")
    assert server is not None
    assert server.describe() == f"local.cfg at {path}, line 14 (as IMAGESERVER)"
    # Upper-case names are native in local.cfg: no deprecation warnings.
    assert layer.warnings == (
        f"local.cfg at {path}, line 32: unknown parameter BITTORRENT_STAGING ignored",)


def test_bad_value_names_variable_file_and_line():
    path = DATA / "local-bad-value.cfg"
    with pytest.raises(ConfigError) as e:
        read_local_cfg(path)
    assert e.value.message == (f"ETHER_SLEEP (si.ether-sleep): '35s' is not a whole number "
                               f"(local.cfg at {path}, line 3)")
    assert e.value.fields["source"] == f"local.cfg at {path}, line 3"


def test_line_that_is_not_an_assignment():
    path = DATA / "local-not-assignment.cfg"
    with pytest.raises(ConfigError, match=re.escape(
            f"local.cfg at {path}, line 2: expected VARIABLE=value, got 'echo \"this is not")):
        read_local_cfg(path)


def test_missing_file():
    missing = "/nonexistent/local.cfg"
    with pytest.raises(ConfigError, match=re.escape(f"cannot read local.cfg at {missing}")):
        read_local_cfg(missing)


@pytest.mark.parametrize(("text", "name", "expected"), [
    ("IMAGENAME=web", "si.image-name", "web"),
    ("export IMAGENAME=web", "si.image-name", "web"),
    ("  export   IMAGENAME=web  ", "si.image-name", "web"),
    ('IMAGENAME="web"', "si.image-name", "web"),
    ("IMAGENAME='web'", "si.image-name", "web"),
    ("IMAGENAME=web # the web servers", "si.image-name", "web"),
    ("IMAGENAME=we'b'", "si.image-name", "web"),
    ("SI_TERM=x\nTERM='xterm $SI_TERM'", "si.term", "xterm $SI_TERM"),
    ('SUFFIX=2\nIMAGENAME="web$SUFFIX"', "si.image-name", "web2"),
    ("SUFFIX=2\nIMAGENAME=web${SUFFIX}b", "si.image-name", "web2b"),
    ('TERM="say \\"hi\\" \\$x"', "si.term", 'say "hi" $x'),
    ("TERM=a\\ b", "si.term", "a b"),
    ("IMAGENAME=web\r\nSCRIPTNAME=x\r\n", "si.image-name", "web"),
    ("IMAGE_NAME=web", "si.image-name", "web"),  # derived variable name
    ("DL_PROTOCOL=nfs", "si.dl-protocol", DlProtocol.NFS),
    ("POST_ACTION=shell", "si.post-action", PostAction.SHELL),
    ("DRY_RUN=yes", "si.dry-run", True),
    ("DISK=sda,sdb", "si.disk", (DiskPath("/dev/sda"), DiskPath("/dev/sdb"))),
    ("si.post-action=kexec", "si.post-action", PostAction.KEXEC),  # canonical name
    ("IMAGENAME=web\nIMAGENAME=", "si.image-name", None),  # empty: unset
    ("BREAK=ping\nBREAK=deploy", "si.break", ("ping", "deploy")),
    ("export\nexport IMAGENAME\nIMAGENAME=web", "si.image-name", "web"),
])
def test_shell_syntax(text, name, expected):
    assert parse_local_cfg(text).value(name) == expected


def test_only_the_last_assignment_is_checked():
    layer = parse_local_cfg("ETHER_SLEEP=soon\nETHER_SLEEP=10")
    assert layer.value("si.ether-sleep") == 10


def test_undefined_variable_reference_warns():
    layer = parse_local_cfg("GATEWAYDEV=$DEVICE\nDEVICE=eth0", name="cfg")
    assert layer.value("si.gateway-iface") is None  # expanded to nothing: unset
    assert layer.warnings == ("cfg, line 1: $DEVICE is not set earlier in the file; "
                              "it was replaced by nothing",)


@pytest.mark.parametrize(("text", "problem"), [
    ("SCRIPTNAME=compute_node (useful in netboot environments)",
     "line 1: SCRIPTNAME: unexpected '(useful in netboot environments)' after the value"),
    ('IMAGENAME="web', "line 1: IMAGENAME: unterminated double quote"),
    ("IMAGENAME='web", "line 1: IMAGENAME: unterminated single quote"),
    ("IMAGENAME=$(hostname)", "line 1: IMAGENAME: command substitution $(...) is not supported"),
    ("IMAGENAME=`hostname`", "line 1: IMAGENAME: command substitution `...` is not supported"),
    ("IMAGENAME=web;reboot", "line 1: IMAGENAME: unexpected ';'"),
    # As in sh, '#' starts a comment only at the start of a word.
    ('IMAGENAME="web"# comment', "line 1: IMAGENAME: unexpected 'comment' after the value"),
    ("\n\nif true; then", "line 3: expected VARIABLE=value, got 'if true; then'"),
])
def test_syntax_errors(text, problem):
    with pytest.raises(ConfigError) as e:
        parse_local_cfg(text, name="local.cfg at /local.cfg")
    assert e.value.message.startswith(f"local.cfg at /local.cfg, {problem}")


def test_unknown_variables_only_warn():
    layer = parse_local_cfg("MY_SITE=paris\nIMAGESRVER=10.0.0.3", name="cfg")
    assert values(layer) == {}
    assert layer.warnings == (
        "cfg, line 1: unknown parameter MY_SITE ignored",
        "cfg, line 2: unknown parameter IMAGESRVER ignored; did you mean IMAGESERVER?",
    )


def test_unknown_si_names_are_errors():
    """A VARIABLE may be a site's own; an si. name can only be a typo."""
    with pytest.raises(ConfigError) as e:
        parse_local_cfg("IMAGESERVER=10.0.0.3\nsi.hostnme=www1\n", name="cfg")
    assert e.value.message == "si.hostnme: unknown install parameter (cfg, line 2)"
    assert e.value.hint == "did you mean si.hostname?"


def test_bad_bool_in_local_cfg():
    with pytest.raises(ConfigError, match=re.escape(
            "MONITOR_CONSOLE (si.monitor-console): 'sometimes' is not a boolean "
            "(use 1/0, y/n or yes/no) (local.cfg in the initrd, line 1)")):
        parse_local_cfg("MONITOR_CONSOLE=sometimes")


def test_server_config_as_a_variable_file():
    layer = parse_local_cfg("IMAGENAME=web", source=Source.SERVER)
    assert layer.name == "server config"
    assert layer.value("si.image-name") == "web"


def test_defaults_source_is_refused():
    with pytest.raises(ValueError):
        parse_local_cfg("", source=Source.DEFAULT)
