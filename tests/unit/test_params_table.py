"""The table itself: consistency with InstallParams, names, docs."""

from __future__ import annotations

import dataclasses
import typing
from enum import StrEnum

import pytest

from agent.params import (
    BY_NAME,
    PARAMS,
    SI_BREAK_STEPS,
    InstallParams,
    Kind,
    Shape,
    param,
    render_docs,
)
from agent.params.table import CMDLINE_KEYS, LOCAL_KEYS


def test_one_install_params_field_per_parameter():
    fields = [f.name for f in dataclasses.fields(InstallParams)]
    assert sorted(fields) == sorted(p.field for p in PARAMS)
    assert len(BY_NAME) == len(PARAMS)


def test_defaults_match_the_field_types():
    # DiskSpec is imported by agent.params only when a disk is named (it
    # brings the storage model, which the agent's start does without).
    from agent.storage.diskspec import DiskSpec

    hints = typing.get_type_hints(InstallParams, localns={"DiskSpec": DiskSpec})
    defaults = InstallParams.defaults()
    for p in PARAMS:
        value = getattr(defaults, p.field)
        assert value == p.default, p.name
        hint = hints[p.field]
        if typing.get_origin(hint) is tuple:
            assert p.multiple and isinstance(value, tuple), p.name
            continue
        allowed = typing.get_args(hint) or (hint,)
        assert isinstance(value, allowed), (p.name, value, allowed)
        assert not p.multiple, p.name


def test_every_default_prints_and_parses_back():
    for p in PARAMS:
        if p.default is None or p.default == ():
            continue
        assert p.parse(p.format_value(p.default)) == p.default, p.name


def test_canonical_names_are_si_prefixed_lower_case():
    for p in PARAMS:
        assert p.name.startswith("si.") and p.name == p.name.lower(), p.name


def test_required_parameters_and_defaults():
    assert param("si.monitor-port").default == 8181
    assert param("si.server-port").default == 8181
    assert param("si.rsync-port").default == 873
    assert str(param("si.post-action").default) == "reboot"
    assert param("si.break").shape is Shape.REPEATABLE
    assert param("si.disk").shape is Shape.LIST
    assert param("si.dry-run").kind is Kind.BOOL
    for name in ("si.image-server", "si.image-name", "si.script-name", "si.hostname",
                 "si.domainname", "si.disks-layout", "si.network-config", "si.install-iface",
                 "si.ip-address", "si.netmask", "si.network-address", "si.broadcast",
                 "si.gateway", "si.gateway-iface", "si.ether-sleep", "si.dl-protocol",
                 "si.monitor-server", "si.monitor-console", "si.skip-local-cfg",
                 "si.log-server", "si.log-server-port", "si.tmpfs-staging", "si.debug"):
        assert name in BY_NAME


@pytest.mark.parametrize(("legacy", "name"), [
    ("IMAGESERVER", "si.image-server"), ("IMAGENAME", "si.image-name"),
    ("SCRIPTNAME", "si.script-name"), ("HOSTNAME", "si.hostname"),
    ("DOMAINNAME", "si.domainname"), ("DISKS_LAYOUT", "si.disks-layout"),
    ("DEVICE", "si.install-iface"), ("IPADDR", "si.ip-address"), ("NETMASK", "si.netmask"),
    ("NETWORK", "si.network-address"), ("BROADCAST", "si.broadcast"),
    ("GATEWAY", "si.gateway"), ("GATEWAYDEV", "si.gateway-iface"),
    ("ETHER_SLEEP", "si.ether-sleep"), ("MONITOR_SERVER", "si.monitor-server"),
    ("MONITOR_CONSOLE", "si.monitor-console"), ("SSH", "si.ssh-client"),
    ("SSH_DOWNLOAD_URL", "si.ssh-download-url"), ("SSHD", "si.ssh-server"),
    ("SKIP_LOCAL_CFG", "si.skip-local-cfg"), ("TMPFS_STAGING", "si.tmpfs-staging"),
    ("LOG_SERVER", "si.log-server"), ("LOG_SERVER_PORT", "si.log-server-port"),
])
def test_legacy_names_are_deprecated_aliases(legacy, name):
    p, alias = CMDLINE_KEYS[legacy]
    assert p.name == name
    # sysclone documents IMAGESERVER, IMAGENAME and HOSTNAME as first-class names.
    documented = legacy in {"IMAGESERVER", "IMAGENAME", "HOSTNAME"}
    assert alias is not None and alias.deprecated is not documented
    assert LOCAL_KEYS[legacy][0] is p
    assert p.var == legacy


def test_4_9_names_have_rd_sis_aliases_sysclone_ones_do_not():
    assert CMDLINE_KEYS["rd.sis.post-action"][0] is param("si.post-action")
    assert "rd.sis.dry-run" not in CMDLINE_KEYS
    assert "rd.sis.hostname" not in CMDLINE_KEYS


def test_break_steps_from_the_compat_notes():
    assert SI_BREAK_STEPS[0] == "parse-localcfg"
    assert SI_BREAK_STEPS[-1] == "finished"
    assert len(SI_BREAK_STEPS) == 20


def test_enum_choices():
    def names(p: str) -> list[str]:
        choices = param(p).choices
        assert choices is not None and issubclass(choices, StrEnum)
        return [str(c) for c in choices]

    assert names("si.dl-protocol") == ["rsync", "nfs", "torrent", "flamethrower", "ssh", "docker"]
    assert names("si.post-action") == ["directboot", "reboot", "shutdown", "poweroff", "kexec",
                                       "shell"]


def test_markdown_docs_list_every_parameter():
    text = render_docs("markdown")
    rows = [line for line in text.splitlines() if line.startswith("| `si.")]
    assert [row.split("`")[1] for row in rows] == [p.name for p in PARAMS]
    assert ("| `si.image-server` | HOST[:PORT] | - | IMAGESERVER | "
            "IMAGESERVER, IMAGE_SERVER | 140, 100 |") in text
    assert "| `si.post-action` | directboot\\|reboot\\|shutdown\\|poweroff\\|kexec\\|shell | " \
           "reboot |" in text
    assert "sysclone implements: rsync" in text


def test_text_docs_for_help():
    text = render_docs("text", width=79)
    assert all(len(line) <= 79 for line in text.splitlines() if not line.startswith("si."))
    assert "si.break=STEP  (repeatable)  [default: -]" in text
    assert "si.monitor-port=PORT  [default: 8181]" in text
    assert "also: IMAGESERVER; local.cfg: IMAGESERVER, IMAGE_SERVER; DHCP" in text
    with pytest.raises(ValueError):
        render_docs("html")  # type: ignore[arg-type]
