"""Merging layers: precedence, origins, DHCP, server config, skip-local-cfg, breaks."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from agent.params import (
    DlProtocol,
    HostPort,
    InstallParams,
    PostAction,
    Source,
    dhcp_layer,
    local_cfg_skipped,
    parse_cmdline,
    parse_local_cfg,
    resolve,
    server_layer,
)
from agent.storage.diskspec import DiskPath
from sysclone.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data" / "params"


def test_defaults():
    p = resolve([]).params
    assert p == InstallParams.defaults()
    assert p.image_server is None
    assert p.dl_protocol is DlProtocol.RSYNC
    assert p.post_action is PostAction.REBOOT
    assert p.monitor_port == 8181
    assert p.server_port == 8181
    assert p.rsync_port == 873
    assert p.log_server_port == 514
    assert p.ether_sleep == 0
    assert p.selinux_relabel is True
    assert p.debug is False and p.dry_run is False and p.skip_local_cfg is False
    assert p.breaks == () and p.disks == ()
    assert p.api_port == 8181
    assert p.static_ip is False


def test_params_are_frozen():
    p = InstallParams.defaults()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.debug = True  # type: ignore[misc]


# -- precedence ------------------------------------------------------------------------------------

def _layers() -> dict[Source, object]:
    return {
        Source.DHCP: dhcp_layer({140: "10.0.0.1"}),
        Source.CMDLINE: parse_cmdline("si.image-server=10.0.0.2"),
        Source.LOCAL_CFG_INITRD: parse_local_cfg("IMAGESERVER=10.0.0.3", name="initrd cfg"),
        Source.LOCAL_CFG_MEDIUM: parse_local_cfg("IMAGESERVER=10.0.0.5",
                                                 source=Source.LOCAL_CFG_MEDIUM,
                                                 name="medium cfg"),
        Source.SERVER: server_layer({"si.image-server": "10.0.0.6"}),
    }


@pytest.mark.parametrize(("upto", "host", "origin"), [
    (Source.DHCP, "10.0.0.1", "DHCP, option 140"),
    (Source.CMDLINE, "10.0.0.2", "kernel command line"),
    (Source.LOCAL_CFG_INITRD, "10.0.0.3", "initrd cfg, line 1 (as IMAGESERVER)"),
    (Source.LOCAL_CFG_MEDIUM, "10.0.0.5", "medium cfg, line 1 (as IMAGESERVER)"),
    (Source.SERVER, "10.0.0.6", "server config"),
])
def test_each_source_overrides_the_lower_ones(upto, host, origin):
    layers = [layer for source, layer in _layers().items() if source <= upto]
    # The order given does not matter: layers are sorted by their source.
    resolved = resolve(reversed(layers))  # type: ignore[arg-type]
    assert resolved.params.image_server == HostPort(host)
    assert resolved.origin("si.image-server") == origin
    assert [s.value.host for s in resolved.shadowed["si.image-server"]] == [
        f"10.0.0.{i}" for i in (1, 2, 3, 5) if i < int(host[-1])]


def test_same_source_layers_keep_their_given_order():
    a = parse_cmdline("si.image-name=a", name="etc/cmdline.d")
    b = parse_cmdline("si.image-name=b")
    assert resolve([a, b]).params.image_name == "b"
    assert resolve([b, a]).params.image_name == "a"


def test_value_from_a_lower_layer_shows_through():
    resolved = resolve([parse_cmdline("si.image-name=web"),
                        parse_local_cfg("IMAGESERVER=10.0.0.3")])
    assert resolved.params.image_name == "web"
    assert resolved.params.image_server == HostPort("10.0.0.3")
    assert resolved.origin("si.post-action") == "default"
    assert resolved.origin("si.hostname") == "unset"


def test_breaks_add_up_across_layers_without_duplicates():
    resolved = resolve([
        parse_cmdline("si.break=ping si.break=deploy"),
        parse_local_cfg("BREAK=deploy"),
        server_layer({"si.break": ["post-install"]}),
    ])
    assert resolved.params.breaks == ("ping", "deploy", "post-install")
    assert resolved.params.breaks_at("deploy")
    assert resolved.origin("si.break") == "kernel command line; server config"


# -- si.skip-local-cfg -----------------------------------------------------------------------------

def test_skip_local_cfg_drops_the_local_cfg_layers():
    cmdline = parse_cmdline("si.skip-local-cfg si.image-name=web")
    initrd = parse_local_cfg("IMAGENAME=other\nHOSTNAME=node1", name="initrd cfg")
    disk = parse_local_cfg("HOSTNAME=node2", source=Source.LOCAL_CFG_MEDIUM, name="disk cfg")
    assert local_cfg_skipped([cmdline]) is True
    resolved = resolve([cmdline, initrd, disk])
    assert resolved.params.image_name == "web"
    assert resolved.params.hostname is None
    assert resolved.params.skip_local_cfg is True
    assert resolved.skipped == (initrd, disk)
    assert "skipped: initrd cfg (si.skip-local-cfg is set)" in resolved.explain()


def test_skip_local_cfg_off_by_default_and_by_a_later_word():
    assert local_cfg_skipped([]) is False
    assert local_cfg_skipped([parse_cmdline("SKIP_LOCAL_CFG=y si.skip-local-cfg=0")]) is False


def test_skip_local_cfg_inside_a_local_cfg_or_server_config_has_no_effect():
    local = parse_local_cfg("SKIP_LOCAL_CFG=y\nHOSTNAME=node1", name="cfg")
    server = server_layer({"si.skip-local-cfg": True})
    assert local_cfg_skipped([local, server]) is False
    resolved = resolve([local, server])
    assert resolved.params.hostname == "node1"
    assert resolved.params.skip_local_cfg is False
    assert resolved.warnings == (
        "cfg, line 1: SKIP_LOCAL_CFG has no effect here; "
        "set si.skip-local-cfg on the kernel command line",
        "server config: si.skip-local-cfg has no effect here; "
        "set si.skip-local-cfg on the kernel command line",
    )


# -- DHCP ------------------------------------------------------------------------------------------

def test_dhcp_options_140_to_143():
    layer = dhcp_layer({140: "10.0.0.3", 141: "1514", 142: "http://10.0.0.3/ssh/",
                        143: '"9000"', 1: "255.255.255.0", 66: "tftp"})
    assert layer.source is Source.DHCP
    assert layer.value("si.image-server") == HostPort("10.0.0.3")
    assert layer.value("si.log-server-port") == 1514
    assert layer.value("si.ssh-download-url") == "http://10.0.0.3/ssh/"
    assert layer.value("si.flamethrower-directory-portbase") == 9000
    assert set(layer.settings) == {"si.image-server", "si.log-server-port",
                                   "si.ssh-download-url", "si.flamethrower-directory-portbase"}
    assert layer.warnings == ()


def test_dhcp_standard_options_and_raw_forms():
    layer = dhcp_layer({"12": b"node7\x00", 15: "cluster.example.org", 7: "10.0.0.8 10.0.0.9",
                        144: "yes", 140: None})
    assert layer.value("si.hostname") == "node7"
    assert layer.value("si.domainname") == "cluster.example.org"
    assert layer.value("si.log-server") == "10.0.0.8"
    assert layer.value("si.tmpfs-staging") is True
    assert "si.image-server" not in layer


def test_dhcp_placeholder_host_name_is_ignored():
    assert "si.hostname" not in dhcp_layer({12: "(none)"})
    assert "si.hostname" not in dhcp_layer({12: "localhost"})


def test_dhcp_option_100_is_a_deprecated_fallback():
    layer = dhcp_layer({100: "10.0.0.9"})
    assert layer.value("si.image-server") == HostPort("10.0.0.9")
    assert layer.warnings == ("DHCP: option 100 is deprecated for si.image-server; "
                              "use option 140",)
    assert dhcp_layer({100: "10.0.0.9", 140: "10.0.0.3"}).value("si.image-server") == HostPort(
        "10.0.0.3")


def test_dhcp_bad_value_names_the_option():
    with pytest.raises(ConfigError) as e:
        dhcp_layer({141: "syslog"})
    assert e.value.message == ("si.log-server-port: 'syslog' is not a port number "
                               "(1-65535) (DHCP, option 141)")


def test_dhcp_is_below_the_command_line():
    resolved = resolve([parse_cmdline("LOG_SERVER_PORT=2514"), dhcp_layer({141: "1514"})])
    assert resolved.params.log_server_port == 2514
    assert "overrides 1514 from DHCP, option 141" in resolved.explain()


# -- protocol --------------------------------------------------------------------------------------

def test_ssh_download_url_implies_ssh_protocol():
    resolved = resolve([dhcp_layer({142: "http://10.0.0.3/ssh"})])
    assert resolved.params.dl_protocol is DlProtocol.SSH
    assert resolved.origin("si.dl-protocol") == (
        "DHCP, option 142, implied by si.ssh-download-url")


def test_flamethrower_port_base_implies_flamethrower():
    resolved = resolve([parse_cmdline("si.flamethrower-directory-portbase=9000")])
    assert resolved.params.dl_protocol is DlProtocol.FLAMETHROWER
    assert resolved.origin("si.dl-protocol") == (
        "kernel command line, implied by si.flamethrower-directory-portbase")


def test_explicit_protocol_beats_the_implication():
    resolved = resolve([dhcp_layer({142: "http://10.0.0.3/ssh"}),
                        parse_cmdline("si.dl-protocol=rsync")])
    assert resolved.params.dl_protocol is DlProtocol.RSYNC
    assert resolved.require_supported_protocol() is DlProtocol.RSYNC


def test_only_rsync_is_supported_for_now():
    assert DlProtocol.RSYNC.implemented
    assert not any(p.implemented for p in DlProtocol if p is not DlProtocol.RSYNC)
    resolved = resolve([parse_cmdline("si.dl-protocol=torrent")])
    assert resolved.params.dl_protocol is DlProtocol.TORRENT  # accepted when parsing
    with pytest.raises(ConfigError) as e:
        resolved.require_supported_protocol()
    assert e.value.message == ("si.dl-protocol: 'torrent' is not implemented by sysclone yet "
                               "(supported: rsync) (kernel command line)")
    assert e.value.hint == "boot with si.dl-protocol=rsync"


# -- si.break steps --------------------------------------------------------------------------------

def test_break_steps_of_4_9_are_valid():
    assert resolve([parse_cmdline("si.break=prepare-disks,boot-loader")]).params.breaks == (
        "prepare-disks", "boot-loader")


def test_unknown_break_step_is_an_error_at_resolve_time():
    layer = parse_cmdline("si.break=deplyo")  # parsing accepts any well-formed name
    with pytest.raises(ConfigError) as e:
        resolve([layer])
    assert e.value.message == ("si.break: 'deplyo' is not a step of the install "
                               "(kernel command line)")
    assert e.value.hint == "did you mean 'deploy'?"


def test_caller_adds_its_own_step_names():
    layer = parse_local_cfg("BREAK=partition", name="cfg")
    with pytest.raises(ConfigError, match=re.escape(
            "BREAK (si.break): 'partition' is not a step of the install (cfg, line 1)")):
        resolve([layer])
    resolved = resolve([layer], break_steps={"partition", "format"})
    assert resolved.params.breaks == ("partition",)


# -- server config ---------------------------------------------------------------------------------

def test_server_config_from_json():
    data = json.loads((DATA / "server-config.json").read_text())
    layer = server_layer(data)
    resolved = resolve([parse_cmdline("si.image-name=web si.post-action=shell si.break=ping "
                                      "MONITOR_CONSOLE=no si.ssh-user=root"), layer])
    p = resolved.params
    assert p.image_name == "compute-2024"
    assert p.post_action is PostAction.POWEROFF
    assert p.breaks == ("ping", "deploy")
    assert p.disks == (DiskPath("/dev/sda"), DiskPath("/dev/nvme0n1"))
    assert p.monitor_console is True
    assert p.monitor_port == 9191
    assert p.ssh_user == "root"  # null in the server config: not set there
    assert resolved.origin("si.monitor-console") == "server config (as MONITOR_CONSOLE)"
    assert layer.warnings == ("server config: unknown parameter x-comment ignored",)


@pytest.mark.parametrize(("key", "message"), [
    ("si.imagename", "si.imagename: unknown install parameter (server config)"),
    ("rd.sis.zzz", "rd.sis.zzz: unknown install parameter (server config)"),
    ("sysclone.bench", "sysclone.bench: unknown parameter (server config)"),
])
def test_unknown_names_in_our_namespaces_are_errors_in_a_server_config(key, message):
    with pytest.raises(ConfigError) as e:
        server_layer({"IMAGENAME": "web", key: "x"})
    assert e.value.message == message


@pytest.mark.parametrize(("data", "message"), [
    ({"si.post-action": "rebot"},
     "si.post-action: 'rebot' is not one of directboot, reboot, shutdown, poweroff, kexec, "
     "shell (server config)"),
    ({"si.image-name": ["a", "b"]},
     "si.image-name: \"['a', 'b']\" is a list, expected a single value (server config)"),
    ({"si.monitor-port": 81.5}, "si.monitor-port: '81.5' is a float, expected text "
                                "(server config)"),
    ({"si.debug": "sometimes"}, "si.debug: 'sometimes' is not a boolean"),
])
def test_server_config_bad_values(data, message):
    with pytest.raises(ConfigError) as e:
        server_layer(data)
    assert e.value.message.startswith(message)


def test_server_config_typed_values():
    layer = server_layer({"si.debug": False, "si.rsync-port": 10873, "si.disk": "sdb",
                          "SCRIPTNAME": "compute", "DL_PROTOCOL": "rsync"})
    assert layer.value("si.debug") is False
    assert layer.value("si.rsync-port") == 10873
    assert layer.value("si.disk") == (DiskPath("/dev/sdb"),)
    assert layer.value("si.script-name") == "compute"
    assert layer.value("si.dl-protocol") is DlProtocol.RSYNC


# -- derived values, explain, reports --------------------------------------------------------------

def test_api_port_from_the_image_server_or_server_port():
    assert resolve([parse_cmdline("si.image-server=h:9000 si.server-port=8000")]).params.api_port \
        == 9000
    assert resolve([parse_cmdline("si.image-server=h si.server-port=8000")]).params.api_port \
        == 8000


def test_explain_lists_values_and_origins():
    resolved = resolve([
        dhcp_layer({140: "10.0.0.1"}),
        parse_cmdline("si.image-server=10.0.0.2 si.break=ping IMAGENAME=web "
                      "SCRIPTNAME=base"),
        parse_local_cfg("IMAGENAM=x"),
        server_layer({"si.break": "deploy"}),
    ])
    text = resolved.explain()
    lines = text.splitlines()
    assert lines[0] == ("Install parameters (precedence, lowest first: default < DHCP < "
                        "kernel command line < local.cfg in the initrd < local.cfg on the "
                        "boot medium < server config)")
    assert re.search(r"^  si\.image-server +10\.0\.0\.2 +kernel command line; overrides "
                     r"10\.0\.0\.1 from DHCP, option 140$", text, re.M)
    assert re.search(r"^  si\.image-name +web +kernel command line \(as IMAGENAME\)$", text, re.M)
    assert re.search(r"^  si\.post-action +reboot +default$", text, re.M)
    assert re.search(r"^  si\.break +ping +kernel command line\n +deploy +server config$",
                     text, re.M)
    assert "warning: kernel command line: SCRIPTNAME is a deprecated name for si.script-name" \
        in lines
    assert not any("IMAGENAME is a deprecated" in line for line in lines)
    assert ("warning: local.cfg in the initrd, line 1: unknown parameter IMAGENAM ignored; "
            "did you mean IMAGENAME?") in lines
    assert "si.hostname" not in text
    quiet = resolved.explain(show_defaults=False, show_unset=True)
    assert "si.post-action" not in quiet
    assert re.search(r"^  si\.hostname +- +unset$", quiet, re.M)


def test_reports_are_json():
    resolved = resolve([parse_cmdline("si.image-server=10.0.0.2:8181 si.netmask=24 "
                                      "si.ip-address=10.0.0.5 si.disk=sda "
                                      "si.dns-servers=10.0.0.1,9.9.9.9")])
    report = json.loads(json.dumps(resolved.to_dict()))
    assert report["si.image-server"] == {"value": "10.0.0.2:8181",
                                         "from": "kernel command line"}
    assert report["si.ip-address"]["value"] == "10.0.0.5"
    assert report["si.netmask"]["value"] == 24
    assert report["si.dns-servers"]["value"] == ["10.0.0.1", "9.9.9.9"]
    assert report["si.disk"]["value"] == ["/dev/sda"]
    assert report["si.post-action"] == {"value": "reboot", "from": "default"}
    assert report["si.hostname"] == {"value": None, "from": "unset"}
    assert resolved.params.static_ip


def test_full_agent_flow():
    """The order the agent works in: command line, DHCP, local.cfg, server."""
    cmdline = parse_cmdline("BOOT_IMAGE=vmlinuz si.dry-run si.break=deploy console=ttyS0")
    dhcp = dhcp_layer({140: "10.0.0.3:8181", 12: "node07"})
    layers = [cmdline, dhcp]
    assert not local_cfg_skipped(layers)
    layers.append(parse_local_cfg((DATA / "local.cfg").read_text(), name="local.cfg"))
    layers.append(server_layer({"si.image-name": "compute"}))
    resolved = resolve(layers, break_steps={"partition"})
    p = resolved.params
    assert p.dry_run is True
    assert p.image_server == HostPort("192.168.1.203")  # local.cfg beats DHCP
    assert p.hostname == "server7"
    assert p.image_name == "compute"
    assert p.breaks == ("deploy",)
    assert p.ether_sleep == 35
