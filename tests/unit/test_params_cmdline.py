"""Kernel command line: words, quoting, aliases, flags, bad values."""

from __future__ import annotations

import ipaddress
import re

import pytest

from agent.params import (
    DlProtocol,
    HostPort,
    PostAction,
    Source,
    parse_cmdline,
    parse_local_cfg,
    read_cmdline,
    split_cmdline,
)
from agent.storage.diskspec import DiskPath
from sysclone.errors import ConfigError


def value(cmdline: str, name: str):
    return parse_cmdline(cmdline).value(name)


# -- words -----------------------------------------------------------------------------------------

def test_split_plain_words_and_any_white_space():
    assert split_cmdline("  ro\tquiet\n si.debug  ") == ["ro", "quiet", "si.debug"]


def test_split_removes_double_quotes_around_values_and_whole_words():
    assert split_cmdline('a="x y" "b=z w" c') == ["a=x y", "b=z w", "c"]


def test_split_quotes_in_the_middle_of_a_value():
    assert split_cmdline('a=x"y z"w') == ["a=xy zw"]


def test_split_stops_at_double_dash_the_rest_is_for_init():
    assert split_cmdline("si.debug -- si.dry-run single") == ["si.debug"]


def test_split_quoted_double_dash_is_a_word():
    assert split_cmdline('a "--" b -- c') == ["a", "--", "b"]


def test_split_keeps_empty_quoted_value():
    assert split_cmdline('a="" b') == ["a=", "b"]


# -- non-si words ----------------------------------------------------------------------------------

def test_other_kernel_words_are_ignored_silently():
    layer = parse_cmdline(
        "BOOT_IMAGE=/vmlinuz initrd=initrd.img console=ttyS0,115200 root=/dev/ram "
        "vga=extended rd.break=pre-mount ip=dhcp BOOTIF=01-52-54-00-12-34-56 quiet")
    assert dict(layer.settings) == {}
    assert layer.warnings == ()
    assert layer.source is Source.CMDLINE
    assert layer.name == "kernel command line"


@pytest.mark.parametrize("word", ["imageserver=10.0.0.3", "ImageServer=10.0.0.3",
                                  "IMAGE_SERVER=10.0.0.3", "image-server=10.0.0.3",
                                  "Si.debug", "SI.debug"])
def test_legacy_names_only_exactly_as_spelled(word):
    layer = parse_cmdline(word)
    assert dict(layer.settings) == {}
    assert layer.warnings == ()


# -- values ----------------------------------------------------------------------------------------

def test_canonical_names_give_typed_values():
    layer = parse_cmdline(
        "si.image-server=10.0.0.3 si.image-name=rhel9_compute si.script-name=compute "
        "si.disks-layout=two-disks.xml si.network-config=bonded si.install-iface=eno1 "
        "si.dl-protocol=nfs si.monitor-server=mon.example.org si.monitor-port=9000 "
        "si.log-server=10.0.0.4 si.log-server-port=1514 si.post-action=poweroff "
        "si.rsync-port=8873 si.server-port=8080 si.ether-sleep=35 si.term=vt100")
    assert layer.value("si.image-server") == HostPort("10.0.0.3")
    assert layer.value("si.image-name") == "rhel9_compute"
    assert layer.value("si.script-name") == "compute"
    assert layer.value("si.disks-layout") == "two-disks.xml"
    assert layer.value("si.network-config") == "bonded"
    assert layer.value("si.install-iface") == "eno1"
    assert layer.value("si.dl-protocol") is DlProtocol.NFS
    assert layer.value("si.monitor-server") == "mon.example.org"
    assert layer.value("si.monitor-port") == 9000
    assert layer.value("si.log-server") == "10.0.0.4"
    assert layer.value("si.log-server-port") == 1514
    assert layer.value("si.post-action") is PostAction.POWEROFF
    assert layer.value("si.rsync-port") == 8873
    assert layer.value("si.server-port") == 8080
    assert layer.value("si.ether-sleep") == 35
    assert layer.value("si.term") == "vt100"
    assert layer.warnings == ()


def test_static_network_names():
    layer = parse_cmdline("si.ip-address=10.0.0.99 si.netmask=255.255.255.0 "
                          "si.network-address=10.0.0.0 si.broadcast=10.0.0.255 "
                          "si.gateway=10.0.0.1 si.gateway-iface=eth0 si.hostname=www1 "
                          "si.domainname=example.org")
    assert layer.value("si.ip-address") == ipaddress.ip_address("10.0.0.99")
    assert layer.value("si.netmask") == 24
    assert layer.value("si.network-address") == ipaddress.ip_address("10.0.0.0")
    assert layer.value("si.broadcast") == ipaddress.ip_address("10.0.0.255")
    assert layer.value("si.gateway") == ipaddress.ip_address("10.0.0.1")
    assert layer.value("si.gateway-iface") == "eth0"
    assert layer.value("si.hostname") == "www1"
    assert layer.value("si.domainname") == "example.org"


@pytest.mark.parametrize(("raw", "expected"), [
    ("server", HostPort("server")),
    ("server:8000", HostPort("server", 8000)),
    ("10.0.0.3:873", HostPort("10.0.0.3", 873)),
    ("imageserver.example.org.", HostPort("imageserver.example.org.")),
])
def test_image_server_host_or_host_port(raw, expected):
    assert value(f"si.image-server={raw}", "si.image-server") == expected


IPV4_ONLY = "is an IPv6 address; the install network is IPv4 only (kernel command line)"


@pytest.mark.parametrize("word", [
    "si.image-server=fe80::1", "si.image-server=[fe80::1]", "si.image-server=[2001:db8::1]:8181",
    "si.monitor-server=2001:db8::2", "si.log-server=[2001:db8::3]", "si.ip-address=2001:db8::5",
    "si.gateway=fe80::1", "si.network-address=2001:db8::", "si.broadcast=[ff02::1]",
    "si.dns-servers=10.0.0.1,2001:4860:4860::8888",
])
def test_ipv6_is_refused_when_parsed(word):
    """The install network is IPv4 only: an IPv6 value stops at the parser
    with the reason, not deep in the network code."""
    with pytest.raises(ConfigError) as e:
        parse_cmdline(word)
    name, _, raw = word.partition("=")
    if "," in raw:  # a list names the item
        assert e.value.message == (f"{name}: {raw!r} has '2001:4860:4860::8888', which "
                                   f"{IPV4_ONLY}")
    else:
        assert e.value.message == f"{name}: {raw!r} {IPV4_ONLY}"


def test_dns_servers_are_a_list_of_ipv4_addresses():
    assert value("si.dns-servers=10.0.0.1,9.9.9.9", "si.dns-servers") == (
        ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("9.9.9.9"))
    layer = parse_local_cfg("DNS_SERVERS=10.0.0.1")
    assert layer.value("si.dns-servers") == (ipaddress.ip_address("10.0.0.1"),)


def test_host_port_prints_back():
    assert str(HostPort("2001:db8::1", 8181)) == "[2001:db8::1]:8181"
    assert str(HostPort("server", 8000)) == "server:8000"


@pytest.mark.parametrize(("raw", "prefix"), [
    ("255.255.255.0", 24), ("255.255.0.0", 16), ("255.255.255.252", 30), ("0.0.0.0", 0),
    ("24", 24), ("/16", 16), ("32", 32),
])
def test_netmask_dotted_or_prefix(raw, prefix):
    assert value(f"NETMASK={raw}", "si.netmask") == prefix


def test_disk_list_normalized_to_dev_paths():
    layer = parse_cmdline('si.disk="sda, nvme0n1" ')
    assert layer.value("si.disk") == (DiskPath("/dev/sda"), DiskPath("/dev/nvme0n1"))
    assert value("si.disk=/dev/disk/by-id/wwn-0x5000", "si.disk") == (
        DiskPath("/dev/disk/by-id/wwn-0x5000"),)


def test_quoted_value_keeps_its_spaces():
    assert value('si.term="xterm color"', "si.term") == "xterm color"


def test_enum_is_case_insensitive():
    assert value("si.post-action=PowerOff", "si.post-action") is PostAction.POWEROFF


# -- last wins, repeatables ------------------------------------------------------------------------

def test_last_occurrence_wins():
    assert value("si.image-name=a si.image-name=b", "si.image-name") == "b"


def test_last_occurrence_wins_across_alias_and_canonical_name():
    assert value("IMAGENAME=a si.image-name=b", "si.image-name") == "b"
    layer = parse_cmdline("si.image-name=b IMAGENAME=a")
    assert layer.value("si.image-name") == "a"
    setting = layer.get("si.image-name")
    assert setting is not None and setting.key == "IMAGENAME"


def test_overridden_bad_value_is_not_checked():
    # A boot menu's typo can be fixed by appending at the boot prompt.
    assert value("si.post-action=rebot si.post-action=shell", "si.post-action") is PostAction.SHELL


def test_break_is_repeatable_and_takes_commas():
    layer = parse_cmdline("si.break=ping si.debug si.break=deploy,monitor")
    assert layer.value("si.break") == ("ping", "deploy", "monitor")


def test_empty_value_unsets():
    assert value("si.image-name=", "si.image-name") is None
    assert value("si.image-name=a si.image-name=", "si.image-name") is None
    assert value('si.image-name=""', "si.image-name") is None


def test_empty_repeatable_adds_nothing():
    assert value("si.break=ping si.break=", "si.break") == ("ping",)


def test_double_dash_ends_the_parameters():
    layer = parse_cmdline("si.debug -- si.dry-run")
    assert layer.value("si.debug") is True
    assert "si.dry-run" not in layer


# -- booleans --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("word", "expected"), [
    ("si.debug", True), ("si.debug=", True), ("si.debug=1", True), ("si.debug=y", True),
    ("si.debug=yes", True), ("si.debug=YES", True), ("si.debug=Y", True),
    ("si.debug=true", True), ("si.debug=on", True),
    ("si.debug=0", False), ("si.debug=n", False), ("si.debug=no", False),
    ("si.debug=No", False), ("si.debug=false", False), ("si.debug=off", False),
])
def test_booleans(word, expected):
    assert value(word, "si.debug") is expected


def test_bare_legacy_flag():
    layer = parse_cmdline("MONITOR_CONSOLE SSH SSHD SKIP_LOCAL_CFG")
    assert layer.value("si.monitor-console") is True
    assert layer.value("si.ssh-client") is True
    assert layer.value("si.ssh-server") is True
    assert layer.value("si.skip-local-cfg") is True


def test_bittorrent_switch_selects_the_torrent_protocol():
    assert value("BITTORRENT=y", "si.dl-protocol") is DlProtocol.TORRENT
    assert value("BITTORRENT=n", "si.dl-protocol") is None


# -- aliases and warnings --------------------------------------------------------------------------

@pytest.mark.parametrize(("word", "name", "expected"), [
    ("IMAGESERVER=10.0.0.3", "si.image-server", HostPort("10.0.0.3")),
    ("IMAGENAME=web", "si.image-name", "web"),
    ("SCRIPTNAME=compute", "si.script-name", "compute"),
    ("DISKS_LAYOUT=raid1", "si.disks-layout", "raid1"),
    ("MONITOR_SERVER=172.16.36.1", "si.monitor-server", "172.16.36.1"),
    ("MONITOR_CONSOLE=yes", "si.monitor-console", True),
    ("SSH=y", "si.ssh-client", True),
    ("SSH_DOWNLOAD_URL=http://10.0.0.3/ssh", "si.ssh-download-url", "http://10.0.0.3/ssh"),
    ("SSHD=y", "si.ssh-server", True),
    ("SSH_USER=deploy", "si.ssh-user", "deploy"),
    ("HOSTNAME=www1", "si.hostname", "www1"),
    ("DOMAINNAME=example.org", "si.domainname", "example.org"),
    ("DEVICE=eth1", "si.install-iface", "eth1"),
    ("IPADDR=10.0.0.99", "si.ip-address", ipaddress.ip_address("10.0.0.99")),
    ("NETWORK=10.0.0.0", "si.network-address", ipaddress.ip_address("10.0.0.0")),
    ("BROADCAST=10.0.0.255", "si.broadcast", ipaddress.ip_address("10.0.0.255")),
    ("GATEWAY=10.0.0.1", "si.gateway", ipaddress.ip_address("10.0.0.1")),
    ("GATEWAYDEV=eth0", "si.gateway-iface", "eth0"),
    ("ETHER_SLEEP=35", "si.ether-sleep", 35),
    ("LOG_SERVER=10.0.0.3", "si.log-server", "10.0.0.3"),
    ("LOG_SERVER_PORT=514", "si.log-server-port", 514),
    ("TMPFS_STAGING=no", "si.tmpfs-staging", False),
    ("FLAMETHROWER_DIRECTORY_PORTBASE=9000", "si.flamethrower-directory-portbase", 9000),
    ("rd.sis.image-name=web", "si.image-name", "web"),
    ("rd.sis.monitor-console", "si.monitor-console", True),
])
def test_legacy_aliases(word, name, expected):
    layer = parse_cmdline(word)
    assert layer.value(name) == expected
    key = word.split("=")[0]
    if key in DOCUMENTED:
        assert layer.warnings == ()
    else:
        assert layer.warnings == (
            f"kernel command line: {key} is a deprecated name for {name}",)


# sysclone documents these 4.3 names as first-class: no deprecation warning.
DOCUMENTED = {"IMAGESERVER", "IMAGENAME", "HOSTNAME"}


@pytest.mark.parametrize(("line", "message", "hint"), [
    ("si.image-server=10.0.0.3 si.hostnme=www1", "si.hostnme: unknown install parameter "
     "(kernel command line)", "did you mean si.hostname?"),
    ("si.imagename=web", "si.imagename: unknown install parameter (kernel command line)",
     "did you mean si.image-name?"),
    ("si.frobnicate", "si.frobnicate: unknown install parameter (kernel command line)",
     "'sysclone params' lists them all"),
    ("rd.sis.zzz=1", "rd.sis.zzz: unknown install parameter (kernel command line)",
     "'sysclone params' lists them all"),
])
def test_unknown_si_name_is_an_error_with_a_suggestion(line, message, hint):
    """A typo in sysclone's namespace must not be silently ignored."""
    with pytest.raises(ConfigError) as e:
        parse_cmdline(line)
    assert (e.value.message, e.value.hint) == (message, hint)


@pytest.mark.parametrize("word", ["sysclone.bench=rsync", "sysclone.bench", "sysclone.x=1"])
def test_sysclone_words_are_refused(word):
    """The agent reads no sysclone.* parameters: the benchmark mode that hid
    behind sysclone.bench= is gone, and nothing may take its place quietly."""
    with pytest.raises(ConfigError) as e:
        parse_cmdline(f"console=ttyS0 {word} IMAGENAME=web")
    assert e.value.message == f"{word.split('=')[0]}: unknown parameter (kernel command line)"
    assert "install parameters are si.*" in (e.value.hint or "")


def test_other_words_belong_to_the_kernel_and_init():
    layer = parse_cmdline("console=ttyS0 quiet imageserver=x systemimager.x=1 BOOT_IMAGE=k")
    assert layer.settings == {} and layer.warnings == ()


def test_deprecation_warned_once_per_name():
    layer = parse_cmdline("SCRIPTNAME=a SCRIPTNAME=b")
    assert len(layer.warnings) == 1


def test_unbalanced_quote_warns_and_reads_to_the_end():
    layer = parse_cmdline('si.term="vt100 si.debug')
    assert layer.value("si.term") == "vt100 si.debug"
    assert "unbalanced double quote" in layer.warnings[0]


# -- bad values ------------------------------------------------------------------------------------

def test_bad_enum_names_parameter_choices_and_source():
    with pytest.raises(ConfigError) as e:
        parse_cmdline("console=ttyS0 si.post-action=rebot")
    assert e.value.message == ("si.post-action: 'rebot' is not one of directboot, reboot, "
                               "shutdown, poweroff, kexec, shell (kernel command line)")
    assert e.value.hint == "did you mean 'reboot'?"
    assert e.value.fields["parameter"] == "si.post-action"
    assert e.value.fields["source"] == "kernel command line"
    assert "\n" not in str(e.value)


def test_bad_value_under_a_legacy_name_names_both():
    with pytest.raises(ConfigError, match=re.escape(
            "IMAGESERVER (si.image-server): 'image server' is not a host name or IPv4 address, "
            "optionally with :port (kernel command line)")):
        parse_cmdline('IMAGESERVER="image server"')


@pytest.mark.parametrize(("word", "message"), [
    ("si.debug=maybe", "si.debug: 'maybe' is not a boolean (use 1/0, y/n or yes/no)"),
    ("si.monitor-port=99999", "si.monitor-port: '99999' is not a port number (1-65535)"),
    ("si.monitor-port=http", "si.monitor-port: 'http' is not a port number (1-65535)"),
    ("si.image-server=server:99999",
     "si.image-server: 'server:99999' has a bad port '99999' (1-65535)"),
    ("si.image-server=[fe80::1", "si.image-server: '[fe80::1' has an unclosed '['"),
    ("si.monitor-server=10.0.0",
     "si.monitor-server: '10.0.0' is not a host name or IPv4 address"),
    ("si.monitor-server=mon_1", "si.monitor-server: 'mon_1' is not a host name or IPv4 address"),
    ("si.ether-sleep=-1", "si.ether-sleep: '-1' is not between 0 and 3600"),
    ("ETHER_SLEEP=35s", "ETHER_SLEEP (si.ether-sleep): '35s' is not a whole number"),
    ("si.dl-protocol=ftp", "si.dl-protocol: 'ftp' is not one of rsync, nfs, torrent, "
                           "flamethrower, ssh, docker"),
    ("si.ip-address=10.0.0.256", "si.ip-address: '10.0.0.256' is not an IPv4 address"),
    ("NETMASK=255.0.255.0", "NETMASK (si.netmask): '255.0.255.0' is not a netmask: its "
                            "one-bits are not contiguous"),
    ("si.netmask=64", "si.netmask: '64' is not an IPv4 prefix length (0-32); the install "
                      "network is IPv4 only"),
    ("si.install-iface=averyveryverylongname", "si.install-iface: 'averyveryverylongname' is "
                                               "neither a network interface name"),
    # ':' is in no device name (the kernel refuses it), and this is no MAC.
    ("si.install-iface=zz:zz:zz", "si.install-iface: 'zz:zz:zz' is neither a network "
                                  "interface name"),
    ("DEVICE=52:54:00:12:34", "DEVICE (si.install-iface): '52:54:00:12:34' is neither"),
    ("si.image-name=../etc", "si.image-name: '../etc' is not a plain name"),
    ("si.hostname=-bad-", "si.hostname: '-bad-' is not a valid host name"),
    ("si.hostname=10.0.0.1", "si.hostname: '10.0.0.1' is not a valid host name"),
    ("si.hostname=www_1", "si.hostname: 'www_1' is not a valid host name"),  # RFC 1123
    ("si.ssh-download-url=10.0.0.3/x", "si.ssh-download-url: '10.0.0.3/x' is not a URL"),
    ("si.disk=sda,,sdb", "si.disk: 'sda,,sdb' has an empty item"),
    ("si.disk=/tmp/x", "si.disk: '/tmp/x' is not a disk"),
    ("si.break=Deploy", "si.break: 'Deploy' is not a step name"),
    ("BITTORRENT=maybe", "BITTORRENT (si.dl-protocol): 'maybe' is not a boolean"),
])
def test_bad_values(word, message):
    with pytest.raises(ConfigError) as e:
        parse_cmdline(word)
    assert e.value.message.startswith(message)
    assert e.value.message.endswith("(kernel command line)")


def test_bare_name_that_needs_a_value():
    with pytest.raises(ConfigError, match=re.escape(
            "si.image-name: needs a value, as in si.image-name=NAME (kernel command line)")):
        parse_cmdline("si.image-name")
    with pytest.raises(ConfigError, match=re.escape("si.break: needs a value")):
        parse_cmdline("si.break")


# -- files -----------------------------------------------------------------------------------------

def test_read_cmdline_file(tmp_path):
    path = tmp_path / "cmdline"
    path.write_text("BOOT_IMAGE=/vmlinuz si.image-server=10.0.0.3 si.dry-run\n")
    layer = read_cmdline(path)
    assert layer.value("si.image-server") == HostPort("10.0.0.3")
    assert layer.value("si.dry-run") is True


def test_read_cmdline_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the kernel command line from"):
        read_cmdline(tmp_path / "nope")


def _append_line(path) -> str:
    for line in path.read_text().splitlines():
        if line.strip().upper().startswith("APPEND "):
            return line.strip()[len("APPEND "):]
    raise AssertionError(f"no APPEND line in {path}")


@pytest.mark.parametrize("name", ["pxelinux.cfg", "syslinux.cfg"])
def test_compat_boot_menu_append_line_has_no_install_parameters(compat, name):
    layer = parse_cmdline(_append_line(compat / name))
    assert dict(layer.settings) == {}
    assert layer.warnings == ()


def test_compat_append_line_with_the_manuals_parameters(compat):
    # The 4.3 manual's monitoring and SSH examples, appended to the menu's line.
    append = (_append_line(compat / "pxelinux.cfg")
              + " MONITOR_SERVER=172.16.36.1 MONITOR_CONSOLE=yes SKIP_LOCAL_CFG=y SSH=y"
              + " console=ttyS0,57600 tmpfs_size=800M")
    layer = parse_cmdline(append)
    assert {name: layer.value(name) for name in layer.settings} == {
        "si.monitor-server": "172.16.36.1",
        "si.monitor-console": True,
        "si.skip-local-cfg": True,
        "si.ssh-client": True,
    }
    assert len(layer.warnings) == 4  # each old name is deprecated on the command line


@pytest.mark.parametrize("word, name, value", [
    ("si.install-iface=52:54:00:AB:cd:56", "si.install-iface", "52:54:00:ab:cd:56"),
    ("DEVICE=enp0s2", "si.install-iface", "enp0s2"),
    ("si.gateway-iface=52:54:00:12:34:56", "si.gateway-iface", "52:54:00:12:34:56"),
])
def test_interfaces_by_name_or_mac(word, name, value):
    """si.install-iface and si.gateway-iface take a name or a MAC, as
    documented and as the network phase matches them (lower-cased, as
    sysfs spells a MAC)."""
    assert parse_cmdline(word).value(name) == value
